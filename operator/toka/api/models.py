"""The `toka.dev/v1alpha1` API: AgentSession and Agent, spec and status.

These models are the API. `toka crds` generates `crds/*.yaml` from them, so
each field's description, bounds and CEL rules live here and nowhere else.
Spec is intent; status is observation, and the Agent's status has two owners
with disjoint fields: the kernel writes `status.run` (whole, by merge patch),
the operator writes everything else.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from toka.api.base import (
    DNS_LABEL_PATTERN,
    DNS_SUBDOMAIN_PATTERN,
    MAX_AGENTS,
    MAX_CAPABILITIES,
    MAX_CONDITIONS,
    MAX_DEPENDS_ON,
    MAX_DESCRIPTION,
    MAX_MESSAGE,
    MAX_NAME,
    MAX_SUMMARY,
    MAX_TASKS,
    KubeModel,
    k8s,
)
from toka.api.capabilities import (
    CAPABILITY_PATTERN,
    MAX_CAPABILITY_LENGTH,
    MAX_TOOL_NAME,
    TOOL_NAME_PATTERN,
)
from toka.api.conditions import Condition
from toka.contract import (
    AGENT_KIND,
    GROUP_VERSION,
    MAX_FOLLOW_UPS,
    MAX_SPAWN_REQUESTS,
    SESSION_KIND,
)

DnsLabel = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_NAME, pattern=DNS_LABEL_PATTERN)
]
ObjectName = Annotated[
    str, StringConstraints(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
]
CapabilityString = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_CAPABILITY_LENGTH, pattern=CAPABILITY_PATTERN),
]
# Temperature is a string: the API has no floats. 0 to 2 with up to 3 decimals.
Temperature = Annotated[
    str,
    StringConstraints(max_length=5, pattern=r"^(0(\.[0-9]{1,3})?|1(\.[0-9]{1,3})?|2(\.0{1,3})?)$"),
]
Quantity = Annotated[
    str, StringConstraints(max_length=32, pattern=r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$")
]
Image = Annotated[str, StringConstraints(min_length=1, max_length=512, pattern=r"^\S+$")]
Timestamp = datetime
ShortText = Annotated[str, StringConstraints(max_length=MAX_MESSAGE)]
Summary = Annotated[str, StringConstraints(max_length=MAX_SUMMARY)]


class Provider(StrEnum):
    ANTHROPIC = "anthropic"
    OPENAI = "openai"
    OPENAI_COMPATIBLE = "openai-compatible"
    REPLAY = "replay"


class Domain(StrEnum):
    INFRASTRUCTURE = "infrastructure"
    SECURITY = "security"
    QUALITY_ASSURANCE = "quality-assurance"
    STORAGE = "storage"
    DOCUMENTATION = "documentation"
    DEMONSTRATION = "demonstration"
    DEFAULT = "default"


class FailurePolicy(StrEnum):
    CONTINUE = "Continue"
    FAIL_FAST = "FailFast"


class SessionPhase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


class AgentPhase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


class MemberPhase(StrEnum):
    """An agent as the session sees it: `Waiting` and `Skipped` have no Agent object."""

    WAITING = "Waiting"
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SKIPPED = "Skipped"
    SUSPENDED = "Suspended"


class SandboxMode(StrEnum):
    ENFORCED = "Enforced"
    BEST_EFFORT = "BestEffort"


class TaskState(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SKIPPED = "Skipped"


# --- references -----------------------------------------------------------------


class SecretKeyRef(KubeModel):
    """A key of a Secret in the same namespace."""

    name: ObjectName = Field(description="Name of the Secret, in the object's namespace.")
    key: Annotated[str, StringConstraints(min_length=1, max_length=253)] = Field(
        description="Key within the Secret."
    )


class ConfigMapKeyRef(KubeModel):
    """A key of a ConfigMap in the same namespace."""

    name: ObjectName = Field(description="Name of the ConfigMap, in the object's namespace.")
    key: Annotated[str, StringConstraints(min_length=1, max_length=253)] | None = Field(
        default=None,
        description="Key within the ConfigMap. For a session's replay recording, defaults to "
        "`<agent name>.json`, one recording per agent.",
    )


class ReplaySpec(KubeModel):
    """Where the `replay` provider reads its recording."""

    config_map_ref: ConfigMapKeyRef = Field(
        description="ConfigMap holding the recording (turns keyed by agent, task and turn)."
    )


# --- LLM ------------------------------------------------------------------------


# Sent as HTTP header values: visible ASCII without spaces, so no header can be forged.
OPENAI_ID_PATTERN = r"^[A-Za-z0-9_.:-]+$"
OpenAIIdentifier = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=OPENAI_ID_PATTERN)
]


class LLMSpec(KubeModel):
    """LLM settings. On a session, the default for every agent; on an agent, an override."""

    model_config = KubeModel.model_config | {
        "json_schema_extra": k8s(
            rules=[
                (
                    "!has(self.provider) || self.provider != 'openai-compatible' "
                    "|| has(self.baseURL)",
                    "baseURL is required when provider is openai-compatible",
                    ".baseURL",
                ),
                (
                    "!has(self.provider) || self.provider != 'replay' || has(self.replay)",
                    "replay.configMapRef is required when provider is replay",
                    ".replay",
                ),
                (
                    "!has(self.record) || !self.record || !has(self.provider) "
                    "|| self.provider != 'replay'",
                    "record needs a real provider: replay has nothing to record",
                    ".record",
                ),
            ]
        )
    }

    provider: Provider | None = Field(
        default=None,
        description="LLM provider: anthropic, openai, openai-compatible (Ollama, vLLM, "
        "llama.cpp server) or replay (recorded turns). Unset: picked from the key present.",
    )
    model: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = Field(
        default=None, description="Model name, e.g. claude-sonnet-4-5 or gpt-4o."
    )
    base_url: (
        Annotated[str, StringConstraints(max_length=2048, pattern=r"^https?://\S+$")] | None
    ) = Field(default=None, description="Base URL of an OpenAI-compatible server.")
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding the provider's API key. Mounted into the kernel "
        "container only; the agent never sees it.",
    )
    replay: ReplaySpec | None = Field(
        default=None, description="Recording used by the replay provider."
    )
    max_tokens: int | None = Field(
        default=None, ge=1, le=1_000_000, description="Maximum output tokens per LLM call."
    )
    temperature: Temperature | None = Field(
        default=None,
        description='Sampling temperature as a string from "0" to "2", e.g. "0.3" '
        "(the API has no floats).",
    )
    timeout_seconds: int | None = Field(
        default=None, ge=1, le=3600, description="Timeout of one LLM call, in seconds."
    )
    organization: OpenAIIdentifier | None = Field(
        default=None,
        description="OpenAI organization ID (e.g. org-…), sent as the OpenAI-Organization "
        "header by the openai and openai-compatible providers. An identifier, not a secret. "
        "Unset: the kernel's OPENAI_ORG_ID, if any.",
    )
    project: OpenAIIdentifier | None = Field(
        default=None,
        description="OpenAI project ID (e.g. proj_…), sent as the OpenAI-Project header by "
        "the openai and openai-compatible providers. An identifier, not a secret. Unset: the "
        "kernel's OPENAI_PROJECT_ID, if any.",
    )
    record: bool | None = Field(
        default=None,
        description="Record mode: the kernel calls the real provider and writes every turn "
        "(answer and token usage, never a key) to the Agent's ConfigMap <agent>.recording, "
        "key <name>.json, for provider replay to use later. `toka record` sets it.",
    )


# --- workspace, limits, pod template -------------------------------------------------


class LocalObjectReference(KubeModel):
    name: ObjectName = Field(description="Name of the object in the same namespace.")


class GitPush(KubeModel):
    """Where results are pushed: refs under one branch prefix, created and never moved."""

    branch: Annotated[
        str,
        StringConstraints(
            min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._{}-]+(/[A-Za-z0-9._{}-]+)*$"
        ),
    ] = Field(
        default="toka/{session}",
        description="Branch prefix; `{session}` is the session's name. Each agent's result goes "
        "to <branch>/agents/<agent>, the session's to <branch>/result, and a result too large "
        "for a ConfigMap to <branch>/work/<agent>/<task> after each task. Refs are only created: "
        "an existing one is never moved, deleted or force-pushed, and the base branch is never "
        "written.",
    )


class GitSource(KubeModel):
    """A git repository: the base of every agent's workspace, cloned through the kernel."""

    model_config = KubeModel.model_config | {
        "json_schema_extra": k8s(
            rules=[
                (
                    "!self.url.matches('^[a-z]+://[^/]*@')",
                    "url must not hold credentials (user:password@); put them in a Secret "
                    "named by credentialsSecretRef",
                    ".url",
                )
            ]
        )
    }

    url: Annotated[
        str, StringConstraints(min_length=1, max_length=2048, pattern=r"^https?://[^\s/]+\S*$")
    ] = Field(description="Repository URL (http:// or https://), without credentials.")
    ref: Annotated[str, StringConstraints(max_length=256)] | None = Field(
        default=None, description="Branch, tag or commit to check out. Default: the remote HEAD."
    )
    credentials_secret_ref: LocalObjectReference | None = Field(
        default=None,
        description="Secret with `username` and `password` (or `token`) keys for a private "
        "repository. Mounted into the kernel only: the tools and agent containers never see it.",
    )
    push: GitPush | None = Field(
        default=None,
        description="Push each agent's result and the session's result to this repository.",
    )


