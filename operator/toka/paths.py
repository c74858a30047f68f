"""Workspace paths and the globs of the capability grammar that match them, in one place.

Standard library only: the kernel checks grants with these, and the tools
sidecar (which may import nothing else of Toka's) opens files by the same
canonical spelling and builds its Landlock rules from the same globs.
Globs are `/`-separated; `*` and `?` match within a segment, a `**` segment
matches any number of whole segments.
"""

from __future__ import annotations

import re
from functools import lru_cache


@lru_cache(maxsize=1024)
def glob_regex(glob: str) -> re.Pattern[str]:
    parts: list[str] = []
    segments = glob.split("/")
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == "**":
            # Zero or more whole segments; as the last segment, also matches the rest.
            parts.append(r"(?:[^/]+(?:/[^/]+)*)?" if last else r"(?:[^/]+/)*")
            continue
        body = "".join(
            "[^/]*" if ch == "*" else "[^/]" if ch == "?" else re.escape(ch) for ch in seg
        )
        parts.append(body if last else body + "/")
    return re.compile("".join(parts))


class PathError(ValueError):
    """A workspace path with no canonical form: refused, never guessed at."""


def canonical_path(path: str, *, directory: bool = False) -> str:
    """The one spelling of a workspace path that grants are matched on and files opened by.

    `/`-separated segments without empty or `.` ones: `./a//b` is `a/b`, and the
    workspace itself is `""`. Refused: absolute paths, `..`, NUL, and, for a file,
    a path ending in `/` or `/.` or naming the workspace, since that names a
    directory (the OS would open the directory, or refuse, not a file of that name).
    """
    if "\x00" in path:
        raise PathError("paths may not contain NUL bytes")
    if path.startswith("/"):
        raise PathError(
            f"absolute paths are not allowed: {path!r}; use a path relative to the workspace"
        )
    raw = path.split("/")
    if ".." in raw:
        raise PathError(f"'..' is not allowed in paths: {path!r}")
    segments = [s for s in raw if s not in ("", ".")]
    if not directory and (not segments or raw[-1] in ("", ".")):
        raise PathError(f"{path!r} names a directory, not a file; list it with fs.list")
    return "/".join(segments)
