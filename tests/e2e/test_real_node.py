"""On a real node, as users run Toka: the chart installed with helm, the operator as its
Deployment, agent pods under the kubelet and containerd with the image from the Dockerfile.

Tests run in file order, sharing one cluster and one release: install (two operator
replicas, one leading), sessions, the attacker's view from inside an agent pod, the
NetworkPolicy, a kernel restarted and the leading operator pod lost mid-run,
upgrade, then uninstall.
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import pytest

from tests.e2e.conftest import (
    ALLOWED,
    CHART,
    DENIED,
    RELEASE,
    SERVER_PORT,
    SERVERS_NS,
    SYSTEM_NS,
    Cluster,
)
from tests.helpers import phase_is, wait_for
from tests.sessions import agent, call, finish, put_recordings, recording, session
from toka.console.demo import apply_demo, examples_dir
from toka.contract import LLM_KEY_FILE, SERVICE_ACCOUNT_DIR, WORKSPACE
from toka.devcluster import netns
from toka.devcluster.node import NODE_IP, NODE_NAME
from toka.kube.client import AGENTS, PODS, SECRETS, SESSIONS, AsyncKube

pytestmark = pytest.mark.controlplane
JSON = dict[str, Any]
UIDS = {"kernel": 10001, "tools": 10002, "agent": 10003}
# Prints the size of the file named by argv[1], or why it could not be read.
READ = (
    "import sys\ntry:\n    print(len(open(sys.argv[1]).read()))\n"
    "except OSError as e:\n    print(type(e).__name__)"
)
# The tool call an agent makes and holds open until the test lets it go on.
GATE = "import os, time\nwhile not os.path.exists('release'): time.sleep(0.2)\nprint('released')"


def held_session(name: str, *, secret: bool = False) -> tuple[JSON, str]:
    """A one-agent session whose agent waits, in a tool call, for /workspace/release."""
    spec = agent(
        "holder",
        caps=["llm:complete", "shell:exec:python3", "fs:read:**"],
        tasks=["wait"],
    )
    body = session(name, [spec], recordings=f"{name}-rec")
    if secret:
        body["spec"]["llm"]["apiKeySecretRef"] = {"name": f"{name}-key", "key": "api-key"}
    rec = recording(
        "holder",
        {
            "wait": [
                call("shell_exec", argv=["python3", "-c", GATE], timeout_seconds=600),
                finish("released by the test"),
            ]
        },
    )
    return body, rec


async def start_held(kube: AsyncKube, ns: str, name: str, *, secret: bool = False) -> str:
    """Submit a held session; return its agent pod's name once its tool call is running."""
    body, rec = held_session(name, secret=secret)
    await put_recordings(kube, ns, f"{name}-rec", {"holder": rec})
    if secret:
        await kube.create(
            SECRETS,
            {"metadata": {"name": f"{name}-key"}, "stringData": {"api-key": "sk-e2e-secret"}},
            ns,
        )
    await kube.create(SESSIONS, body, ns)
    running = await wait_for(
        kube,
        AGENTS,
        f"{name}-holder",
        ns,
        lambda a: ((a.get("status") or {}).get("run") or {}).get("currentTask") == "wait",
        timeout=180,
        what="the agent at its task",
    )
    return str(running["status"]["podName"])


def exec_in(cluster: Cluster, ns: str, pod: str, container: str, code: str) -> str:
    """Python run in a container of the pod with `kubectl exec`; its output or error."""
    return cluster.kubectl(
        "exec", "-n", ns, pod, "-c", container, "--", "python3", "-c", code, check=False
    ).strip()


def release(cluster: Cluster, ns: str, pod: str) -> None:
    out = exec_in(cluster, ns, pod, "tools", f"open('{WORKSPACE}/release', 'w').close()")
    assert out == "", out


async def succeeded(kube: AsyncKube, ns: str, name: str, timeout: float = 240) -> JSON:
    return await wait_for(
        kube,
        SESSIONS,
        name,
        ns,
        phase_is("Succeeded", "Failed"),
        timeout=timeout,
        what="session finished",
    )


OPERATOR_PODS = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=operator"
LEASE = f"{RELEASE}-operator"  # the chart's --leader-election-id


