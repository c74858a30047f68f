"""The agent pod, and the Role that lets its kernel write only its own status.

Why it is built so: docs/architecture.md, The agent pod. Three containers, and
what each may hold:

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
from pathlib import PurePosixPath
from typing import Any

from toka import __version__
from toka.api.models import Agent, AgentSpec, GitSource, HandoffEntry, Provider
from toka.contract import (
    AGENT_CONTAINER,
    AGENT_NAME_ENV,
    AGENT_PLURAL,
    API_GROUP,
    ATTEMPT_ENV,
    DEFAULT_HEARTBEAT_SECONDS,
    ENTRYPOINT,
    GIT_CREDENTIALS_DIR,
    GIT_CREDENTIALS_DIR_ENV,
    GIT_DIR,
    GIT_DIR_ENV,
    GIT_PUSH_BRANCH_ENV,
    GIT_TOKEN_FILE,
    GIT_TOKEN_FILE_ENV,
    HEARTBEAT_SECONDS_ENV,
    IMAGE_REPOSITORY,
    INPUTS_DIR,
    KERNEL_ADDR_ENV,
    KERNEL_CONTAINER,
    KERNEL_HOST,
    KERNEL_METRICS_PORT,
    KERNEL_PORT,
    LLM_KEY_DIR,
    LLM_KEY_FILE,
    LLM_KEY_FILE_ENV,
    MCP_DIR,
    MCP_DIR_ENV,
    METRICS_ADDR_ENV,
    NAMESPACE_ENV,
    POD_IP_ENV,
    POD_NAME_ENV,
    PROBE_FLAG,
    RECORDING_CONFIGMAP_ENV,
    RECORDING_KEY_ENV,
    REPLAY_DIR,
    REPLAY_FILE,
    REPLAY_FILE_ENV,
    RESULT_CONFIGMAP_ENV,
    RESULT_DIR,
    SEED_DIR,
    SERVICE_ACCOUNT_DIR,
    SESSION_ENV,
    SHUTDOWN_SECONDS_ENV,
    SOCKET_DIR,
    TOOLS_CONTAINER,
    TOOLS_SOCKET,
    TOOLS_SOCKET_ENV,
    WORKSPACE,
    WORKSPACE_BASE_ENV,
    WORKSPACE_ENV,
    WORKSPACE_GIT_REF_ENV,
    WORKSPACE_GIT_URL_ENV,
    WORKSPACE_INPUTS_ENV,
    WORKSPACE_RESUME_DIR_ENV,
    WORKSPACE_SEED_DIR_ENV,
    WORKSPACE_SHARED_ENV,
    recording_key,
)
from toka.controller.builders.meta import name_of, namespace_of, owner_reference
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

KERNEL_UID, TOOLS_UID, AGENT_UID = 10001, 10002, 10003
# The files' names in the directories the key Secret and the recording ConfigMap are
# mounted at: where the kernel is told to read them.
_LLM_KEY_ITEM = PurePosixPath(LLM_KEY_FILE).name
_REPLAY_ITEM = PurePosixPath(REPLAY_FILE).name


@dataclass(frozen=True)
class PodConfig:
    """Operator-wide settings of the pods it builds."""

    image: str = f"{IMAGE_REPOSITORY}:{__version__}"
    kernel_port: int = KERNEL_PORT
    metrics_port: int = KERNEL_METRICS_PORT
    token_seconds: int = 3600
    workspace_size: str = "1Gi"
    heartbeat_seconds: int = DEFAULT_HEARTBEAT_SECONDS
    # Long enough for the kernel to get its last report out through a short API outage.
    termination_grace_seconds: int = 60
    # Cluster-wide LLM defaults for kernels (LLM_PROVIDER, LLM_MODEL, LLM_BASE_URL, ...):
    # used where neither the Agent nor its session names them. Never keys.
    llm_defaults: tuple[tuple[str, str], ...] = ()
    # The operator's OTLP endpoint and exporter settings (toka.tracing.kernel_env): kernels
    # export their spans where the operator does. Never headers.
    tracing_env: tuple[tuple[str, str], ...] = ()


@dataclass
class _PodParts:
    """What the pod's volumes and its sidecars' env and mounts gather, in order: each
    feature of the Agent (LLM key, replay, MCP headers, workspace) adds its own."""

    volumes: list[JSON]
    kernel_env: list[JSON]
    kernel_mounts: list[JSON]
    tools_env: list[JSON]
    tools_mounts: list[JSON]


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


def build_agent_pod(agent: Agent, attempt: int, config: PodConfig) -> JSON:
    """Attempt `attempt` of the Agent: its pod, owned by it."""
    name = name_of(agent)
    common_env = _common_env(name, attempt, config)
    parts = _PodParts(
        volumes=_base_volumes(config),
        kernel_env=_kernel_env(common_env, config),
        kernel_mounts=[
            {"name": "kube-api-access", "mountPath": SERVICE_ACCOUNT_DIR, "readOnly": True},
            {"name": "kernel-tools", "mountPath": SOCKET_DIR},
            {"name": "kernel-tmp", "mountPath": "/tmp"},
        ],
        tools_env=[
            *common_env,
            {"name": TOOLS_SOCKET_ENV, "value": TOOLS_SOCKET},
            {"name": WORKSPACE_ENV, "value": WORKSPACE},
        ],
        tools_mounts=[
            {"name": "workspace", "mountPath": WORKSPACE},
            {"name": "kernel-tools", "mountPath": SOCKET_DIR},
            {"name": "tools-tmp", "mountPath": "/tmp"},
        ],
    )
    _add_llm(agent, name, parts)
    _add_mcp_headers(agent, parts)
    _add_workspace(agent, name, config, parts)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(name, attempt),
            "namespace": namespace_of(agent),
            "labels": _pod_labels(agent, name, attempt),
            "ownerReferences": [owner_reference(agent)],
        },
        "spec": _pod_spec(agent, name, config, common_env, parts),
    }


def _common_env(name: str, attempt: int, config: PodConfig) -> list[JSON]:
    """What every container is told: where the kernel listens, and who it is."""
    return [
        {"name": KERNEL_ADDR_ENV, "value": f"{KERNEL_HOST}:{config.kernel_port}"},
        {"name": AGENT_NAME_ENV, "value": name},
        _field(NAMESPACE_ENV, "metadata.namespace"),
        _field(POD_NAME_ENV, "metadata.name"),
        {"name": ATTEMPT_ENV, "value": str(attempt)},
    ]


def _base_volumes(config: PodConfig) -> list[JSON]:
    """The kernel's expiring token, the kernel-tools socket directory, and each
    container's /tmp."""
    return [
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


def _kernel_env(common_env: list[JSON], config: PodConfig) -> list[JSON]:
    return [
        *common_env,
        {"name": TOOLS_SOCKET_ENV, "value": TOOLS_SOCKET},
        # Metrics on the pod IP (Prometheus scrapes it); the API stays on loopback.
        _field(POD_IP_ENV, "status.podIP"),
        {"name": METRICS_ADDR_ENV, "value": f"$({POD_IP_ENV}):{config.metrics_port}"},
        {"name": HEARTBEAT_SECONDS_ENV, "value": str(config.heartbeat_seconds)},
        *({"name": k, "value": v} for k, v in config.llm_defaults),
        *({"name": k, "value": v} for k, v in config.tracing_env),
        # Keep retrying the last report until just before the kubelet's SIGKILL.
        {
            "name": SHUTDOWN_SECONDS_ENV,
            "value": str(max(1, config.termination_grace_seconds - 5)),
        },
    ]


def _add_llm(agent: Agent, name: str, parts: _PodParts) -> None:
    """For the kernel alone: the provider key, the recording it replays, or the
    ConfigMap it records to."""
    llm = agent.spec.llm
    if llm is None:
        return
    if llm.api_key_secret_ref is not None:
        parts.volumes.append(
            {
                "name": "llm-key",
                "secret": {
                    "secretName": llm.api_key_secret_ref.name,
                    "defaultMode": 0o440,
                    "items": [{"key": llm.api_key_secret_ref.key, "path": _LLM_KEY_ITEM}],
                },
            }
        )
        parts.kernel_mounts.append({"name": "llm-key", "mountPath": LLM_KEY_DIR, "readOnly": True})
        parts.kernel_env.append({"name": LLM_KEY_FILE_ENV, "value": LLM_KEY_FILE})
    key = recording_key(agent.spec.name or name)
    if llm.provider == Provider.REPLAY and llm.replay is not None:
        ref = llm.replay.config_map_ref
        items = [{"key": ref.key or key, "path": _REPLAY_ITEM}]
        parts.volumes.append({"name": "replay", "configMap": {"name": ref.name, "items": items}})
        parts.kernel_mounts.append({"name": "replay", "mountPath": REPLAY_DIR, "readOnly": True})
        parts.kernel_env.append({"name": REPLAY_FILE_ENV, "value": REPLAY_FILE})
    if is_recording(agent):
        parts.kernel_env += [
            {"name": RECORDING_CONFIGMAP_ENV, "value": recording_configmap_name(name)},
            {"name": RECORDING_KEY_ENV, "value": key},
        ]


def _add_mcp_headers(agent: Agent, parts: _PodParts) -> None:
    """Each MCP server's header Secret, whole, at `<MCP_DIR>/<server>/`: every key a header.
    Mounted as a directory, not by items, so a rotated Secret reaches the kernel."""
    servers = agent.spec.mcp_servers or []
    if servers:
        parts.kernel_env.append({"name": MCP_DIR_ENV, "value": MCP_DIR})
    for i, server in enumerate(servers):
        if server.headers_secret_ref is None:
            continue
        # Indexed: `mcp-` and a 63-character server name would not fit a volume name.
        volume = f"mcp-headers-{i}"
        parts.volumes.append(
            {
                "name": volume,
                "secret": {"secretName": server.headers_secret_ref.name, "defaultMode": 0o440},
            }
        )
        parts.kernel_mounts.append(
            {"name": volume, "mountPath": f"{MCP_DIR}/{server.name}", "readOnly": True}
        )


def _add_workspace(agent: Agent, name: str, config: PodConfig, parts: _PodParts) -> None:
    """The workspace: a shared claim as it is, or a git work tree of the pod's own."""
    workspace = agent.spec.workspace
    if workspace is not None and workspace.persistent_volume_claim is not None:
        claim = workspace.persistent_volume_claim.claim_name
        parts.volumes.append({"name": "workspace", "persistentVolumeClaim": {"claimName": claim}})
        parts.tools_env.append({"name": WORKSPACE_SHARED_ENV, "value": "1"})
        return
    size = workspace.size_limit if workspace and workspace.size_limit else config.workspace_size
    parts.volumes.append({"name": "workspace", "emptyDir": {"sizeLimit": size}})
    parts.volumes.append({"name": "workspace-git", "emptyDir": {"sizeLimit": size}})
    parts.tools_mounts.append({"name": "workspace-git", "mountPath": GIT_DIR})
    parts.tools_env.append({"name": GIT_DIR_ENV, "value": GIT_DIR})
    _add_git_workspace(agent, name, parts)


def _add_git_workspace(agent: Agent, name: str, parts: _PodParts) -> None:
    """The workspace as a git work tree: its base, the dependencies' results to merge
    (their bundles, mounted read-only into tools), this agent's own earlier result (to
    resume from), and for the kernel the result ConfigMap it writes and the git remote
    it alone may reach with the credential."""
    spec = agent.spec
    workspace = spec.workspace
    session = spec.session_ref.name if spec.session_ref else None
    result_cm = result_configmap_name(name)
    parts.kernel_env += [
        {"name": RESULT_CONFIGMAP_ENV, "value": result_cm},
        {"name": SESSION_ENV, "value": session or spec.name or name},
        {"name": GIT_TOKEN_FILE_ENV, "value": GIT_TOKEN_FILE},
    ]
    parts.tools_env.append({"name": GIT_TOKEN_FILE_ENV, "value": GIT_TOKEN_FILE})
    if workspace is not None and workspace.config_map:
        parts.volumes.append(
            {"name": "workspace-seed", "configMap": {"name": workspace.config_map}}
        )
        parts.tools_mounts.append(
            {"name": "workspace-seed", "mountPath": SEED_DIR, "readOnly": True}
        )
        parts.tools_env.append({"name": WORKSPACE_SEED_DIR_ENV, "value": SEED_DIR})
    if workspace is not None and workspace.git is not None:
        _add_git_source(workspace.git, parts)
    base = next((e.base for e in spec.handoff or [] if e.base), None)
    if base is not None:
        # Every agent of a session starts from the same base, even if the branch moved.
        parts.tools_env.append({"name": WORKSPACE_BASE_ENV, "value": base})
    if session is not None:
        _add_handoff_inputs(spec.handoff or [], session, parts)
    # This agent's own result so far: a new attempt continues from it.
    parts.volumes.append({"name": "result", "configMap": {"name": result_cm, "optional": True}})
    parts.tools_mounts.append({"name": "result", "mountPath": RESULT_DIR, "readOnly": True})
    parts.tools_env.append({"name": WORKSPACE_RESUME_DIR_ENV, "value": RESULT_DIR})


def _add_git_source(git: GitSource, parts: _PodParts) -> None:
    """The remote to clone (both sidecars) and to push to (the kernel, which alone holds
    the credential)."""
    parts.kernel_env.append({"name": WORKSPACE_GIT_URL_ENV, "value": git.url})
    parts.tools_env.append({"name": WORKSPACE_GIT_URL_ENV, "value": git.url})
    if git.ref:
        parts.kernel_env.append({"name": WORKSPACE_GIT_REF_ENV, "value": git.ref})
        parts.tools_env.append({"name": WORKSPACE_GIT_REF_ENV, "value": git.ref})
    if git.push is not None:
        parts.kernel_env.append({"name": GIT_PUSH_BRANCH_ENV, "value": git.push.branch})
    if git.credentials_secret_ref is not None:
        parts.volumes.append(
            {
                "name": "git-credentials",
                "secret": {"secretName": git.credentials_secret_ref.name, "defaultMode": 0o440},
            }
        )
        parts.kernel_mounts.append(
            {"name": "git-credentials", "mountPath": GIT_CREDENTIALS_DIR, "readOnly": True}
        )
        parts.kernel_env.append({"name": GIT_CREDENTIALS_DIR_ENV, "value": GIT_CREDENTIALS_DIR})


def _add_handoff_inputs(handoff: list[HandoffEntry], session: str, parts: _PodParts) -> None:
    """The dependencies' result bundles, for tools to merge into the work tree."""
    inputs = []
    for i, entry in enumerate(handoff):
        if entry.commit is None or entry.commit == entry.base:
            continue  # nothing beyond the base to merge
        volume = f"input-{i}"
        dependency = agent_object_name(session, entry.agent)
        parts.volumes.append(
            {
                "name": volume,
                "configMap": {"name": result_configmap_name(dependency), "optional": True},
            }
        )
        mount = f"{INPUTS_DIR}/{entry.agent}"
        parts.tools_mounts.append({"name": volume, "mountPath": mount, "readOnly": True})
        inputs.append({"agent": entry.agent, "commit": entry.commit, "dir": mount})
    if inputs:
        parts.tools_env.append({"name": WORKSPACE_INPUTS_ENV, "value": json.dumps(inputs)})


def _pod_labels(agent: Agent, name: str, attempt: int) -> dict[str, str]:
    """The Agent's, its attempt's, and the session and workstream the Agent is labelled with."""
    labels = {LABEL_AGENT: name, LABEL_ATTEMPT: str(attempt), LABEL_MANAGED_BY: MANAGED_BY}
    own = agent.metadata.labels or {}
    for key in (LABEL_SESSION, LABEL_WORKSTREAM):
        if key in own:
            labels[key] = own[key]
    return labels


def _pod_spec(
    agent: Agent, name: str, config: PodConfig, common_env: list[JSON], parts: _PodParts
) -> JSON:
    spec = agent.spec
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
        "initContainers": [_kernel_container(config, parts), _tools_container(spec, config, parts)],
        "containers": [_agent_container(spec, config, common_env)],
        "volumes": parts.volumes,
    }
    if spec.timeout_seconds:
        pod_spec["activeDeadlineSeconds"] = spec.timeout_seconds
    template = spec.pod_template
    if template is not None:
        if template.node_selector:
            pod_spec["nodeSelector"] = template.node_selector
        if template.tolerations:
            pod_spec["tolerations"] = [t.wire() for t in template.tolerations]
        if template.image_pull_secrets:
            pod_spec["imagePullSecrets"] = [r.wire() for r in template.image_pull_secrets]
        if template.runtime_class_name:
            pod_spec["runtimeClassName"] = template.runtime_class_name
    return pod_spec


