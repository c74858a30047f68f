"""The provider interface and the one place HTTP failures become typed errors.

429, 5xx, 529, timeouts, refused connections and truncated bodies are
retryable (with the server's `Retry-After`, in seconds or as an HTTP date);
400/401/403/404 and other 4xx are permanent and carry the provider's own
message. Every message passes the redactor, so a key echoed back by a
provider never reaches an exception.
"""

from __future__ import annotations

import email.utils
import json
import logging
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any, Protocol

import httpx

from toka.llm.errors import InvalidResponse, PermanentProviderError, RetryableProviderError
from toka.llm.sanitize import REDACTED, for_log
from toka.llm.types import Completion, CompletionRequest, TextDelta, Usage

JSON = dict[str, Any]
wire_log = logging.getLogger("toka.llm.http")
CREDENTIAL_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "x-api-key", "api-key", "cookie", "set-cookie"}
)


class Provider(Protocol):
    name: str

    async def complete(self, request: CompletionRequest) -> Completion: ...

    def stream(
        self, request: CompletionRequest
    ) -> AsyncGenerator[TextDelta | Completion, None]: ...

    async def aclose(self) -> None: ...


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` as seconds: a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (now if now is not None else time.time()))


def _provider_message(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body[:300].decode(errors="replace").strip() or "(empty body)"
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        return str(err.get("message") or err.get("type") or err)
    if isinstance(err, str):
        return err
    return str(data)[:300]


def raise_for_status(
    provider: str, resp: httpx.Response, body: bytes, redact: Callable[[str], str]
) -> None:
    status = resp.status_code
    if status < 400:
        return
    message = redact(_provider_message(body))
    if status == 429 or status >= 500:
        reason = {429: "rate_limited", 529: "overloaded"}.get(status, "server_error")
        raise RetryableProviderError(
            provider,
            reason,
            message,
            status=status,
            retry_after=parse_retry_after(resp.headers.get("retry-after")),
        )
    if status in (408, 409):
        raise RetryableProviderError(provider, "conflict_or_timeout", message, status=status)
    raise PermanentProviderError(provider, status, message)


def transport_error(
    provider: str, err: Exception, redact: Callable[[str], str]
) -> RetryableProviderError:
    if isinstance(err, httpx.TimeoutException):
        reason = "timeout"
    elif isinstance(err, httpx.ConnectError):
        reason = "connect"
    elif isinstance(err, (httpx.RemoteProtocolError, httpx.ReadError)):
        reason = "truncated"
    else:
        reason = "transport"
    # Once the request may have been sent, the model may have run (and been billed).
    unsent = isinstance(err, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
    return RetryableProviderError(
        provider, reason, redact(str(err) or type(err).__name__), billable=not unsent
    )


def reported_usage(raw: Any, input_key: str, output_key: str) -> Usage | None:
    """The provider's token counts, or None when it sent none (or none that are numbers)."""
    if not isinstance(raw, dict) or (input_key not in raw and output_key not in raw):
        return None
    try:
        return Usage(
            input_tokens=max(0, int(raw.get(input_key) or 0)),
            output_tokens=max(0, int(raw.get(output_key) or 0)),
        )
    except (TypeError, ValueError):
        return None


async def post_json(
    client: httpx.AsyncClient,
    provider: str,
    url: str,
    headers: dict[str, str],
    body: JSON,
    redact: Callable[[str], str],
) -> JSON:
    try:
        resp = await client.post(url, headers=headers, json=body)
        raw = resp.content
    except httpx.HTTPError as err:
        raise transport_error(provider, err, redact) from None
    raise_for_status(provider, resp, raw, redact)
    try:
        data = json.loads(raw)
    except ValueError:
        raise InvalidResponse(provider, f"malformed JSON body ({len(raw)} bytes)") from None
    if not isinstance(data, dict):
        raise InvalidResponse(provider, "JSON body is not an object")
    return data


def parse_arguments(provider: str, raw: Any) -> dict[str, Any]:
    """Tool-call arguments: a JSON object (OpenAI sends it as a string)."""
    if isinstance(raw, dict):
        return raw
    if raw in (None, ""):
        return {}
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        raise InvalidResponse(provider, f"tool arguments are not JSON: {str(raw)[:80]!r}") from None
    if not isinstance(value, dict):
        raise InvalidResponse(provider, "tool arguments are not a JSON object")
    return value


def _shown_headers(headers: httpx.Headers) -> str:
    return json.dumps(
        {k: REDACTED if k.lower() in CREDENTIAL_HEADERS else v for k, v in headers.items()}
    )


def debug_hooks(provider: str, redact: Callable[[str], str]) -> dict[str, list[Any]]:
    """httpx event hooks for LLM_DEBUG: each exchange's headers and bodies at debug level,
    credential headers blanked, every secret redacted, each body capped. A streamed
    answer's body is left unread here (reading it would hold the stream back); the
    gateway logs the completion it became."""

    async def on_request(request: httpx.Request) -> None:
        wire_log.debug(
            "%s request: %s %s headers=%s body=%s",
            provider,
            request.method,
            redact(str(request.url)),
            for_log(_shown_headers(request.headers), redact),
            for_log(request.content.decode(errors="replace"), redact),
        )

    async def on_response(response: httpx.Response) -> None:
        if "text/event-stream" in response.headers.get("content-type", ""):
            body = "(server-sent events)"
        else:
            body = (await response.aread()).decode(errors="replace")
        wire_log.debug(
            "%s response: %s headers=%s body=%s",
            provider,
            response.status_code,
            for_log(_shown_headers(response.headers), redact),
            for_log(body, redact),
        )

    return {"request": [on_request], "response": [on_response]}
