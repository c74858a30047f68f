"""Security rules of docs/architecture.md (Security model), proven against the real API server.

The kernel's identity is the Agent's own ServiceAccount, with a token from
TokenRequest as the projected volume gives it; the admission policies check
the requesting user with the API server's own authorizer.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
from typing import Any

import pytest

from tests.conftest import NodeAgentProcess, OperatorProcess
from tests.helpers import phase_is, service_account_token, wait_for
from tests.sessions import call, finish, put_recordings, recording
from toka.contract import LLM_KEY_DIR, LLM_KEY_FILE, MCP_DIR, SERVICE_ACCOUNT_DIR, WORKSPACE
from toka.devcluster.controlplane import ControlPlane
from toka.kube.client import (
    AGENTS,
    CONFIGMAPS,
    PODS,
    ROLEBINDINGS,
    ROLES,
    SECRETS,
    SESSIONS,
    ApiError,
    AsyncKube,
)
from toka.kube.kubeconfig import load_kubeconfig

pytestmark = pytest.mark.controlplane
JSON = dict[str, Any]


def standalone(name: str, **spec: Any) -> JSON:
    return {
        "apiVersion": "toka.dev/v1alpha1",
        "kind": "Agent",
        "metadata": {"name": name},
        "spec": {
            "capabilities": ["llm:complete"],
            "tasks": [{"name": "t", "description": "x"}],
            "llm": {
                "provider": "anthropic",
                "apiKeySecretRef": {"name": "llm-key", "key": "api-key"},
            },
            **spec,
        },
    }


async def kernel_token(kube: AsyncKube, ns: str, agent: str) -> str:
    """What the kernel holds: a token for its Agent's ServiceAccount (TokenRequest)."""
    await wait_for(kube, ROLEBINDINGS, agent, ns, lambda _: True)
    return await service_account_token(kube, ns, agent, seconds=600)


async def expect_403(call: Any) -> None:
    with pytest.raises(ApiError) as err:
        await call
    assert err.value.status == 403, err.value


async def test_a_kernel_may_read_and_write_only_its_own_agents_status(
    kube: AsyncKube, namespace: str, operator: OperatorProcess
) -> None:
    await kube.create(
        SECRETS,
        {
            "metadata": {"name": "llm-key"},
            "data": {"api-key": base64.b64encode(b"sk-ant-not-real-0123456789").decode()},
        },
        namespace,
    )
    await kube.create(AGENTS, standalone("mine"), namespace)
    await kube.create(AGENTS, standalone("theirs"), namespace)
    token = await kernel_token(kube, namespace, "mine")
    async with AsyncKube(kube.config.with_token(token)) as kernel:
        own = await kernel.get(AGENTS, "mine", namespace, sub="status")
        assert own["spec"]["capabilities"] == ["llm:complete"]  # the spec comes with it
        patched = await kernel.patch(
            AGENTS, "mine", {"status": {"run": {"progress": "0/1"}}}, namespace, sub="status"
        )
        assert patched["status"]["run"]["progress"] == "0/1"
        await expect_403(
            kernel.patch(
                AGENTS, "theirs", {"status": {"run": {"progress": "1/1"}}}, namespace, sub="status"
            )
        )
        await expect_403(kernel.get(AGENTS, "theirs", namespace, sub="status"))
        await expect_403(
            kernel.patch(AGENTS, "mine", {"spec": {"capabilities": ["agent:spawn"]}}, namespace)
        )
        await expect_403(kernel.get(SECRETS, "llm-key", namespace))
        await expect_403(kernel.list(SECRETS, namespace))
        await expect_403(kernel.list(PODS, namespace))
        await expect_403(kernel.create(AGENTS, standalone("spawned"), namespace))
        await expect_403(
            kernel.create(ROLES, {"metadata": {"name": "escalate"}, "rules": []}, namespace)
        )


