"""The tools the kernel offers, their argument schemas, and the capability each needs.

The agent learns from the kernel which tools its capabilities allow; the LLM
sees these schemas; the gateway validates its tool-call arguments against
them; the kernel checks the capability on every call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from toka.llm.types import ToolSpec

JSON = dict[str, Any]
MAX_PATH = 1024
MAX_ARGV = 64
MAX_ARG = 4096


@dataclass(frozen=True)
class ToolDef:
    name: str  # as the API names it: fs.read
    domain: str
    action: str
    target: Callable[[JSON], str]  # what the capability's scope is matched against
    spec: ToolSpec  # its name is `name` with "_" for "." (LLM tool names have no dots)


_PATH = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_PATH,
    "description": "Path relative to the workspace, e.g. src/app.py",
}

TOOLS: dict[str, ToolDef] = {
    t.name: t
    for t in [
        ToolDef(
            "fs.read",
            "fs",
            "read",
            lambda a: str(a.get("path", "")),
            ToolSpec(
                name="fs_read",
                description="Read a text file from the workspace.",
                parameters={
                    "type": "object",
                    "properties": {"path": _PATH},
                    "required": ["path"],
                    "additionalProperties": False,
                },
            ),
        ),
        ToolDef(
            "fs.write",
            "fs",
            "write",
            lambda a: str(a.get("path", "")),
            ToolSpec(
                name="fs_write",
                description="Write (create or replace) a text file in the workspace.",
                parameters={
                    "type": "object",
                    "properties": {
                        "path": _PATH,
                        "content": {"type": "string", "maxLength": 1_000_000},
                    },
                    "required": ["path", "content"],
                    "additionalProperties": False,
                },
            ),
        ),
        ToolDef(
            "fs.list",
            "fs",
            "read",
            lambda a: _dir(str(a.get("path") or "")),
            ToolSpec(
                name="fs_list",
                description="List files under a workspace directory (recursively): "
                "those your capabilities let you read.",
                parameters={
                    "type": "object",
                    "properties": {"path": {**_PATH, "minLength": 0}},
                    "additionalProperties": False,
                },
            ),
        ),
        ToolDef(
            "shell.exec",
            "shell",
            "exec",
            lambda a: str((a.get("argv") or [""])[0]),
            ToolSpec(
                name="shell_exec",
                description="Run a program with arguments (argv, no shell) in the workspace.",
                parameters={
                    "type": "object",
                    "properties": {
                        "argv": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": MAX_ARGV,
                            "items": {"type": "string", "maxLength": MAX_ARG},
                        },
                        "timeout_seconds": {"type": "integer", "minimum": 1, "maximum": 600},
                    },
                    "required": ["argv"],
                    "additionalProperties": False,
                },
            ),
        ),
        ToolDef(
            "http.fetch",
            "net",
            "http",
            lambda a: _host(str(a.get("url", ""))),
            ToolSpec(
                name="http_fetch",
                description="Fetch a URL over HTTP(S) (public addresses only).",
                parameters={
                    "type": "object",
                    "properties": {
                        "url": {"type": "string", "minLength": 1, "maxLength": 2048},
                        "method": {"enum": ["GET", "HEAD", "POST"]},
                        "body": {"type": "string", "maxLength": 100_000},
                    },
                    "required": ["url"],
                    "additionalProperties": False,
                },
            ),
        ),
    ]
}

FINISH_TASK = ToolSpec(
    name="finish_task",
    description="Finish the current task: status succeeded or failed, with a summary of what was "
    "done (or why it failed). The task ends only through this call.",
    parameters={
        "type": "object",
        "properties": {
            "status": {"enum": ["succeeded", "failed"]},
            "summary": {"type": "string", "minLength": 1, "maxLength": 1024},
        },
        "required": ["status", "summary"],
        "additionalProperties": False,
    },
)

# A message to the kernel (SpawnSubAgent), offered as a tool when the agent holds agent:spawn.
SPAWN_AGENT = ToolSpec(
    name="spawn_agent",
    description="Ask for a sub-agent with its own tasks. Its capabilities must each be equal "
    "to or narrower than one of yours; the operator decides and creates it.",
    parameters={
        "type": "object",
        "properties": {
            "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$"},
            "capabilities": {
                "type": "array",
                "maxItems": 64,
                "items": {"type": "string", "maxLength": 256},
            },
            "tasks": {
                "type": "array",
                "minItems": 1,
                "maxItems": 16,
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "minLength": 1, "maxLength": 63},
                        "description": {"type": "string", "minLength": 1, "maxLength": 4096},
                    },
                    "required": ["name", "description"],
                    "additionalProperties": False,
                },
            },
        },
        "required": ["name", "tasks"],
        "additionalProperties": False,
    },
)


def _dir(path: str) -> str:
    """Listing a directory reads the names under it: `src` is checked as `src/`, the
    workspace as "". The kernel passes the canonical path, the one tools list; any other
    spelling stays as it is, which no grant matches."""
    return path + "/" if path else ""


def _host(url: str) -> str:
    from urllib.parse import urlsplit

    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""
