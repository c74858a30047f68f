"""The capability grammar: parse, match, narrow — default deny.

One module owns the grammar so that the CRD's `pattern` (generated from
`CAPABILITY_PATTERN`), the kernel's checks and the operator's spawn narrowing
can never disagree. Everything here is pure and allocation-light: the kernel
calls `Grant.permits` on every request. The design: docs/architecture.md,
Capabilities.

Grammar: `domain:action[:scope]`

    llm:complete
    fs:read:<glob>      fs:write:<glob>      relative to /workspace
    shell:exec:<program>                     a program name, never a path
    net:http:<host>                          `*`, `*.example.com` or `example.com`
    agent:spawn
    mcp:<server>:<tool-glob>                 a server of spec.mcpServers, a glob over its tools

Globs: `/`-separated segments; `*` and `?` match within a segment, a `**`
segment matches any number of segments. `.` and `..` segments and absolute
paths cannot be written, so a grant cannot escape the workspace textually; the
tools sidecar still resolves symlinks before touching a file. A tool glob has no
segments: `*` and `?` match within an MCP tool name, and `*` alone is every tool.

A path is matched only in its canonical spelling (`canonical_path`), the one
the tools sidecar opens: were `./Makefile` matched as written, `*/*` would let
an agent overwrite `Makefile`, which that grant does not name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from toka.paths import PathError, canonical_path, glob_regex

# Aliases from the original system's capability names. One table, tested.
ALIASES: dict[str, tuple[str, ...]] = {
    "filesystem-read": ("fs:read:**",),
    "filesystem-write": ("fs:write:**",),
    "analysis": ("fs:read:**",),
    "reporting": ("fs:write:reports/**",),
    "cargo-execution": ("shell:exec:cargo",),
    "git-access": ("shell:exec:git",),
    "npm-execution": ("shell:exec:npm",),
    "python-execution": ("shell:exec:python3",),
    "make-execution": ("shell:exec:make",),
    "go-execution": ("shell:exec:go",),
    "network-access": ("net:http:*",),
    "llm-access": ("llm:complete",),
    "agent-spawning": ("agent:spawn",),
}

MAX_CAPABILITY_LENGTH = 256

# Building blocks, written so they compile as RE2 (Go, for the CRD `pattern`)
# and as Python `re` alike: no lookarounds, no backreferences.
_GLOB_CHAR = r"[A-Za-z0-9_\-*?+@=,]"
_GLOB_CHAR_DOT = r"[A-Za-z0-9_\-*?+@=,.]"
# A segment is anything but empty, `.` or `..`.
_SEGMENT = (
    rf"(?:{_GLOB_CHAR}{_GLOB_CHAR_DOT}*"
    rf"|\.{_GLOB_CHAR}{_GLOB_CHAR_DOT}*"
    rf"|\.\.{_GLOB_CHAR_DOT}+)"
)
GLOB_PATTERN = rf"{_SEGMENT}(?:/{_SEGMENT})*"
PROGRAM_PATTERN = r"[A-Za-z0-9_+\-][A-Za-z0-9_+.\-]*"
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
HOST_PATTERN = rf"(?:\*|(?:\*\.)?{_LABEL}(?:\.{_LABEL})*)"
# MCP tool names are letters, digits, `_`, `-` and `.` (the MCP spec's advice), at most 128:
# the one definition, for the grammar, the CRD's status and the kernel's MCP client.
_TOOL_CHARS = r"A-Za-z0-9_\-."
TOOL_GLOB_PATTERN = rf"[{_TOOL_CHARS}*?]+"
MAX_TOOL_NAME = 128
TOOL_NAME_PATTERN = rf"^[{_TOOL_CHARS}]+$"
_TOOL_NAME_RE = re.compile(rf"[{_TOOL_CHARS}]{{1,{MAX_TOOL_NAME}}}")
# How the kernel names an MCP tool to the agent and the LLM: mcp__<server>__<tool>.
MCP_PREFIX = "mcp__"

CANONICAL_PATTERN = (
    r"llm:complete"
    r"|agent:spawn"
    rf"|fs:(?:read|write):{GLOB_PATTERN}"
    rf"|shell:exec:{PROGRAM_PATTERN}"
    rf"|net:http:{HOST_PATTERN}"
    rf"|mcp:{_LABEL}:{TOOL_GLOB_PATTERN}"
)
ALIAS_PATTERN = "|".join(re.escape(a) for a in sorted(ALIASES))
# The pattern the CRD carries: anchored, canonical forms or an alias.
CAPABILITY_PATTERN = rf"^(?:{CANONICAL_PATTERN}|{ALIAS_PATTERN})$"

_CAPABILITY_RE = re.compile(CAPABILITY_PATTERN)


class CapabilityError(ValueError):
    """A capability string that does not follow the grammar."""


def _is_canonical(path: str, *, directory: bool) -> bool:
    try:
        return canonical_path(path, directory=directory) == path
    except PathError:
        return False


@dataclass(frozen=True, slots=True)
class Capability:
    """One parsed, canonical capability."""

    domain: str
    action: str
    scope: str = ""

    def __str__(self) -> str:
        return f"{self.domain}:{self.action}:{self.scope}" if self.scope else self.key

    @property
    def key(self) -> str:
        """`domain:action`, the part a request names before its target."""
        return f"{self.domain}:{self.action}"

    def permits(self, domain: str, action: str, target: str = "") -> bool:
        """Whether this capability allows `domain:action` on `target`."""
        if domain != self.domain or action != self.action:
            return False
        if self.domain == "fs":
            listing = target == "" or target.endswith("/")
            name = target[:-1] if target.endswith("/") else target
            if target == "/" or not _is_canonical(name, directory=listing):
                # Another spelling of a path would be opened as its canonical form, which
                # this glob was never matched against: `*/*` must not reach `./Makefile`.
                return False
            if listing:
                # A directory listing shows every name in it: the grant must cover them all.
                return glob_covers(self.scope, target + "*")
            return glob_regex(self.scope).fullmatch(target) is not None
        if self.domain == "shell":
            return target == self.scope
        if self.domain == "net":
            return host_matches(self.scope, target)
        if self.domain == "mcp":
            return tool_matches(self.scope, target)
        return True

    def covers(self, other: Capability) -> bool:
        """Whether `other` is equal to or narrower than this capability.

        Textual and conservative: when in doubt, it is not narrower. This is
        what a spawned child's capabilities are checked against.
        """
        if (other.domain, other.action) != (self.domain, self.action):
            return False
        if self.domain == "fs":
            return glob_covers(self.scope, other.scope)
        if self.domain == "net":
            return host_covers(self.scope, other.scope)
        if self.domain == "mcp":
            return _segment_covers(self.scope, other.scope)
        return self.scope == other.scope


def is_valid(text: str) -> bool:
    """Whether `text` is a capability or an alias the grammar accepts."""
    return len(text) <= MAX_CAPABILITY_LENGTH and _CAPABILITY_RE.fullmatch(text) is not None


def parse(text: str) -> tuple[Capability, ...]:
    """Parse one capability string, expanding an alias into its canonical forms."""
    if len(text) > MAX_CAPABILITY_LENGTH:
        raise CapabilityError(f"capability is longer than {MAX_CAPABILITY_LENGTH} characters")
    if text in ALIASES:
        return tuple(_parse_canonical(c) for c in ALIASES[text])
    if _CAPABILITY_RE.fullmatch(text) is None:
        raise CapabilityError(
            f"{text!r} is not a capability: expected llm:complete, agent:spawn, "
            "fs:read:<glob>, fs:write:<glob> (relative, no '..'), shell:exec:<program>, "
            "net:http:<host>, mcp:<server>:<tool-glob> (a server of spec.mcpServers), "
            f"or one of the aliases {', '.join(sorted(ALIASES))}"
        )
    return (_parse_canonical(text),)


def _parse_canonical(text: str) -> Capability:
    domain, action, *rest = text.split(":", 2)
    return Capability(domain, action, rest[0] if rest else "")


@dataclass(frozen=True, slots=True)
class Grant:
    """The set of capabilities an agent holds; everything else is denied."""

    capabilities: tuple[Capability, ...] = ()

    @classmethod
    def from_strings(cls, texts: list[str] | tuple[str, ...]) -> Grant:
        caps: list[Capability] = []
        for text in texts:
            for cap in parse(text):
                if cap not in caps:
                    caps.append(cap)
        return cls(tuple(caps))

    def permits(self, domain: str, action: str, target: str = "") -> Capability | None:
        """The capability that allows the request, or None (denied)."""
        for cap in self.capabilities:
            if cap.permits(domain, action, target):
                return cap
        return None

    def covers(self, requested: Capability) -> bool:
        """Whether `requested` is equal to or narrower than one held capability."""
        return any(cap.covers(requested) for cap in self.capabilities)

    def __contains__(self, key: str) -> bool:
        return any(cap.key == key for cap in self.capabilities)

    def strings(self) -> list[str]:
        return [str(c) for c in self.capabilities]


def glob_covers(parent: str, child: str) -> bool:
    """Whether every path `child` matches is matched by `parent` (textually)."""
    return _segments_cover(tuple(parent.split("/")), tuple(child.split("/")))


@lru_cache(maxsize=1024)
def _segments_cover(parent: tuple[str, ...], child: tuple[str, ...]) -> bool:
    if not parent:
        return not child
    head, rest = parent[0], parent[1:]
    if head == "**":
        if not rest:
            # A trailing `**` matches below its directory, never the directory itself:
            # `a/**` does not cover a file named `a`.
            return bool(child)
        # Elsewhere `**` absorbs zero or more of the child's segments, including its own `**`.
        return any(_segments_cover(rest, child[i:]) for i in range(len(child) + 1))
    if not child or child[0] == "**":
        return False
    return _segment_covers(head, child[0]) and _segments_cover(rest, child[1:])


@lru_cache(maxsize=1024)
def _segment_covers(parent: str, child: str) -> bool:
    """Within one segment: parent's `*` absorbs anything, `?` one non-`*` character."""
    if not parent:
        return not child
    p = parent[0]
    if p == "*":
        return any(_segment_covers(parent[1:], child[i:]) for i in range(len(child) + 1))
    if not child:
        return False
    c = child[0]
    if p == "?":
        return c != "*" and _segment_covers(parent[1:], child[1:])
    return p == c and _segment_covers(parent[1:], child[1:])


def is_tool_name(tool: str) -> bool:
    """Whether `tool` is an MCP tool name Toka accepts: 1-128 of A-Z a-z 0-9 _ - ."""
    return _TOOL_NAME_RE.fullmatch(tool) is not None


def tool_matches(pattern: str, tool: str) -> bool:
    """Whether an MCP tool glob matches a tool name; a name outside the MCP charset never does."""
    return is_tool_name(tool) and _segment_covers(pattern, tool)


def host_matches(pattern: str, host: str) -> bool:
    """`*` matches any host; `*.x` any subdomain of x; otherwise exact (case-insensitive)."""
    host = host.lower().rstrip(".")
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern


def host_covers(parent: str, child: str) -> bool:
    if parent == "*":
        return True
    if child == "*":
        return False
    if parent.startswith("*."):
        return child.endswith(parent[1:])
    return parent == child