MAX_MCP_SERVERS = 16
MAX_MCP_TOOLS = 64
McpToolName = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_TOOL_NAME, pattern=TOOL_NAME_PATTERN)
]


class McpServer(KubeModel):
    """An MCP server the agent's kernel connects to over streamable HTTP.

    The kernel is the MCP client: it lists the server's tools, offers the agent
    those its `mcp:<server>:<tool-glob>` capabilities grant, and checks and
    audits every call. The headers Secret is mounted into the kernel only.
    """

    model_config = KubeModel.model_config | {
        "json_schema_extra": k8s(
            rules=[
                (
                    "!self.url.matches('^[a-z]+://[^/]*@')",
                    "url must not hold credentials (user:password@); put them in a Secret "
                    "named by headersSecretRef",
                    ".url",
                )
            ]
        )
    }

    name: DnsLabel = Field(
        description="Server name (DNS label), unique within the list; capabilities name it as "
        "mcp:<name>:<tool-glob>."
    )
    url: Annotated[
        str, StringConstraints(min_length=1, max_length=2048, pattern=r"^https?://[^\s/]+\S*$")
    ] = Field(
        description="URL of the server's streamable-HTTP MCP endpoint (http:// or https://), "
        "without credentials. The agent pods need an egress NetworkPolicy entry to reach it."
    )
    headers_secret_ref: LocalObjectReference | None = Field(
        default=None,
        description="Secret whose every key is an HTTP header name sent to the server, its "
        "value the header's value (e.g. key Authorization, value `Bearer <token>`). Mounted "
        "into the kernel container only: the tools and agent containers never see it.",
    )


