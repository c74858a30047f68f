"""What the operator, the containers of an agent pod and the dev node agree on, in one place.

Each side imports its names from here instead of spelling them again, so a
renamed variable or moved path cannot leave one side behind. Standard library
only and values only, so the agent (which must not import the kernel), the
tools sidecar (standard library only) and the kernel's probe (which must start
fast) can all use it.
"""

from __future__ import annotations

# --- The API: the CRDs (toka.api), the operator's watches, every client ---
API_GROUP = "toka.dev"
API_VERSION = "v1alpha1"
GROUP_VERSION = f"{API_GROUP}/{API_VERSION}"
AGENT_KIND, AGENT_PLURAL = "Agent", "agents"
SESSION_KIND, SESSION_PLURAL = "AgentSession", "agentsessions"

# --- Labels: the operator writes them; its pod watch, the node agent and clients select on them
LABEL_AGENT = f"{API_GROUP}/agent"  # on an Agent's pod, ConfigMaps, ServiceAccount, Role
LABEL_SESSION = f"{API_GROUP}/session"  # on a session's Agents (copied to their pods)
LABEL_WORKSTREAM = f"{API_GROUP}/workstream"
LABEL_ATTEMPT = f"{API_GROUP}/attempt"  # on a pod: which attempt of its Agent
LABEL_PARENT = f"{API_GROUP}/parent"  # on a spawned Agent: the Agent that asked for it
LABEL_SPAWN_DEPTH = f"{API_GROUP}/spawn-depth"  # on a spawned Agent: 1 for a child, ...
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "toka"
# The dev node agent's Node carries it; a pod template's nodeSelector may name it.
LABEL_DEV_NODE = f"{API_GROUP}/dev-node"

# --- The image: one for every Toka process ---
# The Dockerfile's ENTRYPOINT: the operator passes only the subcommand as args, and the
# dev node agent runs it for a container that names no command.
ENTRYPOINT = ("toka",)
# The public image's repository: the operator's default image is a tag of it, and the
# dev node agent runs it from this checkout.
IMAGE_REPOSITORY = "ghcr.io/toka-dev/toka"
# Each container's name in the agent pod, and the `toka` subcommand it runs (`--probe`:
# its startup probe).
KERNEL_CONTAINER = "kernel"
TOOLS_CONTAINER = "tools"
AGENT_CONTAINER = "agent"
PROBE_FLAG = "--probe"

# --- Ports and paths in the agent pod (the operator mounts them; each container reads its own)
# The kernel's API, on the pod's loopback: the agent's only way out.
KERNEL_HOST, KERNEL_PORT = "127.0.0.1", 8181
DEFAULT_KERNEL_ADDR = f"{KERNEL_HOST}:{KERNEL_PORT}"
KERNEL_READY_PATH = "/readyz"  # 200 once it serves: the agent waits for it, the probe asks it
KERNEL_METRICS_PORT = 9090  # the kernel's /metrics, on the pod IP
# The projected ServiceAccount token, mounted into the kernel alone (kube.config reads it).
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# The volume the kernel shares with tools and no one else: the tools socket, the git token.
SOCKET_DIR = "/run/toka"
TOOLS_SOCKET = f"{SOCKET_DIR}/tools.sock"
GIT_TOKEN_FILE = f"{SOCKET_DIR}/git-token"  # the kernel writes it; tools sends it to the proxy
# The kernel's Secrets and ConfigMaps: the provider key, the replay recording, the git
# credential, one directory per MCP server (a file per header). Not under /var/run: in the
# image that is /run, where SOCKET_DIR is. The tools sandbox keeps programs out of CONFIG_DIR.
CONFIG_DIR = "/etc/toka"
LLM_KEY_DIR = f"{CONFIG_DIR}/llm"
LLM_KEY_FILE = f"{LLM_KEY_DIR}/api-key"
REPLAY_DIR = f"{CONFIG_DIR}/replay"
REPLAY_FILE = f"{REPLAY_DIR}/recording.json"
GIT_CREDENTIALS_DIR = f"{CONFIG_DIR}/git"
MCP_DIR = f"{CONFIG_DIR}/mcp"
# The tools container's work tree, and outside it what it starts from: the seed files,
# the dependencies' results, this Agent's own earlier result, the repository.
WORKSPACE = "/workspace"
SEED_DIR = "/var/lib/toka/seed"
INPUTS_DIR = "/var/lib/toka/inputs"
RESULT_DIR = "/var/lib/toka/result"
GIT_DIR = "/var/lib/toka/git"

# --- Environment: every container of an agent pod (the operator sets them) ---
KERNEL_ADDR_ENV = "TOKA_KERNEL_ADDR"  # default DEFAULT_KERNEL_ADDR; the node agent rewrites it
AGENT_NAME_ENV = "TOKA_AGENT_NAME"  # the Agent object's name
NAMESPACE_ENV = "TOKA_NAMESPACE"  # default DEFAULT_NAMESPACE
POD_NAME_ENV = "TOKA_POD_NAME"
ATTEMPT_ENV = "TOKA_ATTEMPT"  # the pod's attempt number; default "0"
DEFAULT_NAMESPACE = "default"

