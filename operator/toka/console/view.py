"""A session's state as a person reads it: pure rows from the API objects, then rich.

`compute_session_view` is pure (session and Agent objects in, rows out), so
`toka status` on a real cluster and `toka demo` on the dev cluster show the
same thing, and the view is tested without a terminal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

JSON = dict[str, Any]
FINAL = ("Succeeded", "Failed")
PHASE_STYLE = {
    "Succeeded": "green",
    "Failed": "red",
    "Running": "cyan",
    "Pending": "yellow",
    "Skipped": "dim",
    "Suspended": "magenta",
}


@dataclass(frozen=True)
class AgentRow:
    name: str
    phase: str
    task: str
    done: int
    total: int
    tokens: int
    attempts: int
    denials: int
    note: str


@dataclass(frozen=True)
class SessionView:
    name: str
    namespace: str
    phase: str
    done: int
    total: int
    tokens: int
    budget: int | None
    message: str
    agents: list[AgentRow] = field(default_factory=list)
    result: str = ""  # "<commit>: N files changed, +I -D", once the session has a result

    @property
    def finished(self) -> bool:
        return self.phase in FINAL


def _fraction(progress: str | None) -> tuple[int, int]:
    try:
        done, total = (progress or "0/0").split("/", 1)
        return int(done), int(total)
    except ValueError:
        return 0, 0


def compute_session_view(session: JSON, agents: list[JSON]) -> SessionView:
    status = session.get("status") or {}
    by_member = {(a.get("spec") or {}).get("name") or a["metadata"]["name"]: a for a in agents}
    rows = []
    for member in status.get("members") or [
        {"name": t["name"], "phase": "Pending"} for t in session["spec"].get("agents", [])
    ]:
        obj = by_member.get(member["name"], {})
        ast = obj.get("status") or {}
        run = ast.get("run") or {}
        tasks = run.get("tasks") or []
        done, total = _fraction(member.get("progress") or run.get("progress"))
        if not total:
            spec_tasks: list[JSON] = next(
                (
                    t.get("tasks", [])
                    for t in session["spec"].get("agents", [])
                    if t["name"] == member["name"]
                ),
                [],
            )
            total = len(spec_tasks)
        usage = run.get("usage") or {}
        failed = next((t for t in tasks if t.get("state") == "Failed"), None)
        summary = next((t.get("summary") for t in reversed(tasks) if t.get("summary")), None)
        note = (
            (failed or {}).get("error")
            or (run.get("lastObservation") or {}).get("message")
            or summary
            or ast.get("message")
            or ""
        )
        rows.append(
            AgentRow(
                name=member["name"],
                phase=member.get("phase") or "Pending",
                task=run.get("currentTask") or "",
                done=done,
                total=total,
                tokens=int(usage.get("inputTokens", 0)) + int(usage.get("outputTokens", 0)),
                attempts=int(ast.get("attempts") or 0),
                denials=int((run.get("denials") or {}).get("count", 0)),
                note=str(note).replace("\n", " ")[:120],
            )
        )
    done, total = _fraction(status.get("progress"))
    usage = status.get("usage") or {}
    result = status.get("result") or {}
    return SessionView(
        name=session["metadata"]["name"],
        namespace=session["metadata"].get("namespace", ""),
        phase=status.get("phase") or "Pending",
        done=done,
        total=total or sum(r.total for r in rows),
        tokens=int(usage.get("inputTokens", 0)) + int(usage.get("outputTokens", 0)),
        budget=(status.get("budget") or {}).get("limitTokens"),
        message=status.get("message") or "",
        agents=rows,
        result=(
            f"{result['commit'][:12]}: {result.get('filesChanged', 0)} files changed, "
            f"+{result.get('insertions', 0)} -{result.get('deletions', 0)}"
            + (f", pushed to {result['pushedRef']}" if result.get("pushedRef") else "")
            if result.get("commit")
            else ""
        ),
    )


def render_session(view: SessionView) -> RenderableType:
    style = PHASE_STYLE.get(view.phase, "")
    head = Text.assemble(
        ("AgentSession ", "bold"),
        (f"{view.namespace}/{view.name}", "bold"),
        "  ",
        (view.phase, f"bold {style}"),
        f"  {view.done}/{view.total} tasks  {view.tokens:,} tokens"
        + (f" of {view.budget:,}" if view.budget else ""),
    )
    filled = round(40 * view.done / view.total) if view.total else 0
    bar = Text.assemble(("━" * filled, style or "cyan"), ("━" * (40 - filled), "grey30"))
    table = Table(box=None, pad_edge=False, expand=False)
    for col in ("agent", "phase", "task", "progress", "tokens", "tries", "last"):
        table.add_column(col, no_wrap=col != "last", max_width=60 if col == "last" else None)
    for row in view.agents:
        table.add_row(
            row.name,
            Text(row.phase, style=PHASE_STYLE.get(row.phase, "")),
            row.task,
            f"{row.done}/{row.total}",
            f"{row.tokens:,}",
            str(row.attempts or ""),
            Text(row.note + (f"  [{row.denials} denied]" if row.denials else ""), style="dim"),
        )
    parts: list[RenderableType] = [head, bar, table]
    if view.message:
        parts.append(Text(view.message, style="dim"))
    if view.result:
        parts.append(
            Text.assemble(
                ("result ", "bold"),
                view.result,
                (f"  (toka export {view.name} -n {view.namespace} --patch FILE)", "dim"),
            )
        )
    return Group(*parts)