McpServers = Annotated[
    list[McpServer],
    Field(max_length=MAX_MCP_SERVERS, json_schema_extra=k8s(list_type="map", map_keys=["name"])),
]


class PVCSource(KubeModel):
    claim_name: ObjectName = Field(
        description="PersistentVolumeClaim mounted as /workspace; must be ReadWriteMany when "
        "agents run in parallel."
    )


class WorkspaceSpec(KubeModel):
    """What the agents' /workspace starts with. At most one source."""

    model_config = KubeModel.model_config | {
        "json_schema_extra": k8s(
            rules=[
                (
                    "(has(self.configMap) ? 1 : 0) + (has(self.git) ? 1 : 0) + "
                    "(has(self.persistentVolumeClaim) ? 1 : 0) <= 1",
                    "at most one of configMap, git and persistentVolumeClaim may be set",
                )
            ]
        )
    }

    config_map: ObjectName | None = Field(
        default=None, description="ConfigMap whose keys are copied into /workspace as files."
    )
    git: GitSource | None = Field(default=None, description="Git repository to clone.")
    persistent_volume_claim: PVCSource | None = Field(
        default=None, description="Use a PersistentVolumeClaim instead of an emptyDir."
    )
    size_limit: Quantity | None = Field(
        default=None, description="Size limit of the workspace emptyDir, e.g. 1Gi (default 1Gi)."
    )


class SessionLimits(KubeModel):
    """Limits shared by all agents of a session."""

    requests_per_minute: int = Field(
        default=60,
        ge=1,
        le=100_000,
        description="LLM requests per minute shared by the session's running agents; each "
        "agent's share is in its status.limits.",
    )
    max_total_tokens: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000_000,
        description="Token budget of the whole session (input + output). When spent, no new "
        "LLM calls are made and the session reports BudgetExceeded.",
    )
    max_parallel_agents: int | None = Field(
        default=None, ge=1, le=MAX_AGENTS, description="At most this many agents run at once."
    )
    active_deadline_seconds: int | None = Field(
        default=None,
        ge=1,
        le=31_536_000,
        description="The session fails with DeadlineExceeded after this many seconds running.",
    )


class Toleration(KubeModel):
    key: Annotated[str, StringConstraints(max_length=253)] | None = Field(
        default=None, description="Taint key the toleration applies to."
    )
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Exists or Equal (default Equal)."
    )
    value: Annotated[str, StringConstraints(max_length=253)] | None = Field(
        default=None, description="Taint value the toleration matches."
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None, ge=0, description="How long a NoExecute taint is tolerated."
    )


class ServiceAccountTemplate(KubeModel):
    annotations: dict[str, Annotated[str, StringConstraints(max_length=4096)]] | None = Field(
        default=None,
        max_length=32,
        description="Annotations for each agent's ServiceAccount (e.g. workload identity).",
    )


class PodTemplate(KubeModel):
    """Scheduling and runtime settings applied to every agent pod."""

    node_selector: dict[str, Annotated[str, StringConstraints(max_length=63)]] | None = Field(
        default=None, max_length=32, description="Node labels the agent pods must match."
    )
    tolerations: list[Toleration] | None = Field(
        default=None, max_length=32, description="Tolerations of the agent pods."
    )
    image_pull_secrets: list[LocalObjectReference] | None = Field(
        default=None, max_length=16, description="Secrets used to pull the images."
    )
    runtime_class_name: DnsLabel | None = Field(
        default=None, description="RuntimeClass for stronger isolation (gVisor, Kata)."
    )
    service_account: ServiceAccountTemplate | None = Field(
        default=None, description="Settings of each agent's ServiceAccount."
    )


