"""Dependency order of a session's agents, and the cycle named when there is one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def find_cycle(deps: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A cycle as a path that returns to its start (`a → b → a`), or None."""
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(deps, white)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        color[node] = grey
        stack.append(node)
        for dep in deps.get(node, ()):
            if dep not in color:
                continue
            if color[dep] == grey:
                return [*stack[stack.index(dep) :], dep]
            if color[dep] == white:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        color[node] = black
        return None

    for node in deps:
        if color[node] == white:
            found = visit(node)
            if found:
                return found
    return None


def dependents(deps: Mapping[str, Sequence[str]], failed: set[str]) -> set[str]:
    """Every agent that transitively depends on one in `failed`."""
    out: set[str] = set()
    changed = True
    while changed:
        changed = False
        for node, ds in deps.items():
            if node not in out and any(d in failed or d in out for d in ds):
                out.add(node)
                changed = True
    return out