async def test_the_agent_pod_keeps_token_key_and_workspace_where_they_belong(
    kube: AsyncKube, namespace: str, operator: OperatorProcess
) -> None:
    await kube.create(
        SECRETS,
        {
            "metadata": {"name": "llm-key"},
            "data": {"api-key": base64.b64encode(b"sk-ant-not-real-0123456789").decode()},
        },
        namespace,
    )
    await kube.create(
        SECRETS,
        {"metadata": {"name": "docs-token"}, "stringData": {"Authorization": "Bearer s3cret"}},
        namespace,
    )
    docs = {
        "name": "docs",
        "url": "https://docs.example/mcp",
        "headersSecretRef": {"name": "docs-token"},
    }
    await kube.create(
        AGENTS,
        standalone("split", workspace={"sizeLimit": "64Mi"}, mcpServers=[docs]),
        namespace,
    )
    pod = await wait_for(kube, PODS, "split-1", namespace, lambda _: True)
    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in spec["volumes"]}
    by_name = {c["name"]: c for c in spec["initContainers"] + spec["containers"]}

    def mounts(container: str) -> dict[str, str]:
        return {m["mountPath"]: m["name"] for m in by_name[container].get("volumeMounts", [])}

    def holds_token(container: str) -> bool:
        return any(
            "projected" in volumes[v]
            and any("serviceAccountToken" in s for s in volumes[v]["projected"]["sources"])
            for v in mounts(container).values()
        )

    def holds_key(container: str) -> bool:
        env_secret = any(
            "secretKeyRef" in (e.get("valueFrom") or {}) for e in by_name[container].get("env", [])
        )
        return env_secret or any("secret" in volumes[v] for v in mounts(container).values())

    assert holds_token("kernel")
    assert holds_key("kernel")
    assert SERVICE_ACCOUNT_DIR in mounts("kernel")
    assert LLM_KEY_DIR in mounts("kernel")
    assert volumes[mounts("kernel")[f"{MCP_DIR}/docs"]]["secret"]["secretName"] == "docs-token"
    assert WORKSPACE not in mounts("kernel")
    assert not holds_token("tools")
    assert not holds_key("tools")
    assert WORKSPACE in mounts("tools")
    assert not holds_token("agent")
    assert not holds_key("agent")
    assert WORKSPACE not in mounts("agent")
    assert set(mounts("agent")) == {"/tmp"}
    for c in by_name.values():
        sc = c["securityContext"]
        assert sc["runAsNonRoot"]
        assert sc["readOnlyRootFilesystem"]
        assert not sc["allowPrivilegeEscalation"]
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert (
        by_name["tools"]["securityContext"]["runAsUser"]
        != by_name["kernel"]["securityContext"]["runAsUser"]
    )
    assert [c.get("restartPolicy") for c in spec["initContainers"]] == ["Always", "Always"]