class ResourceRequirements(KubeModel):
    requests: dict[Literal["cpu", "memory"], Quantity] | None = Field(
        default=None, description="Requested cpu and memory of the agent container."
    )
    limits: dict[Literal["cpu", "memory"], Quantity] | None = Field(
        default=None, description="cpu and memory limits of the agent container."
    )


# --- agents and tasks -----------------------------------------------------------------


class TaskSpec(KubeModel):
    name: DnsLabel = Field(description="Task name, unique within the agent (DNS label).")
    description: Annotated[str, StringConstraints(min_length=1, max_length=MAX_DESCRIPTION)] = (
        Field(description="What the agent is asked to do (at most 4 KiB).")
    )


def _names_server(owner: str) -> str:
    """CEL: capability `c` is not an mcp: one, or names a server of `owner.mcpServers`."""
    return (
        f"(!c.startsWith('mcp:') || has({owner}.mcpServers) && "
        f"{owner}.mcpServers.exists(s, c.startsWith('mcp:' + s.name + ':')))"
    )


_UNKNOWN_SERVER = (
    "every mcp:<server>:<tool-glob> capability must name a server of mcpServers "
    "(the agent's own, or in a session also the session's)"
)


class AgentTemplate(KubeModel):
    """An agent as written in a session, and the spec of an Agent."""

    model_config = KubeModel.model_config | {
        "json_schema_extra": k8s(
            rules=[
                (
                    "!has(self.dependsOn) || !(self.name in self.dependsOn)",
                    "an agent cannot depend on itself",
                    ".dependsOn",
                )
            ]
        )
    }

    name: DnsLabel = Field(description="Agent name, unique within the session (DNS label).")
    domain: Domain = Field(
        default=Domain.DEFAULT,
        description="Prompt template: infrastructure, security, quality-assurance, storage, "
        "documentation, demonstration or default.",
    )
    priority: int = Field(
        default=0,
        ge=-1000,
        le=1000,
        description="Among agents ready to start, higher priority starts first.",
    )
    depends_on: list[DnsLabel] | None = Field(
        default=None,
        max_length=MAX_DEPENDS_ON,
        description="Agents that must succeed before this one starts.",
        json_schema_extra=k8s(list_type="set"),
    )
    capabilities: list[CapabilityString] | None = Field(
        default=None,
        max_length=MAX_CAPABILITIES,
        description="What the agent may do through its kernel; everything else is denied. "
        "Grammar: llm:complete, fs:read:<glob>, fs:write:<glob>, shell:exec:<program>, "
        "net:http:<host>, agent:spawn, mcp:<server>:<tool-glob>.",
        json_schema_extra=k8s(list_type="set"),
    )
    mcp_servers: McpServers | None = Field(
        default=None,
        description="MCP servers whose tools the kernel offers the agent, as far as its "
        "mcp:<server>:<tool-glob> capabilities grant. In a session, added to the session's "
        "mcpServers; an entry here wins over the session's of the same name.",
    )
    tasks: list[TaskSpec] = Field(
        min_length=1,
        max_length=MAX_TASKS,
        description="Tasks, run in order.",
        json_schema_extra=k8s(list_type="map", map_keys=["name"]),
    )
    llm: LLMSpec | None = Field(default=None, description="Overrides the session's llm.")
    resources: ResourceRequirements | None = Field(
        default=None, description="Resources of the agent container."
    )
    image: Image | None = Field(
        default=None, description="Bring-your-own agent image for the agent container."
    )
    tools_image: Image | None = Field(
        default=None,
        description="Image of the tools sidecar, derived from Toka's with more programs "
        "(e.g. cargo).",
    )
    sandbox: SandboxMode = Field(
        default=SandboxMode.ENFORCED,
        description="How programs run by shell:exec are confined. Enforced: under a Landlock "
        "ruleset built from the fs: grants (no TCP, no file outside them); where the node's "
        "kernel has no Landlock, shell:exec is refused. BestEffort: Landlock where available, "
        "otherwise the programs run unconfined (the kernel's checks on argv[0] only).",
    )
    backoff_limit: int = Field(
        default=2,
        ge=0,
        le=10,
        description="Retries after a failed attempt; each attempt is a new pod.",
    )
    timeout_seconds: int | None = Field(
        default=None,
        ge=1,
        le=604_800,
        description="Deadline of one attempt (the pod's activeDeadlineSeconds).",
    )


