"""The dev node agent runs Toka's pods as a kubelet would, against the real API server."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import NodeAgentProcess
from tests.helpers import container_status, phase_is, py, toka_pod, wait_for, wait_gone
from toka.devcluster.nodeagent import pod_loopback
from toka.kube.client import (
    CONFIGMAPS,
    LEASES,
    PODS,
    SECRETS,
    SERVICEACCOUNTS,
    ApiError,
    AsyncKube,
)

pytestmark = pytest.mark.controlplane

JSON = dict[str, Any]

# A sidecar that serves its pod's name on $TOKA_KERNEL_ADDR after a short delay,
# appends lifecycle marks to /shared/events, and marks its own stop on SIGTERM.
SIDECAR = textwrap.dedent(
    """
    import http.server, os, signal, sys, time
    def mark(m):
        with open('/shared/events', 'a') as f:
            f.write(m + '\\n')
    mark('sidecar-start')
    def stop(*_):
        mark('sidecar-stop')
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    time.sleep(0.5)
    host, port = os.environ['TOKA_KERNEL_ADDR'].rsplit(':', 1)
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = os.environ['POD'].encode()
            self.send_response(200); self.end_headers(); self.wfile.write(body)
        def log_message(self, *a): pass
    http.server.HTTPServer((host, int(port)), H).serve_forever()
    """
)
MAIN_ASKS_SIDECAR = textwrap.dedent(
    """
    import os, urllib.request
    with open('/shared/events', 'a') as f:
        f.write('main-start\\n')
    addr = os.environ['TOKA_KERNEL_ADDR']
    print('kernel says', urllib.request.urlopen(f'http://{addr}/', timeout=5).read().decode())
    print('addr', addr)
    with open('/shared/events', 'a') as f:
        f.write('main-end\\n')
    """
)


# The sidecar's startup probe: it listens on loopback, which a kubelet's httpGet never reaches.
SIDECAR_PROBE = (
    "import os, urllib.request; "
    "urllib.request.urlopen(f\"http://{os.environ['TOKA_KERNEL_ADDR']}/\", timeout=1)"
)


def sidecar_pod(name: str, main: str = MAIN_ASKS_SIDECAR) -> JSON:
    env = [
        {"name": "TOKA_KERNEL_ADDR", "value": "127.0.0.1:8181"},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    mount = [{"name": "shared", "mountPath": "/shared"}]
    return toka_pod(
        name,
        [py("agent", main, env=env, volumeMounts=mount)],
        initContainers=[
            py(
                "kernel",
                SIDECAR,
                restartPolicy="Always",
                env=env,
                volumeMounts=mount,
                startupProbe={
                    "exec": {"command": ["python3", "-c", SIDECAR_PROBE]},
                    "periodSeconds": 1,
                    "failureThreshold": 30,
                },
            )
        ],
        volumes=[{"name": "shared", "emptyDir": {}}],
    )


async def run_pod(kube: AsyncKube, ns: str, pod: JSON, timeout: float = 60) -> JSON:
    await kube.create(PODS, pod, ns)
    return await wait_for(
        kube,
        PODS,
        pod["metadata"]["name"],
        ns,
        phase_is("Succeeded", "Failed"),
        timeout=timeout,
        what="a final phase",
    )


async def test_a_container_that_exits_0_ends_succeeded(
    kube: AsyncKube, namespace: str, node_agent: NodeAgentProcess
) -> None:
    pod = await run_pod(kube, namespace, toka_pod("ok", [py("main", "print('hi')")]))
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["spec"]["nodeName"] == "toka-dev"
    term = container_status(pod, "main")["state"]["terminated"]
    assert (term["exitCode"], term["reason"]) == (0, "Completed")


async def test_a_container_that_exits_1_ends_failed_with_its_exit_code(
    kube: AsyncKube, namespace: str, node_agent: NodeAgentProcess
) -> None:
    pod = await run_pod(kube, namespace, toka_pod("bad", [py("main", "raise SystemExit(1)")]))
    assert pod["status"]["phase"] == "Failed"
    term = container_status(pod, "main")["state"]["terminated"]
    assert (term["exitCode"], term["reason"]) == (1, "Error")


async def test_a_native_sidecar_starts_first_and_stops_after_the_main_container(
    kube: AsyncKube, namespace: str, node_agent: NodeAgentProcess
) -> None:
    pod = await run_pod(kube, namespace, sidecar_pod("sidecar"))
    assert pod["status"]["phase"] == "Succeeded", node_agent.pod_log(namespace, "sidecar", "agent")
    root = node_agent.root / "pods"
    shared = next(root.glob(f"{namespace}_sidecar_*")) / "volumes" / "shared" / "events"
    assert shared.read_text().split() == ["sidecar-start", "main-start", "main-end", "sidecar-stop"]
    kernel = container_status(pod, "kernel")
    agent = container_status(pod, "agent")
    assert kernel["started"] is True
    # It handles SIGTERM and exits 0; one signal only, so nothing kills it on its way out.
    assert kernel["state"]["terminated"]["exitCode"] == 0
    assert kernel["state"]["terminated"]["finishedAt"] >= agent["state"]["terminated"]["finishedAt"]
    assert "kernel says sidecar" in node_agent.pod_log(namespace, "sidecar", "agent")


async def test_two_pods_kernels_listen_on_the_same_addr_without_colliding(
    kube: AsyncKube, namespace: str, node_agent: NodeAgentProcess
) -> None:
    slow_main = MAIN_ASKS_SIDECAR + "\nimport time; time.sleep(2)\n"
    await kube.create(PODS, sidecar_pod("one", slow_main), namespace)
    await kube.create(PODS, sidecar_pod("two", slow_main), namespace)
    one = await wait_for(kube, PODS, "one", namespace, phase_is("Succeeded", "Failed"))
    two = await wait_for(kube, PODS, "two", namespace, phase_is("Succeeded", "Failed"))
    assert (one["status"]["phase"], two["status"]["phase"]) == ("Succeeded", "Succeeded")
    assert one["status"]["podIP"] != two["status"]["podIP"]
    # Each agent reached its own kernel, at its pod's loopback address, on the same port.
    for pod in (one, two):
        log = node_agent.pod_log(namespace, pod["metadata"]["name"], "agent")
        assert f"kernel says {pod['metadata']['name']}" in log
        assert f"addr {pod_loopback(pod['status']['podIP'])}:8181" in log


# Serves 200 on port 8181 of the pod's loopback or of its pod IP, as $ON says.
LISTENER = textwrap.dedent(
    """
    import http.server, os
    if os.environ['ON'] == 'loopback':
        host = os.environ['TOKA_KERNEL_ADDR'].rsplit(':', 1)[0]
    else:
        host = os.environ['POD_IP']
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers()
        def log_message(self, *a): pass
    http.server.HTTPServer((host, 8181), H).serve_forever()
    """
)


def probed_pod(name: str, on: str, probe: JSON) -> JSON:
    env = [
        {"name": "TOKA_KERNEL_ADDR", "value": "127.0.0.1:8181"},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "ON", "value": on},
    ]
    return toka_pod(
        name,
        [py("agent", "print('started')")],
        initContainers=[
            py(
                "kernel",
                LISTENER,
                restartPolicy="Always",
                env=env,
                startupProbe={**probe, "periodSeconds": 1, "failureThreshold": 30},
            )
        ],
    )


@pytest.mark.parametrize(
    "probe",
    [{"httpGet": {"path": "/", "port": 8181}}, {"tcpSocket": {"port": 8181}}],
    ids=["httpGet", "tcpSocket"],
)
async def test_a_probe_reaches_the_pod_ip_and_never_a_listener_on_loopback_only(
    kube: AsyncKube, namespace: str, node_agent: NodeAgentProcess, probe: JSON
) -> None:
    await kube.create(PODS, probed_pod("on-loopback", "loopback", probe), namespace)
    await kube.create(PODS, probed_pod("on-pod-ip", "pod", probe), namespace)
    on_pod_ip = await wait_for(kube, PODS, "on-pod-ip", namespace, phase_is("Succeeded", "Failed"))
    assert on_pod_ip["status"]["phase"] == "Succeeded"
    # As on a real node: the probe fails until the container is killed, restarted, and so on.
    on_loopback = await wait_for(
        kube,
        PODS,
        "on-loopback",
        namespace,
        lambda pod: any(
            c["name"] == "kernel" and c["restartCount"] >= 1
            for c in (pod.get("status") or {}).get("initContainerStatuses", [])
        ),
        what="a restart of the never-started sidecar",
    )
    assert container_status(on_loopback, "kernel")["started"] is False
    assert "waiting" in container_status(on_loopback, "agent")["state"]
    await kube.delete(PODS, "on-loopback", namespace)


async def test_env_and_mounted_files_are_what_the_spec_says(
    kube: AsyncKube, namespace: str, node_agent: NodeAgentProcess
) -> None:
    await kube.create(
        CONFIGMAPS,
        {
            "metadata": {"name": "cfg"},
            "data": {"greeting": "hello", "mode": "fast", "conf.ini": "[a]\nb=1\n"},
        },
        namespace,
    )
    await kube.create(
        SECRETS,
        {"metadata": {"name": "sec"}, "data": {"token": base64.b64encode(b"s3cret").decode()}},
        namespace,
    )
    code = textwrap.dedent(
        """
        import json, os, stat
        env = {k: os.environ.get(k) for k in ('GREETING', 'TOKEN', 'POD_IP', 'PLAIN', 'COMPOSED',
                                               'ESCAPED', 'CFG_mode', 'LABEL')}
        paths = ('/etc/app/conf.ini', '/etc/app/greeting', '/sec/the-token')
        files = {p: open(p).read() for p in paths}
        mode = oct(stat.S_IMODE(os.stat('/sec/the-token').st_mode))
        print('RESULT ' + json.dumps({'env': env, 'files': files, 'mode': mode}))
        """
    )
    container = py(
        "main",
        code,
        env=[
            {
                "name": "GREETING",
                "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}},
            },
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "token"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {
                "name": "LABEL",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['toka.dev/agent']"}},
            },
            {"name": "PLAIN", "value": "plain"},
            {"name": "COMPOSED", "value": "$(GREETING)-$(PLAIN)-$(UNKNOWN)"},
            {"name": "ESCAPED", "value": "$$(GREETING)"},
        ],
        envFrom=[{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
        volumeMounts=[
            {"name": "cfg", "mountPath": "/etc/app", "readOnly": True},
            {"name": "sec", "mountPath": "/sec"},
        ],
    )
    pod = toka_pod(
        "env",
        [container],
        volumes=[
            {"name": "cfg", "configMap": {"name": "cfg"}},
            {
                "name": "sec",
                "secret": {
                    "secretName": "sec",
                    "defaultMode": 0o400,
                    "items": [{"key": "token", "path": "the-token"}],
                },
            },
        ],
    )
    done = await run_pod(kube, namespace, pod)
    log = node_agent.pod_log(namespace, "env", "main")
    assert done["status"]["phase"] == "Succeeded", log
    result = json.loads(log.split("RESULT ", 1)[1])
    assert result["env"] == {
        "GREETING": "hello",
        "TOKEN": "s3cret",
        "POD_IP": done["status"]["podIP"],
        "PLAIN": "plain",
        "COMPOSED": "hello-plain-$(UNKNOWN)",
        "ESCAPED": "$(GREETING)",
        "CFG_mode": "fast",
        "LABEL": "env",
    }
    assert result["files"] == {
        "/etc/app/conf.ini": "[a]\nb=1\n",
        "/etc/app/greeting": "hello",
        "/sec/the-token": "s3cret",
    }
    assert result["mode"] == "0o400"


WHOAMI = textwrap.dedent(
    """
    import json, os, ssl, urllib.request
    sa = '/var/run/secrets/kubernetes.io/serviceaccount'
    token = open(f'{sa}/token').read()
    ctx = ssl.create_default_context(cafile=f'{sa}/ca.crt')
    host, port = os.environ['KUBERNETES_SERVICE_HOST'], os.environ['KUBERNETES_SERVICE_PORT']
    req = urllib.request.Request(
        f'https://{host}:{port}/apis/authentication.k8s.io/v1/selfsubjectreviews',
        data=json.dumps({'apiVersion': 'authentication.k8s.io/v1',
                         'kind': 'SelfSubjectReview'}).encode(),
        headers={'Authorization': 'Bearer ' + token, 'Content-Type': 'application/json'},
        method='POST')
    review = json.load(urllib.request.urlopen(req, context=ctx))
    print('USER', review['status']['userInfo']['username'])
    print('NAMESPACE', open(f'{sa}/namespace').read())
    """
)
NO_TOKEN = (
    "import os; "
    "print('HAS_TOKEN', os.path.exists('/var/run/secrets/kubernetes.io/serviceaccount/token'))"
)


async def test_the_projected_token_authenticates_as_the_pods_service_account(
    kube: AsyncKube, namespace: str, node_agent: NodeAgentProcess
) -> None:
    await kube.create(SERVICEACCOUNTS, {"metadata": {"name": "kernel-sa"}}, namespace)
    token_mount = [
        {
            "name": "token",
            "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
            "readOnly": True,
        }
    ]
    pod = toka_pod(
        "whoami",
        [py("main", WHOAMI, volumeMounts=token_mount), py("other", NO_TOKEN)],
        serviceAccountName="kernel-sa",
        volumes=[
            {
                "name": "token",
                "projected": {
                    "sources": [
                        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}},
                        {
                            "configMap": {
                                "name": "kube-root-ca.crt",
                                "items": [{"key": "ca.crt", "path": "ca.crt"}],
                            }
                        },
                        {
                            "downwardAPI": {
                                "items": [
                                    {
                                        "path": "namespace",
                                        "fieldRef": {"fieldPath": "metadata.namespace"},
                                    }
                                ]
                            }
                        },
                    ]
                },
            }
        ],
    )
    done = await run_pod(kube, namespace, pod)
    log = node_agent.pod_log(namespace, "whoami", "main")
    assert done["status"]["phase"] == "Succeeded", log
    assert f"USER system:serviceaccount:{namespace}:kernel-sa" in log
    assert f"NAMESPACE {namespace}" in log
    # A container that does not mount the token does not have it.
    assert "HAS_TOKEN False" in node_agent.pod_log(namespace, "whoami", "other")


async def test_the_root_filesystem_user_and_other_pods_volumes_are_as_isolated_as_the_spec_says(
    kube: AsyncKube, namespace: str, node_agent: NodeAgentProcess, kubeconfig: Any
) -> None:
    confined = textwrap.dedent(
        """
        import os
        print('UID', os.getuid(), os.getgid())
        for path in ('/rootfile', '/scratch/file'):
            try:
                open(path, 'w').write('x'); print('WROTE', path)
            except OSError as e:
                print('DENIED', path, e.strerror)
        """
    )
    # Even as root in its container, a pod sees neither the node's pod volumes
    # nor the cluster's credentials: they are covered in its mount namespace.
    root = textwrap.dedent(
        f"""
        import os
        print('SEES_NODE_ROOT', os.listdir({str(node_agent.root)!r}))
        print('SEES_ADMIN_KUBECONFIG', os.path.exists({str(kubeconfig)!r}))
        """
    )
    pod = toka_pod(
        "iso",
        [
            py(
                "confined",
                confined,
                securityContext={
                    "runAsUser": 4242,
                    "runAsGroup": 4243,
                    "readOnlyRootFilesystem": True,
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                },
                volumeMounts=[{"name": "scratch", "mountPath": "/scratch"}],
            ),
            py("root", root),
        ],
        volumes=[{"name": "scratch", "emptyDir": {}}],
    )
    done = await run_pod(kube, namespace, pod)
    log = node_agent.pod_log(namespace, "iso", "confined")
    assert done["status"]["phase"] == "Succeeded", log + node_agent.pod_log(
        namespace, "iso", "root"
    )
    assert "UID 4242 4243" in log
    assert "DENIED /rootfile Read-only file system" in log
    assert "WROTE /scratch/file" in log
    log = node_agent.pod_log(namespace, "iso", "root")
    assert "SEES_NODE_ROOT []" in log
    assert "SEES_ADMIN_KUBECONFIG False" in log


async def test_an_image_other_than_tokas_gets_err_image_pull_then_backoff(
    kube: AsyncKube, namespace: str, node_agent: NodeAgentProcess
) -> None:
    pod = toka_pod(
        "pull", [{"name": "main", "image": "docker.io/library/busybox:1.36", "command": ["true"]}]
    )
    await kube.create(PODS, pod, namespace)
    seen: list[str] = []

    def waiting(p: JSON) -> bool:
        try:
            reason = container_status(p, "main")["state"].get("waiting", {}).get("reason")
        except KeyError:
            return False
        if reason and (not seen or seen[-1] != reason):
            seen.append(reason)
        return "ImagePullBackOff" in seen

    final = await wait_for(kube, PODS, "pull", namespace, waiting, timeout=30)
    assert seen[:2] == ["ErrImagePull", "ImagePullBackOff"] or seen[-2:] == [
        "ErrImagePull",
        "ImagePullBackOff",
    ]
    assert final["status"]["phase"] == "Pending"
    assert "busybox" in container_status(final, "main")["state"]["waiting"]["message"]


def _pid(pod: JSON, container: str) -> int:
    return int(container_status(pod, container)["containerID"].removeprefix("toka-dev://"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too.
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().split(")")[-1].split()[0] != "Z"


async def test_deleting_a_pod_kills_its_processes_and_completes_the_deletion(
    kube: AsyncKube, namespace: str, node_agent: NodeAgentProcess
) -> None:
    pod = sidecar_pod("victim", main="import time; time.sleep(3600)")
    await kube.create(PODS, pod, namespace)
    running = await wait_for(
        kube,
        PODS,
        "victim",
        namespace,
        lambda p: (
            container_status(p, "agent").get("state", {}).get("running") is not None
            if p.get("status", {}).get("containerStatuses")
            else False
        ),
    )
    pids = [_pid(running, "agent"), _pid(running, "kernel")]
    assert all(_alive(p) for p in pids)
    await kube.delete(PODS, "victim", namespace, grace_period_seconds=3)
    await wait_gone(kube, PODS, "victim", namespace, timeout=30)
    assert not any(_alive(p) for p in pids)


async def test_active_deadline_kills_the_pod_and_fails_it(
    kube: AsyncKube, namespace: str, node_agent: NodeAgentProcess
) -> None:
    pod = toka_pod("slow", [py("main", "import time; time.sleep(3600)")], activeDeadlineSeconds=2)
    done = await run_pod(kube, namespace, pod, timeout=30)
    assert done["status"]["phase"] == "Failed"
    assert done["status"]["reason"] == "DeadlineExceeded"
    assert "terminated" in container_status(done, "main")["state"]
    assert not _alive(_pid(done, "main"))


async def test_a_missing_secret_key_is_named_in_the_waiting_reason(
    kube: AsyncKube, namespace: str, node_agent: NodeAgentProcess
) -> None:
    container = py(
        "main",
        "print(1)",
        env=[{"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "llm-key", "key": "api-key"}}}],
    )
    await kube.create(PODS, toka_pod("nokey", [container]), namespace)
    pod = await wait_for(
        kube,
        PODS,
        "nokey",
        namespace,
        lambda p: (
            bool(p.get("status", {}).get("containerStatuses"))
            and container_status(p, "main")["state"].get("waiting", {}).get("reason")
            == "CreateContainerConfigError"
        ),
    )
    assert "llm-key" in container_status(pod, "main")["state"]["waiting"]["message"]
    # Creating the Secret lets the pod start, as with a kubelet.
    await kube.create(
        SECRETS,
        {"metadata": {"name": "llm-key"}, "data": {"api-key": base64.b64encode(b"k").decode()}},
        namespace,
    )
    done = await wait_for(kube, PODS, "nokey", namespace, phase_is("Succeeded", "Failed"))
    assert done["status"]["phase"] == "Succeeded"


async def test_pods_without_the_toka_label_are_left_alone(
    kube: AsyncKube, namespace: str, node_agent: NodeAgentProcess
) -> None:
    pod = toka_pod("foreign", [py("main", "print(1)")])
    pod["metadata"]["labels"] = {"app": "other"}
    await kube.create(PODS, pod, namespace)
    await asyncio.sleep(2)
    got = await kube.get(PODS, "foreign", namespace)
    assert not got["spec"].get("nodeName")


async def test_the_node_is_registered_and_its_lease_renewed(
    kube: AsyncKube, node_agent: NodeAgentProcess
) -> None:
    lease = await kube.get(LEASES, "toka-dev", "kube-node-lease")
    assert lease["spec"]["holderIdentity"] == "toka-dev"
    first = lease["spec"]["renewTime"]
    renewed = await wait_for(
        kube,
        LEASES,
        "toka-dev",
        "kube-node-lease",
        lambda obj: obj["spec"]["renewTime"] != first,
        timeout=25,
    )
    assert renewed["spec"]["renewTime"] > first


async def test_rbac_is_enforced_a_service_account_without_binding_gets_403(
    kube: AsyncKube, namespace: str
) -> None:
    await kube.create(SERVICEACCOUNTS, {"metadata": {"name": "nobody"}}, namespace)
    token = (
        await kube.create(
            SERVICEACCOUNTS,
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}},
            namespace,
            name="nobody",
            sub="token",
        )
    )["status"]["token"]
    async with AsyncKube(kube.config.with_token(token)) as nobody:
        with pytest.raises(ApiError) as err:
            await nobody.list(PODS, namespace)
    assert err.value.status == 403
    assert f"system:serviceaccount:{namespace}:nobody" in err.value.message


@pytest.mark.parametrize("start", [1, 2, 3])
def test_a_program_under_a_shadowed_directory_still_runs_on_every_start(
    tmp_path: Path, start: int
) -> None:
    """Toka's own Python may live under /tmp, where a pod mounts an emptyDir: the sandbox
    binds it back, on a restart too (the mount point is then already in the volume)."""
    runtime = tmp_path / "clone" / "runtime"
    runtime.mkdir(parents=True)
    program = runtime / "hello"
    program.write_text("#!/bin/sh\necho hello from the runtime\n")
    program.chmod(0o755)
    volume = tmp_path / "volume"
    volume.mkdir(exist_ok=True)
    volume.chmod(0o777)
    out = ""
    for _ in range(start):
        spec = tmp_path / f"spec-{uuid.uuid4().hex}.json"
        spec.write_text(
            json.dumps(
                {
                    "argv": [str(program)],
                    "env": {"PATH": "/usr/bin:/bin"},
                    "cwd": "/",
                    "mounts": [{"source": str(volume), "target": str(tmp_path / "clone")}],
                    "hide": [],
                    "keep": [str(runtime)],
                    "scratch": str(tmp_path / "scratch" / uuid.uuid4().hex),
                }
            )
        )
        done = subprocess.run(
            [sys.executable, "-m", "toka.devcluster.sandbox", str(spec)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        out = done.stdout + done.stderr
    assert out.strip() == "hello from the runtime"