async def test_a_user_who_cannot_read_a_secret_cannot_send_it_to_an_llm(
    kube: AsyncKube, namespace: str, controlplane: ControlPlane
) -> None:
    """Admission: creating Agents is not enough to name a Secret; you must be able to get it."""
    await kube.create(
        ROLES,
        {
            "metadata": {"name": "agent-maker"},
            "rules": [
                {
                    "apiGroups": ["toka.dev"],
                    "resources": ["agents", "agentsessions"],
                    "verbs": ["create", "get"],
                },
                {
                    "apiGroups": [""],
                    "resources": ["secrets"],
                    "resourceNames": ["mine"],
                    "verbs": ["get"],
                },
            ],
        },
        namespace,
    )
    await kube.create(
        ROLEBINDINGS,
        {
            "metadata": {"name": "alice"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "agent-maker",
            },
            "subjects": [
                {"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}
            ],
        },
        namespace,
    )
    alice_config = load_kubeconfig(controlplane.user_kubeconfig("alice"))
    async with AsyncKube(alice_config) as alice:
        steal = standalone("steal")
        steal["spec"]["llm"] = {
            "provider": "openai-compatible",
            "baseURL": "https://attacker.example/v1",
            "apiKeySecretRef": {"name": "x", "key": "api-key"},
        }
        with pytest.raises(ApiError) as err:
            await alice.create(AGENTS, steal, namespace)
        assert err.value.status == 403
        assert (
            "you may not get every Secret named in llm.apiKeySecretRef, "
            "workspace.git.credentialsSecretRef or mcpServers[].headersSecretRef (x)"
            in err.value.message
        )
        assert "the kernel would send its value to the LLM provider" in err.value.message

        session: JSON = {
            "apiVersion": "toka.dev/v1alpha1",
            "kind": "AgentSession",
            "metadata": {"name": "s"},
            "spec": {
                "agents": [
                    {
                        "name": "a",
                        "tasks": [{"name": "t", "description": "x"}],
                        "llm": {
                            "provider": "anthropic",
                            "apiKeySecretRef": {"name": "x", "key": "k"},
                        },
                    }
                ]
            },
        }
        with pytest.raises(ApiError) as err:
            await alice.create(SESSIONS, session, namespace)
        assert "(x)" in err.value.message

        # A git credential is a Secret sent to a URL of the creator's choice, too.
        del session["spec"]["agents"][0]["llm"]
        session["spec"]["workspace"] = {
            "git": {"url": "https://attacker.example/r.git", "credentialsSecretRef": {"name": "x"}}
        }
        with pytest.raises(ApiError) as err:
            await alice.create(SESSIONS, session, namespace)
        assert err.value.status == 403
        assert "workspace.git.credentialsSecretRef" in err.value.message
        assert "(x)" in err.value.message

        # So is an MCP server's headers Secret: the session's, an agent's, an Agent's.
        del session["spec"]["workspace"]
        steal_headers: JSON = {
            "name": "docs",
            "url": "https://attacker.example/mcp",
            "headersSecretRef": {"name": "x"},
        }
        session["spec"]["mcpServers"] = [steal_headers]
        with pytest.raises(ApiError) as err:
            await alice.create(SESSIONS, session, namespace)
        assert err.value.status == 403
        assert "mcpServers[].headersSecretRef (x)" in err.value.message
        assert "the MCP server" in err.value.message
        del session["spec"]["mcpServers"]
        session["spec"]["agents"][0]["mcpServers"] = [steal_headers]
        with pytest.raises(ApiError) as err:
            await alice.create(SESSIONS, session, namespace)
        assert "(x)" in err.value.message
        steal = standalone("mcp-steal", mcpServers=[steal_headers])
        steal["spec"]["llm"]["apiKeySecretRef"]["name"] = "mine"
        with pytest.raises(ApiError) as err:
            await alice.create(AGENTS, steal, namespace)
        assert "(mine, x)" in err.value.message

        allowed = standalone("fine")
        allowed["spec"]["llm"]["apiKeySecretRef"]["name"] = "mine"
        created = await alice.create(AGENTS, allowed, namespace)
        assert created["metadata"]["name"] == "fine"


async def test_a_program_run_through_shell_exec_cannot_read_the_key_or_the_token(
    kube: AsyncKube, namespace: str, operator: OperatorProcess, node_agent: NodeAgentProcess
) -> None:
    key = "sk-ant-never-leaves-the-kernel-0123456789"
    await kube.create(
        SECRETS,
        {
            "metadata": {"name": "llm-key"},
            "data": {"api-key": base64.b64encode(key.encode()).decode()},
        },
        namespace,
    )
    # What a program in `tools` could try: the kernel's paths, its own environment,
    # other processes' environments, and a search of where secrets usually lie.
    snoop = (
        f"cat {SERVICE_ACCOUNT_DIR}/token {LLM_KEY_FILE}; env; "
        "cat /proc/[0-9]*/environ | tr '\\0' '\\n'; "
        f"timeout 30 grep -rIl -e {key} /run /var /etc /dev/shm /tmp; "
        "ls -la /var/run/secrets /run/toka"
    )
    await put_recordings(
        kube,
        namespace,
        "rec",
        {
            "snoop": recording(
                "snoop",
                {
                    "t": [
                        call("shell_exec", argv=["sh", "-c", f"({snoop}) > out/loot.txt 2>&1"]),
                        finish("looked around"),
                    ]
                },
            )
        },
    )
    body = standalone(
        "snoop",
        capabilities=["llm:complete", "shell:exec:sh", "fs:write:out/**"],
        llm={
            "provider": "replay",
            "replay": {"configMapRef": {"name": "rec", "key": "snoop.json"}},
            "apiKeySecretRef": {"name": "llm-key", "key": "api-key"},
        },
    )
    await kube.create(AGENTS, body, namespace)
    done = await wait_for(
        kube, AGENTS, "snoop", namespace, phase_is("Succeeded", "Failed"), timeout=90
    )
    assert done["status"]["phase"] == "Succeeded", done["status"]
    pod = done["status"]["podName"]
    pod_dir = node_agent.pod_dir(namespace, pod)
    loot = (pod_dir / "volumes" / "workspace" / "out" / "loot.txt").read_text(errors="replace")
    token = (pod_dir / "volumes" / "kube-api-access" / "token").read_text().strip()
    # The program ran and looked (its own output is there) ...
    assert "No such file or directory" in loot
    assert "PATH=" in loot
    # ... and found neither secret: they are not in its container.
    assert key not in loot
    assert token
    assert token not in loot


PROBE = """
import json, socket
seen = {}
for path in ("public/readme.txt", "private/key.txt", "/var/lib/toka/seed/private__key.txt"):
    try:
        seen["read " + path] = open(path).read()
    except OSError as err:
        seen["read " + path] = type(err).__name__
for path in ("out/python.txt", "private/x", "public/x", "x"):
    try:
        open(path, "w").write("written")
        seen["write " + path] = "written"
    except OSError as err:
        seen["write " + path] = type(err).__name__
try:
    socket.create_connection(("127.0.0.1", PORT), timeout=10)
    seen["connect"] = "connected"
except OSError as err:
    seen["connect"] = type(err).__name__
open("out/python.json", "w").write(json.dumps(seen))
"""


async def test_granted_git_and_python_in_a_real_pod_reach_only_what_the_grant_names(
    kube: AsyncKube,
    namespace: str,
    operator: OperatorProcess,
    node_agent: NodeAgentProcess,
) -> None:
    """The kernel checks argv[0]; Landlock confines what the program then does: git's
    alias runs a shell, python3 runs any code, and neither gets past the fs: grants or
    opens a TCP connection (a listener on the node's loopback counts who tried)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    await kube.create(
        CONFIGMAPS,
        {
            "metadata": {"name": "seed"},
            "data": {"public__readme.txt": "public words", "private__key.txt": "the secret"},
        },
        namespace,
    )
    shell = (
        "cat private/key.txt > out/git-read.txt 2>&1; "
        "(echo written > private/y) 2> out/git-write.txt; "
        f"git -c protocol.allow=always ls-remote http://127.0.0.1:{port}/r > out/git-net.txt 2>&1; "
        "exit 0"
    )
    await put_recordings(
        kube,
        namespace,
        "rec",
        {
            "probe": recording(
                "probe",
                {
                    "t": [
                        call("shell_exec", argv=["git", "-c", f"alias.x=!{shell}", "x"]),
                        call(
                            "shell_exec", argv=["python3", "-c", PROBE.replace("PORT", str(port))]
                        ),
                        finish("probed"),
                    ]
                },
            )
        },
    )
    body = standalone(
        "probe",
        capabilities=[
            "llm:complete",
            "git-access",
            "python-execution",
            "fs:read:public/**",
            "fs:read:out/**",
            "fs:write:out/**",
        ],
        llm={
            "provider": "replay",
            "replay": {"configMapRef": {"name": "rec", "key": "probe.json"}},
        },
        workspace={"configMap": "seed"},
    )
    try:
        await kube.create(AGENTS, body, namespace)
        done = await wait_for(
            kube, AGENTS, "probe", namespace, phase_is("Succeeded", "Failed"), timeout=120
        )
        connections = 0
        with contextlib.suppress(TimeoutError, OSError):
            while True:
                conn, _ = listener.accept()
                conn.close()
                connections += 1
    finally:
        listener.close()
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert done["status"]["run"]["sandbox"]["level"] == "Landlock"
    assert "tcp" in done["status"]["run"]["sandbox"]["guarantees"]
    ws = node_agent.pod_dir(namespace, done["status"]["podName"]) / "volumes" / "workspace"
    seen = json.loads((ws / "out" / "python.json").read_text())
    assert seen == {
        "read public/readme.txt": "public words",
        "read private/key.txt": "PermissionError",
        "read /var/lib/toka/seed/private__key.txt": "PermissionError",
        "write out/python.txt": "written",
        "write private/x": "PermissionError",
        "write public/x": "PermissionError",
        "write x": "PermissionError",
        "connect": "PermissionError",
    }
    assert "Permission denied" in (ws / "out" / "git-read.txt").read_text()
    assert "Permission denied" in (ws / "out" / "git-write.txt").read_text()
    assert "unable to access" in (ws / "out" / "git-net.txt").read_text()
    assert not (ws / "private" / "y").exists()
    assert not (ws / "private" / "x").exists()
    assert "the secret" not in "".join(p.read_text() for p in (ws / "out").iterdir())
    assert connections == 0
