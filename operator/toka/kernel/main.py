"""`toka kernel`: read our own Agent, then serve the agent, report, and enforce.

Identity: the projected ServiceAccount token, re-read from its file on every
request; the Role allows `get` and `patch` on this Agent's status only. A
GET of `agents/<name>/status` returns the whole Agent, so the spec
(capabilities, llm, handoff) and the operator's `status.limits` come from
there, polled for changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import tempfile
from pathlib import Path

from aiohttp import web

from toka import tracing
from toka.api.capabilities import Grant
from toka.api.models import Agent, Provider
from toka.contract import (
    AGENT_NAME_ENV,
    ATTEMPT_ENV,
    DEFAULT_HEARTBEAT_SECONDS,
    DEFAULT_NAMESPACE,
    DEFAULT_SHUTDOWN_SECONDS,
    GIT_TOKEN_FILE_ENV,
    HEARTBEAT_SECONDS_ENV,
    KERNEL_CONTAINER,
    LLM_KEY_FILE_ENV,
    MCP_DIR_ENV,
    METRICS_ADDR_ENV,
    NAMESPACE_ENV,
    POD_NAME_ENV,
    RECORDING_CONFIGMAP_ENV,
    RECORDING_KEY_ENV,
    REPLAY_FILE_ENV,
    RESULT_CONFIGMAP_ENV,
    SHUTDOWN_SECONDS_ENV,
    TOOLS_SOCKET_ENV,
    recording_key,
)
from toka.contract import DEFAULT_KERNEL_ADDR as DEFAULT_ADDR
from toka.contract import KERNEL_ADDR_ENV as ADDR_ENV
from toka.kernel.mcp import McpTools
from toka.kernel.policy import Policy
from toka.kernel.probe import split_addr
from toka.kernel.recording import RecordingWriter
from toka.kernel.reporter import Reporter
from toka.kernel.results import Remote, Results
from toka.kernel.server import Kernel
from toka.kube.client import AGENTS, ApiError, AsyncKube
from toka.kube.config import KubeConfig, in_cluster
from toka.llm import LLMConfig, LLMGateway
from toka.llm.errors import LLMError
from toka.llm.metrics import GatewayMetrics
from toka.llm.providers import make_provider
from toka.llm.providers.replay import RecordingProvider
from toka.llm.ratelimit import TokenBucket, TokenBudget
from toka.llm.sanitize import Redactor
from toka.logs import configure

log = logging.getLogger("toka.kernel")
POLL_SECONDS = 5.0
MCP_START_SECONDS = 10.0
MCP_LIST_SECONDS = 60.0  # how often servers are asked again for their tools


def _resource(ns: str) -> dict[str, str]:
    """Where the spans come from, as the Kubernetes resource conventions name it."""
    resource = {"k8s.namespace.name": ns, "k8s.container.name": KERNEL_CONTAINER}
    if os.environ.get(POD_NAME_ENV):
        resource["k8s.pod.name"] = os.environ[POD_NAME_ENV]
    return resource


def restarted_in_this_pod(key: str) -> bool:
    """Whether a kernel started in this pod before (the kubelet restarted it): the first
    start leaves a mark in the pod's /tmp, an emptyDir that outlives the container."""
    attempt = os.environ.get(ATTEMPT_ENV, "0")
    digest = hashlib.sha256(f"{key}/{attempt}".encode()).hexdigest()[:16]
    marker = Path(tempfile.gettempdir()) / f"toka-kernel-{digest}.started"
    if marker.exists():
        return True
    marker.touch()
    return False


