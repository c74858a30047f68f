"""Traces over OTLP/HTTP when an endpoint is configured, and nothing at all when not.

`from_env` reads the standard variables from the mapping it is given
(`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else `OTEL_EXPORTER_OTLP_ENDPOINT` plus
`/v1/traces`; `OTEL_SDK_DISABLED`); the SDK reads the rest (`OTEL_BSP_*`,
`OTEL_TRACES_SAMPLER`, the exporter's headers, timeout and compression) from
the process environment, as it always does. Without an endpoint it returns
`NO_TRACER`, whose spans are one shared object whose methods do nothing, and
the OpenTelemetry SDK is never imported: the kernel pays neither its import
time nor its memory.

One trace per agent run, with no propagation between processes: the trace id
of a run is the first 16 bytes of the SHA-256 of its Agent's `metadata.uid`,
so the operator's reconcile spans and the kernel's spans land in the same
trace. Not the uid itself: a UUIDv4 fixes version and variant bits in the low
64 bits that ratio sampling compares, which would keep 0% of runs at 0.5.

Callers see only `Tracer` and `Span` below, never OpenTelemetry's types, so
the layers that must stay pure import nothing from it.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

Value = str | bool | int | float | Sequence[str]
Attributes = Mapping[str, Value | None]  # None: left out

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
log = logging.getLogger("toka.tracing")


def configured(env: Mapping[str, str]) -> bool:
    """Whether traces are exported: an OTLP endpoint is set and the SDK is not disabled."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return any(env.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def trace_id_for(uid: str) -> int:
    """The trace id of an object's run: the first 16 bytes of sha256(uid), uniformly
    distributed so that ratio sampling (which compares the low 64 bits) keeps its ratio.
    The operator and the kernel both call this, so their spans of a run meet."""
    return int.from_bytes(hashlib.sha256(uid.encode()).digest()[:16], "big") or 1


def trace_id_hex(uid: str) -> str:
    """The trace id as trace backends show it: 32 lower-case hex digits."""
    return f"{trace_id_for(uid):032x}"


class Span:
    """A span that records nothing: what every span is when tracing is off."""

    recording = False

    def set(self, key: str, value: Value | None) -> None:
        """One attribute; `None` is left out."""

    def update(self, attributes: Attributes) -> None:
        """Several attributes at once."""

    def event(self, name: str, attributes: Attributes | None = None) -> None:
        """A timestamped event on the span."""

    def fail(self, error_type: str, description: str = "") -> None:
        """Mark the span failed: `error.type` and an error status."""

    def end(self) -> None:
        """End a span from `Tracer.start` (spans from `Tracer.span` end themselves)."""


NO_SPAN = Span()


class Tracer:
    """Tracing off: every span is `NO_SPAN`."""

    enabled = False

    def __init__(self) -> None:
        # Spans started with no span current become children of this one (the kernel's run).
        self.default_parent: Span = NO_SPAN

    def start(
        self, name: str, attributes: Attributes | None = None, *, trace_id: int | None = None
    ) -> Span:
        """A span that is not made current; end it with `end()`. With `trace_id` it is a
        root span in that trace, else a child of the current span or the default parent."""
        return NO_SPAN

    @contextmanager
    def span(
        self, name: str, attributes: Attributes | None = None, *, trace_id: int | None = None
    ) -> Iterator[Span]:
        """A span that is current inside the block (spans started there are its children)
        and ends with it; an exception marks it failed."""
        yield NO_SPAN

    def shutdown(self, timeout_seconds: float = 5.0) -> None:
        """Export what is left and stop; spans started afterwards are dropped."""


NO_TRACER = Tracer()


def from_env(service: str, env: Mapping[str, str], resource: Attributes | None = None) -> Tracer:
    """A tracer exporting over OTLP/HTTP if `env` names an endpoint, else `NO_TRACER`."""
    if not configured(env):
        return NO_TRACER
    return _OtelTracer(service, traces_endpoint(env), dict(resource or {}))


def traces_endpoint(env: Mapping[str, str]) -> str:
    """Where spans are sent, as the OTLP exporter specification derives it."""
    signal = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    if signal:
        return signal
    return env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip().rstrip("/") + "/v1/traces"


# What kernels are given of the operator's OTEL_* settings. Not the headers: OTLP headers
# often hold a backend's credential, and a pod's env is readable by whoever reads pods, so
# kernels export to a collector that needs none. Not file paths either (certificates):
# they name files in the operator's pod.
KERNEL_VARIABLES = (
    *ENDPOINT_VARIABLES,
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_EXPORTER_OTLP_COMPRESSION",
    "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_BSP_EXPORT_TIMEOUT",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
)


