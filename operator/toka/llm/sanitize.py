"""Request sanitation that does not break real work, and redaction of secrets.

Control characters are stripped (newlines and tabs kept) and sizes capped;
prompts that talk about URLs, code or shell commands pass untouched — the
original blocked any prompt containing "http". Injection heuristics only
flag the audit record. Redaction covers the exact configured values (keys,
tokens) and known secret formats, for everything that goes to logs, audit,
status or Events.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from toka.llm.types import ChatMessage, CompletionRequest

MAX_MESSAGE_CHARS = 200_000
MAX_REQUEST_CHARS = 1_000_000
MAX_LOG_CHARS = 8_192  # per body in an LLM_DEBUG log line
MIN_SECRET_CHARS = 6  # a shorter configured value would redact ordinary words: it is not
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SECRET_FORMATS = [
    re.compile(r"sk-ant-[A-Za-z0-9_\-]{8,}"),
    re.compile(r"sk-(?:proj-|svcacct-)?[A-Za-z0-9_\-]{16,}"),
    re.compile(r"(?i)\bBearer\s+[A-Za-z0-9._~+/\-]{8,}=*"),
    # Anchored at the start of a run: unanchored, a long run without dots ("eyJeyJ…")
    # was scanned again from each "eyJ" in it, quadratic in the text an agent sends.
    re.compile(r"(?<![A-Za-z0-9_\-])eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"),
    re.compile(
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)", re.S
    ),
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}"),
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
]
_INJECTION = {
    "ignore-instructions": re.compile(
        r"(?i)\b(ignore|disregard|forget)\b.{0,40}\b(previous|prior|above|all)\b.{0,20}"
        r"\b(instructions|prompts?|rules)\b"
    ),
    "role-override": re.compile(
        r"(?i)\byou are now\b|\bnew system prompt\b|\bact as (?:the )?system\b"
    ),
    "prompt-exfiltration": re.compile(
        r"(?i)\b(reveal|print|show|repeat)\b.{0,30}\b(system prompt|instructions|api key|secret)"
    ),
    "fake-role-tag": re.compile(r"(?im)^\s*(?:<\|?(?:system|im_start)\|?>|###\s*system\s*:)"),
}
REDACTED = "[REDACTED]"


class Redactor:
    """Replaces configured secret values and known secret formats."""

    def __init__(self, secrets: Iterable[str] = ()):
        self._values: list[str] = []
        for s in secrets:
            self.add(s)

    def add(self, value: str) -> None:
        value = value.strip()
        # Very short values would redact ordinary words; they are not real keys.
        if len(value) >= MIN_SECRET_CHARS and value not in self._values:
            self._values.append(value)
            self._values.sort(key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, REDACTED)
        for pattern in _SECRET_FORMATS:
            text = pattern.sub(REDACTED, text)
        return text


def for_log(text: str, redact: Callable[[str], str], limit: int = MAX_LOG_CHARS) -> str:
    """A body as a debug log line may show it: redacted whole first (a cut must never
    leave a secret's prefix behind), then capped."""
    text = redact(text)
    if len(text) > limit:
        return f"{text[:limit]}… [{len(text) - limit} more characters]"
    return text


def clean_text(text: str, limit: int = MAX_MESSAGE_CHARS) -> tuple[str, bool]:
    """Control characters out, size capped; whether anything was cut."""
    text = _CONTROL.sub("", text)
    if len(text) > limit:
        return text[:limit] + "\n[truncated by toka]", True
    return text, False


def injection_flags(text: str) -> list[str]:
    return [name for name, pattern in _INJECTION.items() if pattern.search(text)]


def sanitize_request(request: CompletionRequest) -> tuple[CompletionRequest, list[str]]:
    """A sanitized copy of the request and the audit flags it raised (never a refusal)."""
    flags: set[str] = set()
    messages: list[ChatMessage] = []
    total = 0
    for message in request.messages:
        content, cut = clean_text(message.content)
        if cut:
            flags.add("message-truncated")
        total += len(content)
        if total > MAX_REQUEST_CHARS:
            flags.add("request-truncated")
            keep = max(0, len(content) - (total - MAX_REQUEST_CHARS))
            content = content[:keep] + "\n[truncated by toka]"
        if message.role in ("user", "tool"):
            flags.update(f"injection:{f}" for f in injection_flags(content))
        messages.append(message.model_copy(update={"content": content}))
    return request.model_copy(update={"messages": messages}), sorted(flags)
