"""The agent pod of DESIGN §4, and the Role that lets its kernel write only its own status.

Three containers, and what each may hold:

| container | token | provider key | workspace | Unix socket |
|---|---|---|---|---|
| `kernel` (native sidecar, first) | yes (projected, expiring) | yes | no | yes |
| `tools` (native sidecar, second) | no | no | yes | yes |
| `agent` (main) | no | no | no | no |

The git credential and the MCP servers' header Secrets go where the provider
key goes: into the kernel only, the one container that talks to those servers.

`automountServiceAccountToken: false`; every container non-root with a
read-only root, no capabilities, no privilege escalation, seccomp
RuntimeDefault; `tools` runs as another UID than `kernel`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from toka.api.models import Agent, Provider
from toka.controller.builders.meta import owner_reference
from toka.controller.builders.names import (
    LABEL_AGENT,
    LABEL_ATTEMPT,
    LABEL_MANAGED_BY,
    LABEL_SESSION,
    LABEL_WORKSTREAM,
    MANAGED_BY,
    agent_object_name,
    pod_name,
    recording_configmap_name,
    result_configmap_name,
)

JSON = dict[str, Any]

TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
KEY_DIR = "/etc/toka/llm"
REPLAY_DIR = "/etc/toka/replay"
SOCKET_DIR = "/run/toka"
GIT_TOKEN_FILE = f"{SOCKET_DIR}/git-token"
GIT_CREDENTIALS_DIR = "/etc/toka/git"
# One directory per MCP server, a file per header. Not under /var/run: in the image that
# is /run, where /run/toka is the directory the kernel shares with tools.
MCP_DIR = "/etc/toka/mcp"
WORKSPACE = "/workspace"
# The tools container's inputs and the workspace's repository: outside the work tree and
# outside the system directories programs may read (their content reaches the agent only
# through its grants).
SEED_DIR = "/var/lib/toka/seed"
INPUTS_DIR = "/var/lib/toka/inputs"
RESULT_DIR = "/var/lib/toka/result"
GIT_DIR = "/var/lib/toka/git"
KERNEL_UID, TOOLS_UID, AGENT_UID = 10001, 10002, 10003


# The image's ENTRYPOINT (Dockerfile); containers pass only the subcommand as args.
ENTRYPOINT = ("toka",)


@dataclass(frozen=True)
class PodConfig:
    """Operator-wide settings of the pods it builds."""

    image: str = "ghcr.io/toka-dev/toka:0.1.0"
    kernel_port: int = 8181
    metrics_port: int = 9090
    token_seconds: int = 3600
    workspace_size: str = "1Gi"
    heartbeat_seconds: int = 10
    # Long enough for the kernel to get its last report out through a short API outage.
    termination_grace_seconds: int = 60
    # Cluster-wide LLM defaults for kernels (LLM_PROVIDER, LLM_MODEL, LLM_BASE_URL, ...):
    # used where neither the Agent nor its session names them. Never keys.
    llm_defaults: tuple[tuple[str, str], ...] = ()
    # The operator's OTLP endpoint and exporter settings (toka.tracing.kernel_env): kernels
    # export their spans where the operator does. Never headers.
    tracing_env: tuple[tuple[str, str], ...] = ()


def _security(uid: int) -> JSON:
    return {
        "runAsUser": uid,
        "runAsGroup": uid,
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _field(name: str, path: str) -> JSON:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def build_agent_pod(agent_body: JSON, attempt: int, config: PodConfig) -> JSON:
    agent = Agent.model_validate(agent_body)
    meta = agent_body["metadata"]
    name = meta["name"]
    spec = agent.spec
    llm = spec.llm
    addr = f"127.0.0.1:{config.kernel_port}"
    common_env = [
        {"name": "TOKA_KERNEL_ADDR", "value": addr},
        {"name": "TOKA_AGENT_NAME", "value": name},
        _field("TOKA_NAMESPACE", "metadata.namespace"),
        _field("TOKA_POD_NAME", "metadata.name"),
        {"name": "TOKA_ATTEMPT", "value": str(attempt)},
    ]
    socket = f"{SOCKET_DIR}/tools.sock"
    volumes: list[JSON] = [
        {
            "name": "kube-api-access",
            "projected": {
                "defaultMode": 0o440,
                "sources": [
                    {
                        "serviceAccountToken": {
                            "path": "token",
                            "expirationSeconds": config.token_seconds,
                        }
                    },
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
                ],
            },
        },
        {"name": "kernel-tools", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
        {"name": "kernel-tmp", "emptyDir": {"sizeLimit": "64Mi"}},
        {"name": "tools-tmp", "emptyDir": {"sizeLimit": "256Mi"}},
        {"name": "agent-tmp", "emptyDir": {"sizeLimit": "64Mi"}},
    ]
    kernel_env = [
        *common_env,
        {"name": "TOKA_TOOLS_SOCKET", "value": socket},
        # Metrics on the pod IP (Prometheus scrapes it); the API stays on loopback.
        _field("TOKA_POD_IP", "status.podIP"),
        {"name": "TOKA_METRICS_ADDR", "value": f"$(TOKA_POD_IP):{config.metrics_port}"},
        {"name": "TOKA_HEARTBEAT_SECONDS", "value": str(config.heartbeat_seconds)},
        *({"name": k, "value": v} for k, v in config.llm_defaults),
        *({"name": k, "value": v} for k, v in config.tracing_env),
        # Keep retrying the last report until just before the kubelet's SIGKILL.
        {
            "name": "TOKA_SHUTDOWN_SECONDS",
            "value": str(max(1, config.termination_grace_seconds - 5)),
        },
    ]
    kernel_mounts: list[JSON] = [
        {"name": "kube-api-access", "mountPath": TOKEN_DIR, "readOnly": True},
        {"name": "kernel-tools", "mountPath": SOCKET_DIR},
        {"name": "kernel-tmp", "mountPath": "/tmp"},
    ]
    if llm is not None and llm.api_key_secret_ref is not None:
        volumes.append(
            {
                "name": "llm-key",
                "secret": {
                    "secretName": llm.api_key_secret_ref.name,
                    "defaultMode": 0o440,
                    "items": [{"key": llm.api_key_secret_ref.key, "path": "api-key"}],
                },
            }
        )
        kernel_mounts.append({"name": "llm-key", "mountPath": KEY_DIR, "readOnly": True})
        kernel_env.append({"name": "TOKA_LLM_KEY_FILE", "value": f"{KEY_DIR}/api-key"})
    if llm is not None and llm.provider == Provider.REPLAY and llm.replay is not None:
        ref = llm.replay.config_map_ref
        volumes.append(
            {
                "name": "replay",
                "configMap": {
                    "name": ref.name,
                    "items": [
                        {"key": ref.key or f"{spec.name or name}.json", "path": "recording.json"}
                    ],
                },
            }
        )
        kernel_mounts.append({"name": "replay", "mountPath": REPLAY_DIR, "readOnly": True})
        kernel_env.append({"name": "TOKA_REPLAY_FILE", "value": f"{REPLAY_DIR}/recording.json"})
    if llm is not None and llm.record and llm.provider != Provider.REPLAY:
        kernel_env += [
            {"name": "TOKA_RECORDING_CONFIGMAP", "value": recording_configmap_name(name)},
            {"name": "TOKA_RECORDING_KEY", "value": f"{spec.name or name}.json"},
        ]
    _add_mcp_headers(agent, volumes, kernel_env, kernel_mounts)

    workspace = spec.workspace
    size = workspace.size_limit if workspace and workspace.size_limit else config.workspace_size
    tools_env = [
        *common_env,
        {"name": "TOKA_TOOLS_SOCKET", "value": socket},
        {"name": "TOKA_WORKSPACE", "value": WORKSPACE},
    ]
    tools_mounts: list[JSON] = [
        {"name": "workspace", "mountPath": WORKSPACE},
        {"name": "kernel-tools", "mountPath": SOCKET_DIR},
        {"name": "tools-tmp", "mountPath": "/tmp"},
    ]
    if workspace is not None and workspace.persistent_volume_claim is not None:
        volumes.append(
            {
                "name": "workspace",
                "persistentVolumeClaim": {
                    "claimName": workspace.persistent_volume_claim.claim_name
                },
            }
        )
        tools_env.append({"name": "TOKA_WORKSPACE_SHARED", "value": "1"})
    else:
        volumes.append({"name": "workspace", "emptyDir": {"sizeLimit": size}})
        volumes.append({"name": "workspace-git", "emptyDir": {"sizeLimit": size}})
        tools_mounts.append({"name": "workspace-git", "mountPath": GIT_DIR})
        tools_env.append({"name": "TOKA_GIT_DIR", "value": GIT_DIR})
        _add_git_workspace(agent, name, volumes, kernel_env, kernel_mounts, tools_env, tools_mounts)
    labels = {
        LABEL_AGENT: name,
        LABEL_ATTEMPT: str(attempt),
        LABEL_MANAGED_BY: MANAGED_BY,
    }
    for key in (LABEL_SESSION, LABEL_WORKSTREAM):
        if key in (meta.get("labels") or {}):
            labels[key] = meta["labels"][key]
    template = spec.pod_template
    pod_spec: JSON = {
        "serviceAccountName": name,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": config.termination_grace_seconds,
        "securityContext": {
            "runAsNonRoot": True,
            "fsGroup": KERNEL_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "initContainers": [
            {
                "name": "kernel",
                "image": config.image,
                "args": ["kernel"],
                "restartPolicy": "Always",
                "env": kernel_env,
                "ports": [{"name": "metrics", "containerPort": config.metrics_port}],
                # Exec, not httpGet: the kubelet probes the pod IP, and the kernel's API
                # listens on loopback only. Its timeout leaves the probe's own 2 s to answer.
                "startupProbe": {
                    "exec": {"command": [*ENTRYPOINT, "kernel", "--probe"]},
                    "periodSeconds": 1,
                    "timeoutSeconds": 3,
                    "failureThreshold": 120,
                },
                "volumeMounts": kernel_mounts,
                "securityContext": _security(KERNEL_UID),
                "resources": {
                    "requests": {"cpu": "50m", "memory": "64Mi"},
                    "limits": {"memory": "256Mi"},
                },
            },
            {
                "name": "tools",
                "image": spec.tools_image or config.image,
                "args": ["tools"],
                "restartPolicy": "Always",
                "env": tools_env,
                "startupProbe": {
                    "exec": {"command": [*ENTRYPOINT, "tools", "--probe"]},
                    "periodSeconds": 1,
                    "timeoutSeconds": 3,  # the probe's own connect timeout is 2 s
                    "failureThreshold": 300,
                },
                "volumeMounts": tools_mounts,
                "securityContext": _security(TOOLS_UID),
                "resources": {
                    "requests": {"cpu": "50m", "memory": "32Mi"},
                    "limits": {"memory": "512Mi"},
                },
            },
        ],
        "containers": [
            {
                "name": "agent",
                "image": spec.image or config.image,
                "args": ["agent"],
                "env": common_env,
                "volumeMounts": [{"name": "agent-tmp", "mountPath": "/tmp"}],
                "securityContext": _security(AGENT_UID),
                "resources": spec.resources.wire()
                if spec.resources
                else {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
            }
        ],
        "volumes": volumes,
    }
    if spec.timeout_seconds:
        pod_spec["activeDeadlineSeconds"] = spec.timeout_seconds
    if template is not None:
        if template.node_selector:
            pod_spec["nodeSelector"] = template.node_selector
        if template.tolerations:
            pod_spec["tolerations"] = [t.wire() for t in template.tolerations]
        if template.image_pull_secrets:
            pod_spec["imagePullSecrets"] = [r.wire() for r in template.image_pull_secrets]
        if template.runtime_class_name:
            pod_spec["runtimeClassName"] = template.runtime_class_name
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(name, attempt),
            "namespace": meta["namespace"],
            "labels": labels,
            "ownerReferences": [owner_reference(agent_body)],
        },
        "spec": pod_spec,
    }


def _add_mcp_headers(
    agent: Agent, volumes: list[JSON], kernel_env: list[JSON], kernel_mounts: list[JSON]
) -> None:
    """Each MCP server's header Secret, whole, at `<MCP_DIR>/<server>/`: every key a header.
    Mounted as a directory, not by items, so a rotated Secret reaches the kernel."""
    servers = agent.spec.mcp_servers or []
    if servers:
        kernel_env.append({"name": "TOKA_MCP_DIR", "value": MCP_DIR})
    for i, server in enumerate(servers):
        if server.headers_secret_ref is None:
            continue
        # Indexed: `mcp-` and a 63-character server name would not fit a volume name.
        volume = f"mcp-headers-{i}"
        volumes.append(
            {
                "name": volume,
                "secret": {"secretName": server.headers_secret_ref.name, "defaultMode": 0o440},
            }
        )
        kernel_mounts.append(
            {"name": volume, "mountPath": f"{MCP_DIR}/{server.name}", "readOnly": True}
        )


def _add_git_workspace(
    agent: Agent,
    name: str,
    volumes: list[JSON],
    kernel_env: list[JSON],
    kernel_mounts: list[JSON],
    tools_env: list[JSON],
    tools_mounts: list[JSON],
) -> None:
    """The workspace as a git work tree: its base, the dependencies' results to merge
    (their bundles, mounted read-only into tools), this agent's own earlier result (to
    resume from), and for the kernel the result ConfigMap it writes and the git remote
    it alone may reach with the credential."""
    spec = agent.spec
    workspace = spec.workspace
    session = spec.session_ref.name if spec.session_ref else None
    result_cm = result_configmap_name(name)
    kernel_env += [
        {"name": "TOKA_RESULT_CONFIGMAP", "value": result_cm},
        {"name": "TOKA_SESSION", "value": session or spec.name or name},
        {"name": "TOKA_GIT_TOKEN_FILE", "value": GIT_TOKEN_FILE},
    ]
    tools_env.append({"name": "TOKA_GIT_TOKEN_FILE", "value": GIT_TOKEN_FILE})
    if workspace is not None and workspace.config_map:
        volumes.append({"name": "workspace-seed", "configMap": {"name": workspace.config_map}})
        tools_mounts.append({"name": "workspace-seed", "mountPath": SEED_DIR, "readOnly": True})
        tools_env.append({"name": "TOKA_WORKSPACE_SEED_DIR", "value": SEED_DIR})
    git = workspace.git if workspace is not None else None
    if git is not None:
        kernel_env.append({"name": "TOKA_WORKSPACE_GIT_URL", "value": git.url})
        tools_env.append({"name": "TOKA_WORKSPACE_GIT_URL", "value": git.url})
        if git.ref:
            kernel_env.append({"name": "TOKA_WORKSPACE_GIT_REF", "value": git.ref})
            tools_env.append({"name": "TOKA_WORKSPACE_GIT_REF", "value": git.ref})
        if git.push is not None:
            kernel_env.append({"name": "TOKA_GIT_PUSH_BRANCH", "value": git.push.branch})
        if git.credentials_secret_ref is not None:
            volumes.append(
                {
                    "name": "git-credentials",
                    "secret": {
                        "secretName": git.credentials_secret_ref.name,
                        "defaultMode": 0o440,
                    },
                }
            )
            kernel_mounts.append(
                {"name": "git-credentials", "mountPath": GIT_CREDENTIALS_DIR, "readOnly": True}
            )
            kernel_env.append({"name": "TOKA_GIT_CREDENTIALS_DIR", "value": GIT_CREDENTIALS_DIR})
    base = next((e.base for e in spec.handoff or [] if e.base), None)
    if base is not None:
        # Every agent of a session starts from the same base, even if the branch moved.
        tools_env.append({"name": "TOKA_WORKSPACE_BASE", "value": base})
    inputs = []
    for i, entry in enumerate(spec.handoff or []):
        if session is None or entry.commit is None or entry.commit == entry.base:
            continue  # nothing beyond the base to merge
        volume = f"input-{i}"
        dependency = agent_object_name(session, entry.agent)
        volumes.append(
            {
                "name": volume,
                "configMap": {"name": result_configmap_name(dependency), "optional": True},
            }
        )
        mount = f"{INPUTS_DIR}/{entry.agent}"
        tools_mounts.append({"name": volume, "mountPath": mount, "readOnly": True})
        inputs.append({"agent": entry.agent, "commit": entry.commit, "dir": mount})
    if inputs:
        tools_env.append({"name": "TOKA_WORKSPACE_INPUTS", "value": json.dumps(inputs)})
    # This agent's own result so far: a new attempt continues from it.
    volumes.append({"name": "result", "configMap": {"name": result_cm, "optional": True}})
    tools_mounts.append({"name": "result", "mountPath": RESULT_DIR, "readOnly": True})
    tools_env.append({"name": "TOKA_WORKSPACE_RESUME_DIR", "value": RESULT_DIR})


def is_recording(agent_body: JSON) -> bool:
    """Record mode (`llm.record`): the kernel writes its turns to a ConfigMap."""
    llm = Agent.model_validate(agent_body).spec.llm
    return bool(llm is not None and llm.record and llm.provider != Provider.REPLAY)


def build_agent_configmap(agent_body: JSON, name: str) -> JSON:
    """An empty ConfigMap the Agent's kernel writes and no one else: its result
    (`result_configmap_name`: a git bundle and its commit) or, in record mode, its
    recording (`recording_configmap_name`: key `<name>.json`, as `provider: replay` reads
    it). Owned by the Agent; its Role names these two ConfigMaps and no other."""
    meta = agent_body["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": {LABEL_AGENT: meta["name"], LABEL_MANAGED_BY: MANAGED_BY},
            "ownerReferences": [owner_reference(agent_body)],
        },
        "data": {},
    }


def build_service_account(agent_body: JSON) -> JSON:
    agent = Agent.model_validate(agent_body)
    annotations = {}
    template = agent.spec.pod_template
    if template and template.service_account and template.service_account.annotations:
        annotations = dict(template.service_account.annotations)
    meta = agent_body["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "labels": {LABEL_AGENT: meta["name"], LABEL_MANAGED_BY: MANAGED_BY},
            "annotations": annotations,
            "ownerReferences": [owner_reference(agent_body)],
        },
        "automountServiceAccountToken": False,
    }


def build_role(agent_body: JSON) -> JSON:
    """`get` and `patch` on this one Agent's status, its result ConfigMap and its recording
    ConfigMap, nothing else. The recording's name is there even when the Agent does not
    record: `llm.record` may be turned on later, and the Role is made once, with the first
    pod. Its kernel touches that ConfigMap only in record mode, after the operator has
    created it or found it owned by the Agent (a foreign one is refused)."""
    meta = agent_body["metadata"]
    configmaps = [result_configmap_name(meta["name"]), recording_configmap_name(meta["name"])]
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "labels": {LABEL_AGENT: meta["name"], LABEL_MANAGED_BY: MANAGED_BY},
            "ownerReferences": [owner_reference(agent_body)],
        },
        "rules": [
            {
                "apiGroups": ["toka.dev"],
                "resources": ["agents/status"],
                "resourceNames": [meta["name"]],
                "verbs": ["get", "patch"],
            },
            {
                "apiGroups": [""],
                "resources": ["configmaps"],
                "resourceNames": configmaps,
                "verbs": ["get", "patch"],
            },
        ],
    }


def build_role_binding(agent_body: JSON) -> JSON:
    meta = agent_body["metadata"]
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "labels": {LABEL_AGENT: meta["name"], LABEL_MANAGED_BY: MANAGED_BY},
            "ownerReferences": [owner_reference(agent_body)],
        },
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": meta["name"]},
        "subjects": [
            {"kind": "ServiceAccount", "name": meta["name"], "namespace": meta["namespace"]}
        ],
    }