class AgentSessionSpec(KubeModel):
    model_config = KubeModel.model_config | {
        "json_schema_extra": k8s(
            rules=[
                (
                    "self.agents.all(a, !has(a.capabilities) || a.capabilities.all(c, "
                    f"{_names_server('a')} || {_names_server('self')}))",
                    _UNKNOWN_SERVER,
                    ".agents",
                ),
                (
                    # Each Agent gets the union, and an Agent holds at most this many.
                    "!has(self.mcpServers) || self.agents.all(a, !has(a.mcpServers) || "
                    "size(self.mcpServers) + size(a.mcpServers.filter(s, "
                    f"!(s.name in self.mcpServers.map(t, t.name)))) <= {MAX_MCP_SERVERS})",
                    f"an agent's mcpServers and the session's together may name at most "
                    f"{MAX_MCP_SERVERS} servers",
                    ".agents",
                ),
            ]
        )
    }

    workstream: DnsLabel | None = Field(
        default=None, description="Grouping label, copied to the Agents and their labels."
    )
    llm: LLMSpec | None = Field(default=None, description="LLM defaults for every agent.")
    workspace: WorkspaceSpec | None = Field(
        default=None, description="What /workspace starts with."
    )
    mcp_servers: McpServers | None = Field(
        default=None,
        description="MCP servers for every agent of the session; an agent's own entry of the "
        "same name wins. An agent is offered a server's tools only as far as its "
        "mcp:<server>:<tool-glob> capabilities grant.",
    )
    limits: SessionLimits = Field(
        default_factory=SessionLimits,
        description="Rate limit, budget, parallelism, deadline.",
        json_schema_extra={"default": {}},
    )
    failure_policy: FailurePolicy = Field(
        default=FailurePolicy.CONTINUE,
        description="Continue: run every agent whose dependencies succeeded (dependents of a "
        "failed agent are Skipped). FailFast: stop everything at the first failure.",
    )
    suspend: bool = Field(
        default=False,
        description="No new agents start and running pods are deleted; on resume each agent "
        "continues after its last completed task.",
    )
    pod_template: PodTemplate | None = Field(
        default=None, description="Settings applied to every agent pod."
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        le=31_536_000,
        description="Delete the agents' pods this many seconds after the session finished.",
    )
    agents: list[AgentTemplate] = Field(
        min_length=1,
        max_length=MAX_AGENTS,
        description="The agents of the session.",
        json_schema_extra=k8s(
            list_type="map",
            map_keys=["name"],
            rules=[
                (
                    # `d in self.map(...)` is the form whose estimated cost fits the budget.
                    "self.all(a, !has(a.dependsOn) || "
                    "a.dependsOn.all(d, d in self.map(b, b.name)))",
                    "every dependsOn entry must name an agent of this session",
                )
            ],
        ),
    )


# --- status ---------------------------------------------------------------------------


class Usage(KubeModel):
    requests: int = Field(default=0, ge=0, description="LLM calls made.")
    input_tokens: int = Field(default=0, ge=0, description="Input (prompt) tokens used.")
    output_tokens: int = Field(default=0, ge=0, description="Output (completion) tokens used.")

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            requests=self.requests + other.requests,
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
        )


class AgentCounts(KubeModel):
    total: int = Field(default=0, ge=0, description="Agents in the session.")
    pending: int = Field(default=0, ge=0, description="Waiting for dependencies or a slot.")
    running: int = Field(default=0, ge=0, description="Agents with a live pod.")
    succeeded: int = Field(default=0, ge=0, description="Agents that completed.")
    failed: int = Field(default=0, ge=0, description="Agents that failed.")
    skipped: int = Field(default=0, ge=0, description="Agents skipped after a dependency failed.")


class Member(KubeModel):
    name: DnsLabel = Field(description="Agent name within the session.")
    phase: MemberPhase = Field(description="Where the agent is.")
    progress: Annotated[str, StringConstraints(max_length=16)] | None = Field(
        default=None, description='Tasks done out of total, "done/total".'
    )
    agent: ObjectName | None = Field(default=None, description="Name of the Agent object.")
    result: ResultCommit | None = Field(default=None, description="The agent's result commit.")


class SessionResult(KubeModel):
    commit: CommitId = Field(
        description="The session's result: the merge of the results of the agents nothing "
        "depends on."
    )
    base: CommitId = Field(description="The base commit every agent started from.")
    config_map: ObjectName | None = Field(
        default=None, description="ConfigMap holding it as a git bundle (see `toka export`)."
    )
    pushed_ref: Annotated[str, StringConstraints(max_length=256)] | None = Field(
        default=None, description="The ref it was pushed to, if a push is configured."
    )
    files_changed: int = Field(default=0, ge=0, description="Files changed since the base.")
    insertions: int = Field(default=0, ge=0, description="Lines added since the base.")
    deletions: int = Field(default=0, ge=0, description="Lines removed since the base.")


class Budget(KubeModel):
    limit_tokens: int | None = Field(default=None, ge=0, description="spec.limits.maxTotalTokens.")
    used_tokens: int = Field(default=0, ge=0, description="Tokens used so far by all agents.")
    remaining_tokens: int | None = Field(default=None, ge=0, description="What is left.")


Conditions = Annotated[
    list[Condition],
    Field(
        max_length=MAX_CONDITIONS,
        json_schema_extra=k8s(list_type="map", map_keys=["type"]),
    ),
]