async def read_agent(kube: AsyncKube, ns: str, name: str, timeout: float = 120) -> Agent:
    """Our Agent; a 403 right after the pod starts means the RoleBinding is still propagating."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.2
    while True:
        try:
            return Agent.model_validate(await kube.get(AGENTS, name, ns, sub="status"))
        except (ApiError, OSError) as err:
            if loop.time() > deadline:
                raise
            log.info("reading Agent %s/%s: %s; retrying", ns, name, err)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 3)


def mcp_tools(agent: Agent, redactor: Redactor) -> McpTools:
    """The MCP client of `spec.mcpServers`; each server's header values join the redactor
    when read, before they are first sent."""
    root = os.environ.get(MCP_DIR_ENV)
    return McpTools(
        agent.spec.mcp_servers or [],
        headers_root=Path(root) if root else None,
        on_secret=redactor.add,
        redact=redactor,
    )


def build_gateway(
    agent: Agent,
    registry: object,
    redactor: Redactor,
    reporter: Reporter,
    recorder: RecordingWriter | None = None,
) -> tuple[LLMGateway | None, str | None]:
    key_file = os.environ.get(LLM_KEY_FILE_ENV)
    key = Path(key_file).read_text().strip() if key_file and Path(key_file).exists() else None
    replay = os.environ.get(REPLAY_FILE_ENV)
    try:
        config = LLMConfig.resolve(
            agent.spec.llm,
            dict(os.environ),
            api_key=key,
            replay_path=Path(replay) if replay else None,
        )
    except LLMError as err:
        return None, str(err)
    if config.debug:
        # LLM_DEBUG: the gateway's redacted bodies, whatever the kernel's own log level.
        logging.getLogger("toka.llm").setLevel(logging.DEBUG)
    limits = agent.status.limits if agent.status else None
    rpm = (
        limits.requests_per_minute
        if limits and limits.requests_per_minute
        else config.rate_limit_per_minute
    )
    used = reporter.run.usage.total if reporter.run.usage else 0
    budget = TokenBudget(limits.max_tokens if limits else None, used=used)
    try:
        provider = None
        if recorder is not None and config.provider != Provider.REPLAY:
            for secret in config.secrets():
                redactor.add(secret)
            provider = RecordingProvider(
                make_provider(config, redactor), recorder.path, recorder.agent, recorder
            )
        gateway = LLMGateway(
            config,
            provider,
            redactor=redactor,
            limiter=TokenBucket(rpm),
            budget=budget,
            metrics=GatewayMetrics(registry),  # type: ignore[arg-type]
            audit=lambda rec: print(__import__("json").dumps(rec), flush=True),
        )
    except LLMError as err:
        return None, str(err)
    return gateway, None


async def serve(config: KubeConfig | None = None) -> None:
    ns = os.environ.get(NAMESPACE_ENV) or DEFAULT_NAMESPACE
    name = os.environ[AGENT_NAME_ENV]
    kube = AsyncKube(config or in_cluster())
    redactor = Redactor()
    if kube.config.token_file:
        # The token is a secret too: never in a log line or an audit record.
        redactor.add(kube.config.bearer() or "")
    agent = await read_agent(kube, ns, name)
    tracer = tracing.from_env("toka-kernel", os.environ, _resource(ns))
    run_span = tracer.start(
        f"invoke_agent {agent.spec.name or name}",
        {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": agent.spec.name or name,
            "gen_ai.agent.id": agent.metadata.uid,
            "k8s.namespace.name": ns,
            "toka.agent": name,
            "toka.attempt": os.environ.get(ATTEMPT_ENV),
        },
        trace_id=tracing.trace_id_for(agent.metadata.uid or f"{ns}/{name}"),
    )
    tracer.default_parent = run_span
    heartbeat = float(os.environ.get(HEARTBEAT_SECONDS_ENV, DEFAULT_HEARTBEAT_SECONDS))
    # Status text is redacted as audit lines are; the gateway's and git's secrets join below.
    reporter = Reporter(kube, ns, name, heartbeat_seconds=heartbeat, redact=redactor)
    extra = [
        t.name
        for t in (
            agent.status.run.tasks
            if agent.status and agent.status.run and agent.status.run.tasks
            else []
        )
    ]
    reporter.adopt(
        agent.status.run if agent.status else None,
        [t.name for t in agent.spec.tasks] + extra,
        restarted=restarted_in_this_pod(agent.metadata.uid or f"{ns}/{name}"),
    )
    policy = Policy(
        Grant.from_strings(agent.spec.capabilities or []),
        agent=name,
        redact=redactor,
        on_denial=reporter.denial,
        tracer=tracer,
    )
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    recorder = None
    if os.environ.get(RECORDING_CONFIGMAP_ENV):
        recorder = RecordingWriter(
            kube,
            ns,
            os.environ[RECORDING_CONFIGMAP_ENV],
            os.environ.get(RECORDING_KEY_ENV) or recording_key(agent.spec.name or name),
            agent.spec.name or name,
            Path(tempfile.gettempdir()) / "toka-recording.json",
            redactor,
        )
        await recorder.resume()
    gateway, gateway_error = build_gateway(agent, registry, redactor, reporter, recorder)
    if gateway is not None:
        for secret in gateway.config.secrets():
            redactor.add(secret)
    results = None
    if os.environ.get(RESULT_CONFIGMAP_ENV):
        remote = Remote.from_env(dict(os.environ), agent.spec.name or name)
        for secret in remote.secrets if remote is not None else ():
            redactor.add(secret)
        results = Results(
            kube=kube,
            namespace=ns,
            agent=name,
            author=agent.spec.name or name,
            configmap=os.environ[RESULT_CONFIGMAP_ENV],
            reporter=reporter,
            remote=remote,
        )
        # Pod-local, but a credential all the same: never in status or the audit log.
        redactor.add(results.git_token)
        if os.environ.get(GIT_TOKEN_FILE_ENV):
            results.write_token(os.environ[GIT_TOKEN_FILE_ENV])
    kernel = Kernel(
        agent=name,
        spec=agent.spec,
        policy=policy,
        reporter=reporter,
        gateway=gateway,
        gateway_error=gateway_error,
        tools_socket=os.environ.get(TOOLS_SOCKET_ENV),
        registry=registry,
        results=results,
        tracer=tracer,
        mcp=mcp_tools(agent, redactor),
    )
    with contextlib.suppress(TimeoutError):
        # The agent's first question is which tools it has: list them before we are ready,
        # but a slow server only delays the start so long (it is retried afterwards).
        async with asyncio.timeout(MCP_START_SECONDS):
            await kernel.refresh_mcp()
    host, port = split_addr(os.environ.get(ADDR_ENV, DEFAULT_ADDR))
    runner = web.AppRunner(kernel.app(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    metrics_runner = None
    if os.environ.get(METRICS_ADDR_ENV):
        mhost, mport = split_addr(os.environ[METRICS_ADDR_ENV])
        metrics_runner = web.AppRunner(kernel.metrics_app(), access_log=None, shutdown_timeout=1.0)
        await metrics_runner.setup()
        await web.TCPSite(metrics_runner, mhost, mport).start()
    writer = asyncio.create_task(reporter.flush_loop())
    kernel.ready = True
    log.info("kernel for %s/%s serving on %s:%s", ns, name, host, port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def poll() -> None:
        """The Agent, read again: capabilities (a revocation), spec and limits follow it.
        Nothing MCP runs here (see `follow_mcp`), so no server can delay or stop it."""
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                fresh = Agent.model_validate(await kube.get(AGENTS, name, ns, sub="status"))
            except (ApiError, OSError, ValueError) as err:  # ValueError: not an Agent we read
                log.info("polling Agent: %s", err)
                continue
            policy.update(fresh.spec.capabilities or [])
            kernel.spec = fresh.spec
            limits = fresh.status.limits if fresh.status else None
            if kernel.gateway is not None and limits is not None:
                kernel.gateway.set_limits(limits.requests_per_minute, limits.max_tokens)

    pollers = [asyncio.create_task(poll())]
    if kernel.mcp is not None:
        pollers.append(asyncio.create_task(follow_mcp(kernel)))
    await stop.wait()
    log.info("stopping: writing the last report")
    kernel.ready = False
    for task in pollers:
        task.cancel()
    shutdown = float(os.environ.get(SHUTDOWN_SECONDS_ENV, DEFAULT_SHUTDOWN_SECONDS))
    if not await reporter.close(writer, shutdown):
        log.warning("stopping with an unwritten report (the API server did not answer)")
    await runner.cleanup()
    if metrics_runner is not None:
        await metrics_runner.cleanup()
    await kernel.aclose()
    await kube.aclose()
    run_span.end()
    # The last spans (the run's own among them) are exported before the process ends.
    await asyncio.to_thread(tracer.shutdown)
    log.info("stopped")


async def follow_mcp(kernel: Kernel, interval: float = POLL_SECONDS) -> None:
    """MCP servers as the polled spec names them, listed again every `MCP_LIST_SECONDS`
    after the last listing ended (a slow server is not asked back to back), failed ones
    retried: a task of its own, so a slow listing never holds up the poll, and nothing a
    server does ends it."""
    loop = asyncio.get_running_loop()
    listed_at = loop.time()
    while kernel.mcp is not None:
        await asyncio.sleep(interval)
        try:
            changed = kernel.mcp.update(kernel.spec.mcp_servers or [])
            if changed or loop.time() - listed_at >= MCP_LIST_SECONDS:
                await kernel.refresh_mcp()
                listed_at = loop.time()
            else:
                await kernel.refresh_mcp(only_failed=True)
            kernel.report_mcp()
        except Exception:
            log.exception("following the MCP servers")


def main() -> int:
    configure()
    asyncio.run(serve())
    return 0