def _kernel_container(config: PodConfig, parts: _PodParts) -> JSON:
    """The kernel, a native sidecar started first."""
    return {
        "name": KERNEL_CONTAINER,
        "image": config.image,
        "args": [KERNEL_CONTAINER],
        "restartPolicy": "Always",
        "env": parts.kernel_env,
        "ports": [{"name": "metrics", "containerPort": config.metrics_port}],
        # Exec, not httpGet: the kubelet probes the pod IP, and the kernel's API
        # listens on loopback only. Its timeout leaves the probe's own 2 s to answer.
        "startupProbe": {
            "exec": {"command": [*ENTRYPOINT, KERNEL_CONTAINER, PROBE_FLAG]},
            "periodSeconds": 1,
            "timeoutSeconds": 3,
            "failureThreshold": 120,
        },
        "volumeMounts": parts.kernel_mounts,
        "securityContext": _security(KERNEL_UID),
        "resources": {
            "requests": {"cpu": "50m", "memory": "64Mi"},
            "limits": {"memory": "256Mi"},
        },
    }


def _tools_container(spec: AgentSpec, config: PodConfig, parts: _PodParts) -> JSON:
    """The tools server, a native sidecar started second: the one with the workspace."""
    return {
        "name": TOOLS_CONTAINER,
        "image": spec.tools_image or config.image,
        "args": [TOOLS_CONTAINER],
        "restartPolicy": "Always",
        "env": parts.tools_env,
        "startupProbe": {
            "exec": {"command": [*ENTRYPOINT, TOOLS_CONTAINER, PROBE_FLAG]},
            "periodSeconds": 1,
            "timeoutSeconds": 3,  # the probe's own connect timeout is 2 s
            "failureThreshold": 300,
        },
        "volumeMounts": parts.tools_mounts,
        "securityContext": _security(TOOLS_UID),
        "resources": {
            "requests": {"cpu": "50m", "memory": "32Mi"},
            "limits": {"memory": "512Mi"},
        },
    }