class AgentSessionStatus(KubeModel):
    observed_generation: int | None = Field(
        default=None, ge=0, description="Generation of the spec this status describes."
    )
    phase: SessionPhase | None = Field(
        default=None, description="Summary for humans; conditions are the contract."
    )
    progress: Annotated[str, StringConstraints(max_length=16)] | None = Field(
        default=None, description='Tasks done out of total across agents, "done/total".'
    )
    agents: AgentCounts | None = Field(default=None, description="Agents by phase.")
    members: list[Member] | None = Field(
        default=None,
        max_length=MAX_AGENTS,
        description="Each agent's phase and progress.",
        json_schema_extra=k8s(list_type="map", map_keys=["name"]),
    )
    usage: Usage | None = Field(default=None, description="LLM usage summed over agents.")
    budget: Budget | None = Field(default=None, description="Token budget and what is left.")
    start_time: Timestamp | None = Field(default=None, description="When the first agent started.")
    completion_time: Timestamp | None = Field(default=None, description="When the session ended.")
    message: ShortText | None = Field(default=None, description="Human-readable summary.")
    result: SessionResult | None = Field(
        default=None, description="The session's result, once it succeeded."
    )
    conditions: Conditions | None = Field(
        default=None,
        description="Ready, Progressing, Succeeded, Failed, BudgetExceeded, DeadlineExceeded, "
        "ResultReady.",
    )


CommitId = Annotated[
    str, StringConstraints(max_length=64, pattern=r"^[0-9a-f]{40}([0-9a-f]{24})?$")
]


class HandoffEntry(KubeModel):
    agent: DnsLabel = Field(description="The dependency that produced this summary.")
    summary: Summary = Field(description="Its task summaries, joined (at most 1 KiB).")
    commit: CommitId | None = Field(
        default=None,
        description="The dependency's result commit, merged into this agent's workspace.",
    )
    base: CommitId | None = Field(
        default=None, description="The base commit the dependency started from."
    )


class SessionRef(KubeModel):
    name: DnsLabel = Field(description="Name of the owning AgentSession.")


class AgentLimits(KubeModel):
    requests_per_minute: int | None = Field(
        default=None, ge=0, description="This agent's current share of the session's rate."
    )
    max_tokens: int | None = Field(
        default=None,
        ge=0,
        description="Total tokens this agent may use: its usage so far plus its share of what "
        "the session has left. The kernel stops LLM calls at this number.",
    )


class AgentSpec(AgentTemplate):
    """An Agent: the template fields plus what the operator resolves from its session."""

    model_config = AgentTemplate.model_config | {
        "json_schema_extra": k8s(
            rules=[
                (
                    "!has(self.dependsOn) || !has(self.name) || !(self.name in self.dependsOn)",
                    "an agent cannot depend on itself",
                    ".dependsOn",
                ),
                (
                    f"!has(self.capabilities) || self.capabilities.all(c, {_names_server('self')})",
                    _UNKNOWN_SERVER,
                    ".capabilities",
                ),
            ]
        )
    }

    name: DnsLabel | None = Field(  # type: ignore[assignment]
        default=None,
        description="Agent name within its session; defaults to metadata.name for a "
        "standalone Agent.",
    )
    session_ref: SessionRef | None = Field(
        default=None, description="The AgentSession this Agent belongs to; unset when standalone."
    )
    workstream: DnsLabel | None = Field(default=None, description="Copied from the session.")
    handoff: list[HandoffEntry] | None = Field(
        default=None,
        max_length=MAX_DEPENDS_ON,
        description="Summaries of the dependencies' tasks, copied in by the operator.",
        json_schema_extra=k8s(list_type="map", map_keys=["agent"]),
    )
    workspace: WorkspaceSpec | None = Field(
        default=None, description="What /workspace starts with (from the session)."
    )
    pod_template: PodTemplate | None = Field(
        default=None, description="Pod settings (from the session)."
    )
    suspend: bool = Field(
        default=False,
        description="Delete the running pod and start none; on resume a new pod continues "
        "after the last completed task. Set by the session (suspend, FailFast, deadline) or "
        "by a user on a standalone Agent.",
    )
    limits: AgentLimits | None = Field(
        default=None,
        description="Rate and token budget of an Agent outside a session (standalone or "
        "spawned). In a session the operator sets status.limits from the session's limits.",
    )


class TaskStatus(KubeModel):
    name: Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME)] = Field(
        description="Task name."
    )
    state: TaskState = Field(description="Pending, Running, Succeeded, Failed or Skipped.")
    attempts: int = Field(default=0, ge=0, le=1000, description="Times the task was started.")
    started_at: Timestamp | None = Field(default=None, description="Start of the last attempt.")
    finished_at: Timestamp | None = Field(default=None, description="End of the last attempt.")
    summary: Summary | None = Field(default=None, description="Result summary (at most 1 KiB).")
    error: ShortText | None = Field(default=None, description="Why the task failed.")
    description: ShortText | None = Field(
        default=None,
        description="For a follow-up the agent scheduled itself (not in spec.tasks): what to do.",
    )


class Observation(KubeModel):
    time: Timestamp = Field(description="When the agent emitted it.")
    message: ShortText = Field(description="The observation, truncated to 1 KiB.")