def operator_pods(cluster: Cluster) -> list[JSON]:
    """The operator's replicas, those being deleted left out."""
    pods = json.loads(
        cluster.kubectl("get", "pods", "-n", SYSTEM_NS, "-l", OPERATOR_PODS, "-o", "json")
    )["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def leader_pod(cluster: Cluster, timeout: float = 60) -> str:
    """The name of the operator pod that holds the Lease, once one does. Its identity is
    its hostname (the pod's name), then `_` and what tells its processes apart."""
    deadline = time.monotonic() + timeout
    while True:
        names = [p["metadata"]["name"] for p in operator_pods(cluster)]
        holder = cluster.kubectl(
            "get",
            "lease",
            "-n",
            SYSTEM_NS,
            LEASE,
            "-o",
            "jsonpath={.spec.holderIdentity}",
            check=False,
        ).strip()
        held = [n for n in names if holder == n or holder.startswith(f"{n}_")]
        if held:
            return str(held[0])
        assert time.monotonic() < deadline, f"no operator pod holds the Lease: {holder!r}, {names}"
        time.sleep(1)


def leader_status(cluster: Cluster, pod: str) -> str:
    """The pod's own leader_election_master_status sample, scraped from inside it."""
    return exec_in(
        cluster,
        SYSTEM_NS,
        pod,
        "operator",
        "import urllib.request\n"
        "for line in urllib.request.urlopen('http://127.0.0.1:8081/metrics').read().decode()"
        ".splitlines():\n"
        "    if line.startswith('leader_election_master_status{'):\n"
        "        print(line)",
    )


def test_the_chart_installs_and_runs_the_operator_in_the_cluster(installed: Cluster) -> None:
    pods = operator_pods(installed)
    assert len(pods) == 2  # one node: the anti-affinity is a preference only
    for pod in pods:
        assert pod["spec"]["nodeName"] == NODE_NAME
        assert pod["spec"]["serviceAccountName"] == "toka-operator"
        assert pod["spec"]["containers"][0]["image"] == installed.images.toka
        assert all(c["ready"] for c in pod["status"]["containerStatuses"])  # standbys too
    leader = leader_pod(installed)
    for pod in pods:
        name = pod["metadata"]["name"]
        expected = "1.0" if name == leader else "0.0"
        assert leader_status(installed, name) == (
            f'leader_election_master_status{{name="{LEASE}"}} {expected}'
        ), name


def test_the_node_and_its_pods_have_no_route_off_this_machine(installed: Cluster) -> None:
    name = installed.real.netns
    links = {link for link in netns.interfaces(name) if not link.startswith("veth")}
    assert links == {"lo", "cni0"}
    inside = subprocess.run(
        ["ip", "-n", name, "route", "show", "default"], capture_output=True, text=True, check=True
    )
    assert inside.stdout.strip() == ""
    host = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    assert NODE_IP not in host
    assert "10.89." not in host
    operator = json.loads(
        installed.kubectl(
            "get", "pods", "-n", SYSTEM_NS, "-l", "app.kubernetes.io/name=toka", "-o", "json"
        )
    )["items"][0]["metadata"]["name"]
    # A pod's routing table (destination, gateway): none is the default route.
    table = exec_in(
        installed,
        SYSTEM_NS,
        operator,
        "operator",
        "print([l.split()[1] for l in open('/proc/net/route').read().splitlines()[1:]])",
    )
    assert table.startswith("["), table
    assert "'00000000'" not in table, table


def test_helm_test_passes(installed: Cluster) -> None:
    proc = installed.helm("test", RELEASE, "-n", SYSTEM_NS, "--timeout", "3m")
    assert proc.returncode == 0, proc.stdout + proc.stderr


async def test_the_demo_session_succeeds_on_the_real_node(
    installed: Cluster, kube: AsyncKube, namespace: str
) -> None:
    name = await apply_demo(kube, namespace, examples_dir(), None)
    done = await succeeded(kube, namespace, name, timeout=400)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    wide = installed.kubectl("get", "pods", "-n", namespace, "-o", "wide")
    print(wide)
    pods = json.loads(installed.kubectl("get", "pods", "-n", namespace, "-o", "json"))["items"]
    assert len(pods) == 4
    for pod in pods:
        assert pod["spec"]["nodeName"] == NODE_NAME
        images = {c["image"] for c in pod["spec"]["initContainers"] + pod["spec"]["containers"]}
        assert images == {installed.images.toka}


async def test_each_container_runs_as_its_own_user_on_a_read_only_root_and_reads_only_its_own(
    installed: Cluster, kube: AsyncKube, namespace: str
) -> None:
    pod = await start_held(kube, namespace, "attacker-view", secret=True)
    token, key = f"{SERVICE_ACCOUNT_DIR}/token", LLM_KEY_FILE
    read = READ
    seen: dict[str, dict[str, str]] = {}
    for container, uid in UIDS.items():
        assert exec_in(
            installed, namespace, pod, container, "import os; print(os.getuid())"
        ) == str(uid)
        wrote = exec_in(
            installed,
            namespace,
            pod,
            container,
            "try:\n    open('/etc/owned', 'w')\nexcept OSError as e:\n    print(e.strerror)",
        )
        assert wrote == "Read-only file system", (container, wrote)
        seen[container] = {
            what: installed.kubectl(
                "exec",
                "-n",
                namespace,
                pod,
                "-c",
                container,
                "--",
                "python3",
                "-c",
                read,
                path,
                check=False,
            ).strip()
            for what, path in (("token", token), ("key", key))
        }
    # The kernel holds both (so the paths are right) and nobody else holds either.
    assert seen["kernel"]["token"].isdigit(), seen
    assert seen["kernel"]["key"].isdigit(), seen
    for container in ("tools", "agent"):
        assert seen[container]["token"] in ("FileNotFoundError", "PermissionError"), seen
        assert seen[container]["key"] in ("FileNotFoundError", "PermissionError"), seen
    listing = {
        container: exec_in(
            installed,
            namespace,
            pod,
            container,
            f"import os\ntry:\n    print(sorted(os.listdir('{WORKSPACE}')))\n"
            "except OSError as e:\n    print(type(e).__name__)",
        )
        for container in ("tools", "agent")
    }
    assert listing["tools"].startswith("["), listing  # the path is right: tools works there
    assert listing["agent"] in ("FileNotFoundError", "PermissionError"), listing
    for container in UIDS:
        logs = installed.kubectl("logs", "-n", namespace, pod, "-c", container)
        assert "sk-e2e-secret" not in logs, container
    release(installed, namespace, pod)
    done = await succeeded(kube, namespace, "attacker-view")
    assert done["status"]["phase"] == "Succeeded", done["status"]


def start_servers(cluster: Cluster) -> dict[str, str]:
    """Two HTTP servers in a namespace of their own; their pod IPs by name."""
    cluster.kubectl("create", "namespace", SERVERS_NS)
    for name in (ALLOWED, DENIED):
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": SERVERS_NS, "labels": {"app": name}},
            "spec": {
                "containers": [
                    {
                        "name": "http",
                        "image": cluster.images.toka,
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["python3", "-m", "http.server", str(SERVER_PORT)],
                        "workingDir": "/tmp",
                        "readinessProbe": {"tcpSocket": {"port": SERVER_PORT}, "periodSeconds": 1},
                    }
                ]
            },
        }
        cluster.kubectl("apply", "-f", "-", input_=json.dumps(pod))
    cluster.kubectl(
        "wait", "-n", SERVERS_NS, "--for=condition=Ready", "pod", "--all", "--timeout=120s"
    )
    return {
        name: json.loads(cluster.kubectl("get", "pod", "-n", SERVERS_NS, name, "-o", "json"))[
            "status"
        ]["podIP"]
        for name in (ALLOWED, DENIED)
    }