# --- Environment: the kernel's (the operator sets them) ---
TOOLS_SOCKET_ENV = "TOKA_TOOLS_SOCKET"  # tools reads it too; default TOOLS_SOCKET
POD_IP_ENV = "TOKA_POD_IP"  # only for $(TOKA_POD_IP) in METRICS_ADDR_ENV
METRICS_ADDR_ENV = "TOKA_METRICS_ADDR"  # host:port; unset, no metrics listener
HEARTBEAT_SECONDS_ENV = "TOKA_HEARTBEAT_SECONDS"
DEFAULT_HEARTBEAT_SECONDS = 10
SHUTDOWN_SECONDS_ENV = "TOKA_SHUTDOWN_SECONDS"  # how long the last report is retried
DEFAULT_SHUTDOWN_SECONDS = 10
LLM_KEY_FILE_ENV = "TOKA_LLM_KEY_FILE"  # LLM_KEY_FILE when the Agent names a key Secret
REPLAY_FILE_ENV = "TOKA_REPLAY_FILE"  # REPLAY_FILE for `provider: replay`
RECORDING_CONFIGMAP_ENV = "TOKA_RECORDING_CONFIGMAP"  # set only in record mode
RECORDING_KEY_ENV = "TOKA_RECORDING_KEY"  # default recording_key(the Agent's spec.name)
MCP_DIR_ENV = "TOKA_MCP_DIR"  # MCP_DIR when the Agent has MCP servers
RESULT_CONFIGMAP_ENV = "TOKA_RESULT_CONFIGMAP"  # set only for a git work tree
SESSION_ENV = "TOKA_SESSION"  # the session's name for the push branch; default the agent's
GIT_TOKEN_FILE_ENV = "TOKA_GIT_TOKEN_FILE"  # noqa: S105 (a name; tools reads it too)
GIT_PUSH_BRANCH_ENV = "TOKA_GIT_PUSH_BRANCH"
GIT_CREDENTIALS_DIR_ENV = "TOKA_GIT_CREDENTIALS_DIR"
WORKSPACE_GIT_URL_ENV = "TOKA_WORKSPACE_GIT_URL"  # tools reads it too
WORKSPACE_GIT_REF_ENV = "TOKA_WORKSPACE_GIT_REF"  # tools reads it too

# --- Environment: the tools container's (the operator sets them, the image the last) ---
WORKSPACE_ENV = "TOKA_WORKSPACE"  # default WORKSPACE
WORKSPACE_SHARED_ENV = "TOKA_WORKSPACE_SHARED"  # "1": a shared claim, used as it is (no git)
GIT_DIR_ENV = "TOKA_GIT_DIR"  # GIT_DIR
WORKSPACE_SEED_DIR_ENV = "TOKA_WORKSPACE_SEED_DIR"  # SEED_DIR
WORKSPACE_INPUTS_ENV = "TOKA_WORKSPACE_INPUTS"  # JSON: [{"agent", "commit", "dir"}]
WORKSPACE_BASE_ENV = "TOKA_WORKSPACE_BASE"  # the commit every agent of the session starts from
WORKSPACE_RESUME_DIR_ENV = "TOKA_WORKSPACE_RESUME_DIR"  # RESULT_DIR
# Set by a tools image that adds programs (README): absolute directories, ':'-separated.
TOOLS_EXTRA_PATH_ENV = "TOKA_TOOLS_EXTRA_PATH"

# --- Environment: a developer's machine (the dev cluster's binaries and images) ---
CACHE_DIR_ENV = "TOKA_CACHE_DIR"  # default ~/.cache/toka

# --- Environment: the operator's own ---
# How long each watch stream lasts before the operator opens it again (seconds). A new
# stream is also where an expired credential is noticed and renewed.
WATCH_TIMEOUT_ENV = "TOKA_WATCH_TIMEOUT"
DEFAULT_WATCH_TIMEOUT = 300

# --- Between the kernel and tools ---
# The kernel's git proxy (tools fetches and pushes through it) and the header carrying
# the token of GIT_TOKEN_FILE, which tells the proxy a request comes from tools.
KERNEL_GIT_PATH = "/git/repo"
GIT_TOKEN_HEADER = "X-Toka-Git-Token"  # noqa: S105 (a header name)
# The result ConfigMap's keys: the kernel writes them, tools reads them (mounted as files),
# the operator and `toka export` read them.
RESULT_COMMIT_KEY = "commit"
RESULT_REF_KEY = "ref"  # the remote ref holding a result too large for a ConfigMap
RESULT_BUNDLE_KEY = "bundle"  # binaryData: a git bundle, base..commit

# --- Caps shared between the kernel, which keeps within them, and the API or operator ---
# Spawn requests per Agent: the kernel refuses more; status.run.spawnRequests and
# status.spawnResults allow no more.
MAX_SPAWN_REQUESTS = 8
# Tasks an agent may add to its own (status.run.tasks holds MAX_TASKS + this).
MAX_FOLLOW_UPS = 16
MAX_RUN_BYTES = 256 * 1024  # status.run as JSON in UTF-8 (the API's description says so)
# A result bundle in a ConfigMap, which holds at most 1 MiB and gets the bundle base64-encoded
# in JSON: a larger result travels through the session's remote, or fails (ResultTooLarge).
MAX_BUNDLE = 768 * 1024


def recording_key(agent: str) -> str:
    """The key of an agent's turns in a recording ConfigMap (`provider: replay` reads it)."""
    return f"{agent}.json"