class Denials(KubeModel):
    count: int = Field(default=0, ge=0, description="Requests the kernel denied.")
    last: ShortText | None = Field(default=None, description="The most recent denial.")


class SpawnRequest(KubeModel):
    id: Annotated[str, StringConstraints(min_length=1, max_length=64)] = Field(
        description="Request id, unique within the agent."
    )
    name: DnsLabel = Field(description="Name asked for the child agent.")
    capabilities: list[CapabilityString] | None = Field(
        default=None,
        max_length=MAX_CAPABILITIES,
        description="Capabilities asked for the child; each must be covered by the parent's.",
        json_schema_extra=k8s(list_type="set"),
    )
    tasks: list[TaskSpec] = Field(
        min_length=1,
        max_length=16,
        description="The child's tasks.",
        json_schema_extra=k8s(list_type="map", map_keys=["name"]),
    )


class ResultCommit(KubeModel):
    commit: CommitId = Field(description="The result commit (the last task's, or the start).")
    parents: list[CommitId] | None = Field(
        default=None, max_length=MAX_DEPENDS_ON + 1, description="Parents of the result commit."
    )
    files_changed: int = Field(default=0, ge=0, description="Files changed since the base.")
    insertions: int = Field(default=0, ge=0, description="Lines added since the base.")
    deletions: int = Field(default=0, ge=0, description="Lines removed since the base.")


class WorkspaceState(StrEnum):
    READY = "Ready"
    FAILED = "Failed"


class WorkspaceStatus(KubeModel):
    """The agent's git work tree: where it started and what it made."""

    state: WorkspaceState = Field(description="Ready, or Failed (reason and message say why).")
    reason: Annotated[str, StringConstraints(max_length=64)] | None = Field(
        default=None,
        description="Why it failed: MergeConflict, GitAuthFailed, GitCloneFailed, "
        "ResultTooLarge, ResultMissing, PushFailed.",
    )
    message: ShortText | None = Field(default=None, description="Details, paths named.")
    base: CommitId | None = Field(default=None, description="The session's base commit.")
    start: CommitId | None = Field(
        default=None, description="The commit the agent started from: base and inputs merged."
    )
    merged: list[DnsLabel] | None = Field(
        default=None, max_length=MAX_DEPENDS_ON, description="Dependencies merged, in order."
    )
    result: ResultCommit | None = Field(default=None, description="The latest result.")
    bundle_bytes: int | None = Field(
        default=None, ge=0, description="Size of the result bundle in the result ConfigMap."
    )
    pushed_ref: Annotated[str, StringConstraints(max_length=256)] | None = Field(
        default=None, description="The ref the result was pushed to, if a push is configured."
    )


class SandboxLevel(StrEnum):
    LANDLOCK = "Landlock"
    UNCONFINED = "Unconfined"
    REFUSED = "Refused"


class SandboxStatus(KubeModel):
    level: SandboxLevel = Field(
        description="Landlock: programs run confined; Unconfined: no Landlock on this node "
        "and spec.sandbox is BestEffort; Refused: no Landlock, so shell:exec is refused."
    )
    landlock_abi: int = Field(
        default=0, ge=0, description="The node kernel's Landlock ABI (0: none)."
    )
    guarantees: list[Annotated[str, StringConstraints(max_length=32)]] | None = Field(
        default=None,
        max_length=16,
        description="What the ruleset enforces at this ABI: filesystem, truncate, tcp, "
        "deviceIoctl, signals, abstractUnixSockets.",
    )


Reason = Annotated[str, StringConstraints(max_length=64, pattern=r"^[A-Z][A-Za-z0-9]*$")]


# The reasons of status.run.mcpServers[] (the kernel's) and of the McpServersReady condition.
MCP_CONNECTED = "Connected"
MCP_CONNECTING = "Connecting"  # not listed yet
MCP_UNREACHABLE = "Unreachable"
MCP_UNAUTHORIZED = "Unauthorized"
MCP_PROTOCOL_ERROR = "ProtocolError"
MCP_TOOL_MISSING = "ToolMissing"
MCP_SERVER_ERROR = "ServerError"  # a JSON-RPC error answer: the call failed, the server is fine


class McpServerStatus(KubeModel):
    """One MCP server as the kernel found it."""

    name: DnsLabel = Field(description="The server's name in spec.mcpServers.")
    ready: bool = Field(description="Whether the kernel is connected and listed its tools.")
    reason: Reason | None = Field(
        default=None,
        description="Connected, or why not: Unreachable, Unauthorized, ProtocolError, ToolMissing.",
    )
    message: ShortText | None = Field(
        default=None, description="Details, without credentials or header values."
    )
    tools: list[McpToolName] | None = Field(
        default=None,
        max_length=MAX_MCP_TOOLS,
        description="The server's tools offered to the agent: the granted ones only.",
    )