def connects(cluster: Cluster, ns: str, pod: str, container: str, host: str, port: int) -> str:
    """`connected`, or the error a TCP connect from inside the container got."""
    return exec_in(
        cluster,
        ns,
        pod,
        container,
        "import socket\ntry:\n"
        f"    socket.create_connection(({host!r}, {port}), timeout=3).close()\n"
        "    print('connected')\nexcept OSError as e:\n    print(type(e).__name__)",
    )


async def test_the_charts_network_policy_lets_an_agent_reach_the_api_and_what_values_allow_only(
    installed: Cluster, kube: AsyncKube
) -> None:
    servers = start_servers(installed)
    operator = json.loads(
        installed.kubectl(
            "get", "pods", "-n", SYSTEM_NS, "-l", "app.kubernetes.io/name=toka", "-o", "json"
        )
    )["items"][0]["metadata"]["name"]
    # Both servers answer a pod the policy does not select (the operator's), and the
    # operator's port answers such a pod (a server's).
    for ip in servers.values():
        assert connects(installed, SYSTEM_NS, operator, "operator", ip, SERVER_PORT) == "connected"
    assert (
        connects(installed, SERVERS_NS, ALLOWED, "http", operator_ip(installed), 8080)
        == "connected"
    )
    # The chart's policy covers agents in the release's namespace (the whole cluster is
    # watched); a held agent there is asked to connect from its kernel's container.
    pod = await start_held(kube, SYSTEM_NS, "fenced")
    said = {
        "allowed": connects(installed, SYSTEM_NS, pod, "kernel", servers[ALLOWED], SERVER_PORT),
        "denied": connects(installed, SYSTEM_NS, pod, "kernel", servers[DENIED], SERVER_PORT),
        "api": connects(installed, SYSTEM_NS, pod, "kernel", "10.0.0.1", 443),
        "operator": connects(installed, SYSTEM_NS, pod, "kernel", operator_ip(installed), 8080),
    }
    assert said["allowed"] == "connected", said
    assert said["api"] == "connected", said
    assert said["denied"] in ("ConnectionRefusedError", "TimeoutError"), said
    assert said["operator"] in ("ConnectionRefusedError", "TimeoutError"), said
    release(installed, SYSTEM_NS, pod)
    done = await succeeded(kube, SYSTEM_NS, "fenced")  # its status writes passed the policy
    assert done["status"]["phase"] == "Succeeded", done["status"]