def _agent_container(spec: AgentSpec, config: PodConfig, common_env: list[JSON]) -> JSON:
    """The agent, the main container: no token, no key, no workspace."""
    return {
        "name": AGENT_CONTAINER,
        "image": spec.image or config.image,
        "args": [AGENT_CONTAINER],
        "env": common_env,
        "volumeMounts": [{"name": "agent-tmp", "mountPath": "/tmp"}],
        "securityContext": _security(AGENT_UID),
        "resources": spec.resources.wire()
        if spec.resources
        else {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
    }


def is_recording(agent: Agent) -> bool:
    """Record mode (`llm.record`): the kernel writes its turns to a ConfigMap."""
    llm = agent.spec.llm
    return bool(llm is not None and llm.record and llm.provider != Provider.REPLAY)


def _agent_metadata(agent: Agent, name: str, annotations: dict[str, str] | None = None) -> JSON:
    """Metadata of an object made for the Agent alone: labelled with it, owned by it."""
    return {
        "name": name,
        "namespace": namespace_of(agent),
        "labels": {LABEL_AGENT: name_of(agent), LABEL_MANAGED_BY: MANAGED_BY},
        **({} if annotations is None else {"annotations": annotations}),
        "ownerReferences": [owner_reference(agent)],
    }


def build_agent_configmap(agent: Agent, name: str) -> JSON:
    """An empty ConfigMap the Agent's kernel writes and no one else: its result
    (`result_configmap_name`: a git bundle and its commit) or, in record mode, its
    recording (`recording_configmap_name`: key `<name>.json`, as `provider: replay` reads
    it). Owned by the Agent; its Role names these two ConfigMaps and no other."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _agent_metadata(agent, name),
        "data": {},
    }


def build_service_account(agent: Agent) -> JSON:
    """The pod's identity, with the annotations `podTemplate.serviceAccount` asks for
    (cloud workload identity)."""
    template = agent.spec.pod_template
    annotations: dict[str, str] = {}
    if template and template.service_account and template.service_account.annotations:
        annotations = dict(template.service_account.annotations)
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _agent_metadata(agent, name_of(agent), annotations),
        "automountServiceAccountToken": False,
    }


def build_role(agent: Agent) -> JSON:
    """`get` and `patch` on this one Agent's status, its result ConfigMap and its recording
    ConfigMap, nothing else. The recording's name is there even when the Agent does not
    record: `llm.record` may be turned on later, and the Role is made once, with the first
    pod. Its kernel touches that ConfigMap only in record mode, after the operator has
    created it or found it owned by the Agent (a foreign one is refused)."""
    name = name_of(agent)
    configmaps = [result_configmap_name(name), recording_configmap_name(name)]
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _agent_metadata(agent, name),
        "rules": [
            {
                "apiGroups": [API_GROUP],
                "resources": [f"{AGENT_PLURAL}/status"],
                "resourceNames": [name],
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


def build_role_binding(agent: Agent) -> JSON:
    """The Role, to the Agent's ServiceAccount."""
    name = name_of(agent)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _agent_metadata(agent, name),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace_of(agent)}],
    }