class RunStatus(KubeModel):
    """Written only by the agent's kernel, whole, by merge patch."""

    progress: Annotated[str, StringConstraints(max_length=16)] | None = Field(
        default=None, description='Tasks done out of total, "done/total".'
    )
    percent: int | None = Field(default=None, ge=0, le=100, description="Progress, 0 to 100.")
    current_task: Annotated[str, StringConstraints(max_length=MAX_NAME)] | None = Field(
        default=None, description="Task being worked on."
    )
    tasks: list[TaskStatus] | None = Field(
        default=None,
        max_length=MAX_TASKS + MAX_FOLLOW_UPS,
        description="Each task's state, attempts and summary.",
        json_schema_extra=k8s(list_type="map", map_keys=["name"]),
    )
    usage: Usage | None = Field(default=None, description="LLM usage of this agent.")
    last_heartbeat_time: Timestamp | None = Field(
        default=None, description="Last time the kernel reported; the operator's Stalled uses it."
    )
    last_observation: Observation | None = Field(
        default=None, description="The agent's last observation."
    )
    denials: Denials | None = Field(default=None, description="Capability denials.")
    spawn_requests: list[SpawnRequest] | None = Field(
        default=None,
        max_length=MAX_SPAWN_REQUESTS,
        description="Sub-agents the agent asked for; answered in status.spawnResults.",
        json_schema_extra=k8s(list_type="map", map_keys=["id"]),
    )
    workspace: WorkspaceStatus | None = Field(
        default=None, description="The git work tree: start, result commit, failure reason."
    )
    sandbox: SandboxStatus | None = Field(
        default=None, description="How programs run by shell:exec are confined here."
    )
    mcp_servers: list[McpServerStatus] | None = Field(
        default=None,
        max_length=MAX_MCP_SERVERS,
        description="Each MCP server of spec.mcpServers: reachable or why not, and the tools "
        "offered; the operator's McpServersReady condition summarises it.",
        json_schema_extra=k8s(list_type="map", map_keys=["name"]),
    )
    truncated_bytes: int | None = Field(
        default=None,
        ge=0,
        description="Bytes cut from the texts above to keep each within its cap and "
        "status.run within 256 KiB (UTF-8); each cut text ends in "
        '"…[truncated N bytes]". Unset when nothing was cut.',
    )


class SpawnResult(KubeModel):
    id: Annotated[str, StringConstraints(min_length=1, max_length=64)] = Field(
        description="The spawn request answered."
    )
    agent: ObjectName | None = Field(default=None, description="Name of the child Agent.")
    accepted: bool = Field(description="Whether the child was created.")
    reason: ShortText | None = Field(default=None, description="Why it was refused.")
    max_tokens: int | None = Field(
        default=None,
        ge=0,
        description="Tokens carved out of this agent's budget for the child "
        "(subtracted from status.limits.maxTokens).",
    )


class AgentStatus(KubeModel):
    # -- operator-owned --
    observed_generation: int | None = Field(
        default=None, ge=0, description="Generation of the spec this status describes."
    )
    phase: AgentPhase | None = Field(
        default=None, description="Summary for humans; conditions are the contract."
    )
    conditions: Conditions | None = Field(
        default=None,
        description="PodScheduled, KernelReady, McpServersReady, Progressing, Stalled, "
        "Succeeded, Failed, SpawnRefused.",
    )
    limits: AgentLimits | None = Field(
        default=None, description="This agent's share of the session's limits."
    )
    pod_name: ObjectName | None = Field(default=None, description="The current attempt's pod.")
    attempts: int | None = Field(default=None, ge=0, description="Pods started so far.")
    spawn_results: list[SpawnResult] | None = Field(
        default=None,
        max_length=MAX_SPAWN_REQUESTS,
        description="Answers to status.run.spawnRequests.",
        json_schema_extra=k8s(list_type="map", map_keys=["id"]),
    )
    start_time: Timestamp | None = Field(default=None, description="When the first pod started.")
    completion_time: Timestamp | None = Field(default=None, description="When the agent ended.")
    message: ShortText | None = Field(default=None, description="Human-readable summary.")
    # -- kernel-owned --
    run: RunStatus | None = Field(
        default=None, description="Progress written by the agent's kernel (never the operator)."
    )


# --- the objects ------------------------------------------------------------------------


class OwnerReference(KubeModel):
    api_version: str = ""
    kind: str = ""
    name: str = ""
    uid: str = ""
    controller: bool | None = None
    block_owner_deletion: bool | None = None


class ObjectMeta(KubeModel):
    """What the operator reads of an object's metadata (the rest is ignored when parsed)."""

    name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    owner_references: list[OwnerReference] | None = None
    finalizers: list[str] | None = None
    deletion_timestamp: str | None = None


class AgentSession(KubeModel):
    """A set of agents with dependencies, a shared rate limit and a token budget."""

    api_version: str = GROUP_VERSION
    kind: str = SESSION_KIND
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: AgentSessionSpec
    status: AgentSessionStatus | None = None


class Agent(KubeModel):
    """One LLM agent run as a Pod, with its kernel, tools and capabilities."""

    api_version: str = GROUP_VERSION
    kind: str = AGENT_KIND
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: AgentSpec
    status: AgentStatus | None = None