def operator_ip(cluster: Cluster) -> str:
    pods = json.loads(
        cluster.kubectl(
            "get", "pods", "-n", SYSTEM_NS, "-l", "app.kubernetes.io/name=toka", "-o", "json"
        )
    )["items"]
    return str(pods[0]["status"]["podIP"])


async def test_a_kernel_restarted_mid_task_comes_back_and_the_run_continues(
    installed: Cluster, kube: AsyncKube, namespace: str
) -> None:
    pod = await start_held(kube, namespace, "kernel-restart")
    exec_in(installed, namespace, pod, "kernel", "import os, signal; os.kill(1, signal.SIGTERM)")
    restarted = await wait_for(
        kube,
        PODS,
        pod,
        namespace,
        lambda p: any(
            c["name"] == "kernel" and c.get("restartCount", 0) >= 1 and c.get("started")
            for c in (p.get("status") or {}).get("initContainerStatuses") or []
        ),
        timeout=120,
        what="the kernel restarted",
    )
    assert restarted["status"]["phase"] == "Running"
    release(installed, namespace, pod)
    done = await succeeded(kube, namespace, "kernel-restart")
    assert done["status"]["phase"] == "Succeeded", done["status"]
    (only,) = (await kube.list(AGENTS, namespace))["items"]
    assert only["status"]["phase"] == "Succeeded"
    assert only["status"]["podName"] == pod  # the same pod: no retry of the Agent
    (task,) = only["status"]["run"]["tasks"]
    assert (task["state"], task["summary"]) == ("Succeeded", "released by the test")


async def test_deleting_the_leading_operator_pod_mid_session_loses_nothing(
    installed: Cluster, kube: AsyncKube, namespace: str
) -> None:
    pod = await start_held(kube, namespace, "operator-loss")
    lost = leader_pod(installed)
    installed.kubectl("delete", "pod", "-n", SYSTEM_NS, lost, "--wait=true")
    release(installed, namespace, pod)
    done = await succeeded(kube, namespace, "operator-loss")
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert leader_pod(installed) != lost  # the standby took over
    installed.kubectl(
        "rollout", "status", "deployment/toka-operator", "-n", SYSTEM_NS, "--timeout=120s"
    )
    pods = operator_pods(installed)
    assert len(pods) == 2  # and the Deployment made a new standby
    assert lost not in {p["metadata"]["name"] for p in pods}
    assert all(p["status"]["phase"] == "Running" for p in pods)


def test_helm_upgrade_rolls_the_operator_and_keeps_the_sessions(installed: Cluster) -> None:
    # The release's namespace keeps its session (the others' namespaces go with their tests).
    before = installed.kubectl("get", "agentsessions", "-n", SYSTEM_NS, "-o", "name")
    assert before.strip()
    proc = installed.helm("upgrade", *installed.install_args(), "--set", "logLevel=debug")
    assert proc.returncode == 0, proc.stderr
    installed.kubectl(
        "rollout", "status", "deployment/toka-operator", "-n", SYSTEM_NS, "--timeout=120s"
    )
    deployment = json.loads(
        installed.kubectl("get", "deployment", "-n", SYSTEM_NS, "toka-operator", "-o", "json")
    )
    # logLevel=debug is the operator's --verbose.
    assert "--verbose" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert deployment["status"].get("readyReplicas") == 2
    assert installed.kubectl("get", "agentsessions", "-n", SYSTEM_NS, "-o", "name") == before


def test_helm_uninstall_leaves_what_its_notes_say(installed: Cluster) -> None:
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    assert "agents.toka.dev and agentsessions.toka.dev" in notes
    sessions = installed.kubectl("get", "agentsessions", "-n", SYSTEM_NS, "-o", "name")
    assert sessions.strip()
    proc = installed.helm("uninstall", RELEASE, "-n", SYSTEM_NS, "--wait", "--timeout", "3m")
    assert proc.returncode == 0, proc.stderr
    crds = installed.kubectl("get", "crd", "-o", "name")
    assert "customresourcedefinition.apiextensions.k8s.io/agents.toka.dev" in crds
    assert "customresourcedefinition.apiextensions.k8s.io/agentsessions.toka.dev" in crds
    assert installed.kubectl("get", "agentsessions", "-n", SYSTEM_NS, "-o", "name") == sessions
    left = installed.kubectl(
        "get",
        "deployments,serviceaccounts,clusterroles,clusterrolebindings",
        "-A",
        "-l",
        f"app.kubernetes.io/instance={RELEASE}",
        "-o",
        "name",
    )
    assert left.strip() == ""
