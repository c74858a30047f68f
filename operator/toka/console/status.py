"""`toka status`: a session's agents, phases, tasks, progress and tokens, on any cluster."""

from __future__ import annotations

import asyncio

from rich.console import Console, Group, RenderableType
from rich.live import Live

from toka.console.view import SessionView, compute_session_view, render_session
from toka.kube.client import AGENTS, SESSIONS, ApiError, AsyncKube
from toka.kube.config import KubeConfig

REFRESH_SECONDS = 1.0


async def read_views(kube: AsyncKube, namespace: str, session: str | None) -> list[SessionView]:
    """The named session, or every session of the namespace."""
    if session is not None:
        sessions = [await kube.get(SESSIONS, session, namespace)]
    else:
        sessions = (await kube.list(SESSIONS, namespace))["items"]
    agents = (await kube.list(AGENTS, namespace))["items"]
    views = []
    for s in sessions:
        uid = s["metadata"]["uid"]
        mine = [
            a
            for a in agents
            if any(r.get("uid") == uid for r in a["metadata"].get("ownerReferences") or [])
        ]
        views.append(compute_session_view(s, mine))
    return views


def _render(views: list[SessionView]) -> RenderableType:
    return Group(*(render_session(v) for v in views)) if views else "no AgentSessions here"


async def show(
    config: KubeConfig,
    namespace: str,
    session: str | None,
    *,
    watch: bool,
    console: Console | None = None,
) -> int:
    console = console or Console()
    async with AsyncKube(config) as kube:
        try:
            views = await read_views(kube, namespace, session)
        except ApiError as err:
            console.print(f"[red]{err}[/red]")
            return 1
        if not watch:
            console.print(_render(views))
            return 0
        with Live(_render(views), console=console, refresh_per_second=4) as live:
            while not (session is not None and all(v.finished for v in views)):
                await asyncio.sleep(REFRESH_SECONDS)
                try:
                    views = await read_views(kube, namespace, session)
                except (ApiError, OSError) as err:
                    console.print(f"[yellow]reading status: {err}[/yellow]")
                    continue
                live.update(_render(views))
    return 0 if all(v.phase != "Failed" for v in views) else 1