def may_hold_credentials(url: str) -> bool:
    """Whether an endpoint URL has a part that can carry a secret: any userinfo
    (`https://TOKEN@host`, `user:password@`) or a query string (`?api_key=...`)."""
    return "@" in urlsplit(url.strip()).netloc or "?" in url


def kernel_env(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The tracing settings every kernel gets from the operator's environment: none when
    tracing is off, or when an endpoint may carry a credential (userinfo or a query
    string: it would be copied into every pod spec)."""
    if not configured(env):
        return ()
    risky = [name for name in ENDPOINT_VARIABLES if may_hold_credentials(env.get(name, ""))]
    if risky:
        log.warning(
            "%s has userinfo or a query string, which may hold a credential; kernels are "
            "not given the tracing settings (point Toka at a collector that needs none)",
            " and ".join(risky),
        )
        return ()
    return tuple((name, env[name]) for name in KERNEL_VARIABLES if env.get(name, "").strip())


# --- tracing on: everything below imports OpenTelemetry only when called ---------

_RUN_TRACE_ID: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "toka_run_trace_id", default=None
)


def _clean(attributes: Attributes | None) -> dict[str, Any]:
    return {k: v for k, v in (attributes or {}).items() if v is not None}


class _OtelSpan(Span):
    recording = True

    def __init__(self, otel: Any):
        self.otel = otel

    def set(self, key: str, value: Value | None) -> None:
        if value is not None:
            self.otel.set_attribute(key, value)

    def update(self, attributes: Attributes) -> None:
        self.otel.set_attributes(_clean(attributes))

    def event(self, name: str, attributes: Attributes | None = None) -> None:
        self.otel.add_event(name, _clean(attributes))

    def fail(self, error_type: str, description: str = "") -> None:
        from opentelemetry.trace import Status, StatusCode

        self.otel.set_attribute("error.type", error_type)
        self.otel.set_status(Status(StatusCode.ERROR, description or None))

    def end(self) -> None:
        self.otel.end()


class _OtelTracer(Tracer):
    enabled = True

    def __init__(self, service: str, endpoint: str, resource: dict[str, Any]):
        super().__init__()
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

        from toka import __version__

        class RunIds(RandomIdGenerator):
            """A run's root spans take the run's trace id; others a random one."""

            def generate_trace_id(self) -> int:
                return _RUN_TRACE_ID.get() or super().generate_trace_id()

        self.provider = TracerProvider(
            resource=Resource.create(
                {"service.name": service, "service.version": __version__, **resource}
            ),
            id_generator=RunIds(),
        )
        # OTLP over HTTP with protobuf bodies; headers, timeout and compression per the env.
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint)))
        self.tracer = self.provider.get_tracer("toka", __version__)
        log.info("tracing on: spans of %s are exported over OTLP/HTTP", service)

    def _context(self, trace_id: int | None) -> Any:
        """The parent: none for a run's span (a root in the run's trace), else the current
        span, else the default parent."""
        from opentelemetry import context, trace

        if trace_id:
            return context.Context()
        if trace.get_current_span().get_span_context().is_valid:
            return None
        parent = self.default_parent
        if isinstance(parent, _OtelSpan):
            return trace.set_span_in_context(parent.otel)
        return None

    def start(
        self, name: str, attributes: Attributes | None = None, *, trace_id: int | None = None
    ) -> Span:
        token = _RUN_TRACE_ID.set(trace_id) if trace_id else None
        try:
            otel = self.tracer.start_span(
                name, context=self._context(trace_id), attributes=_clean(attributes)
            )
        finally:
            if token is not None:
                _RUN_TRACE_ID.reset(token)
        return _OtelSpan(otel)

    @contextmanager
    def span(
        self, name: str, attributes: Attributes | None = None, *, trace_id: int | None = None
    ) -> Iterator[Span]:
        from opentelemetry import trace

        span = self.start(name, attributes, trace_id=trace_id)
        assert isinstance(span, _OtelSpan)
        try:
            with trace.use_span(span.otel, record_exception=False, set_status_on_exception=False):
                yield span
        except BaseException as err:
            span.fail(type(err).__qualname__)
            raise
        finally:
            span.end()

    def shutdown(self, timeout_seconds: float = 5.0) -> None:
        self.provider.force_flush(int(timeout_seconds * 1000))
        self.provider.shutdown()
