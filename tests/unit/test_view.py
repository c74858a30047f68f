"""What `toka status` and `toka demo` show, computed from the API objects alone."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from toka.console.view import compute_session_view, render_session

JSON = dict[str, Any]


def session(status: JSON | None = None) -> JSON:
    return {
        "metadata": {"name": "s", "namespace": "ns", "uid": "u"},
        "spec": {
            "agents": [
                {"name": "a", "tasks": [{"name": "t1"}, {"name": "t2"}]},
                {"name": "b", "tasks": [{"name": "t"}]},
            ]
        },
        **({"status": status} if status else {}),
    }


def agent(name: str, run: JSON, attempts: int = 1) -> JSON:
    return {
        "metadata": {"name": f"s-{name}"},
        "spec": {"name": name},
        "status": {"attempts": attempts, "run": run},
    }


def test_a_new_session_lists_its_agents_as_pending_with_their_task_counts() -> None:
    view = compute_session_view(session(), [])
    assert [(r.name, r.phase, r.done, r.total) for r in view.agents] == [
        ("a", "Pending", 0, 2),
        ("b", "Pending", 0, 1),
    ]
    assert (view.phase, view.total, view.finished) == ("Pending", 3, False)


def test_a_running_agent_shows_its_task_progress_tokens_and_last_observation() -> None:
    status = {
        "phase": "Running",
        "progress": "1/3",
        "members": [
            {"name": "a", "phase": "Running", "progress": "1/2"},
            {"name": "b", "phase": "Pending"},
        ],
        "usage": {"inputTokens": 100, "outputTokens": 20},
    }
    run = {
        "currentTask": "t2",
        "progress": "1/2",
        "usage": {"inputTokens": 100, "outputTokens": 20},
        "lastObservation": {"message": "compiling"},
        "denials": {"count": 2},
        "tasks": [{"name": "t1", "state": "Succeeded", "summary": "did t1"}],
    }
    view = compute_session_view(session(status), [agent("a", run)])
    a = view.agents[0]
    assert (a.task, a.done, a.total, a.tokens, a.denials, a.note) == (
        "t2",
        1,
        2,
        120,
        2,
        "compiling",
    )
    assert view.tokens == 120
    text = _text(view)
    assert "compiling" in text
    assert "[2 denied]" in text


def test_a_failed_task_shows_its_error_rather_than_chatter() -> None:
    run = {
        "lastObservation": {"message": "retrying"},
        "tasks": [{"name": "t1", "state": "Failed", "error": "tests still fail"}],
    }
    status = {"phase": "Failed", "members": [{"name": "a", "phase": "Failed"}]}
    view = compute_session_view(session(status), [agent("a", run, attempts=3)])
    assert view.agents[0].note == "tests still fail"
    assert view.finished


def _text(view: Any) -> str:
    console = Console(width=200, record=True)
    console.print(render_session(view))
    return console.export_text()


def test_a_succeeded_session_shows_its_result_and_how_to_export_it() -> None:
    status = {
        "phase": "Succeeded",
        "result": {
            "commit": "0123456789abcdef" * 2 + "01234567",
            "base": "f" * 40,
            "filesChanged": 4,
            "insertions": 38,
            "deletions": 2,
            "pushedRef": "refs/heads/toka/s/result",
        },
    }
    view = compute_session_view(session(status), [])
    assert view.result == (
        "0123456789ab: 4 files changed, +38 -2, pushed to refs/heads/toka/s/result"
    )
    assert "toka export s -n ns --patch FILE" in _text(view)


def test_a_session_without_a_result_shows_no_result_line() -> None:
    view = compute_session_view(session({"phase": "Running"}), [])
    assert view.result == ""
    assert "result" not in _text(view)
