"""Capability inference from a task's text: warn early when the agent likely lacks one."""

from __future__ import annotations

import re

from toka.api.capabilities import Grant

RULES: list[tuple[re.Pattern[str], str, str, str]] = [
    (re.compile(r"\b(read|review|analy[sz]e|inspect|audit|find)\b", re.I), "fs", "read", "files"),
    (
        re.compile(r"\b(write|fix|edit|create|update|add|generate|changelog)\b", re.I),
        "fs",
        "write",
        "files",
    ),
    (re.compile(r"\bcargo\b", re.I), "shell", "exec", "cargo"),
    (re.compile(r"\bgit\b", re.I), "shell", "exec", "git"),
    (re.compile(r"\b(pytest|python|test suite|run the tests)\b", re.I), "shell", "exec", "python3"),
    (re.compile(r"\bnpm\b", re.I), "shell", "exec", "npm"),
    (re.compile(r"\bmake\b", re.I), "shell", "exec", "make"),
    (re.compile(r"\b(https?://|download|fetch|web page)", re.I), "net", "http", ""),
]


def missing_capabilities(text: str, grant: Grant) -> list[str]:
    """Capabilities the text suggests and the grant has none of (a warning, not a rule)."""
    out: list[str] = []
    for pattern, domain, action, scope in RULES:
        if not pattern.search(text):
            continue
        if domain == "shell":
            ok = grant.permits("shell", "exec", scope) is not None
            need = f"shell:exec:{scope}"
        else:
            ok = f"{domain}:{action}" in grant
            need = f"{domain}:{action}" + (
                ":<glob>" if domain == "fs" else ":<host>" if domain == "net" else ""
            )
        if not ok and need not in out:
            out.append(need)
    return out
