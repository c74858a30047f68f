"""The reporter's promises, with a fake API whose answers the test controls."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from toka.kernel.reporter import Reporter
from toka.kube.client import ApiError


class API:
    """Records each status.run written; can be slowed, or made to fail."""

    def __init__(self) -> None:
        self.writes: list[dict[str, Any]] = []
        self.delay = 0.0
        self.fail_with: Exception | None = None
        self.gate: asyncio.Event | None = None

    async def patch(
        self, res: Any, name: str, body: dict[str, Any], ns: str, **_: Any
    ) -> dict[str, Any]:
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(self.delay)
        if self.fail_with is not None:
            raise self.fail_with
        self.writes.append(body["status"]["run"])
        return body

    def states(self) -> list[str]:
        return [w["tasks"][0]["state"] for w in self.writes]


def reporter(api: API, **kw: Any) -> Reporter:
    r = Reporter(api, "ns", "agent", **kw)  # type: ignore[arg-type]
    r.adopt(None, ["t"])
    return r


async def test_closing_during_an_older_write_still_writes_the_latest_state() -> None:
    api = API()
    r = reporter(api)
    writer = asyncio.create_task(r.flush_loop())
    await asyncio.sleep(0.05)
    api.gate = asyncio.Event()  # the next write hangs until released
    r.task_started("t")
    await asyncio.sleep(0.05)  # the writer is now inside a write of "Running"
    r.task_completed("t", "done")
    closing = asyncio.create_task(r.close(writer))
    await asyncio.sleep(0.05)
    api.gate.set()
    assert await closing
    assert api.states()[-1] == "Succeeded"
    assert writer.done()


async def test_the_first_change_goes_out_at_once_then_at_most_one_write_a_second() -> None:
    api = API()
    r = reporter(api, min_interval=0.5)
    writer = asyncio.create_task(r.flush_loop())
    await asyncio.sleep(0.05)
    base = len(api.writes)
    for i in range(50):
        r.observe(f"step {i}")
        await asyncio.sleep(0.01)
    # 0.5 s of changes, a write at most every 0.5 s: the first at once, then one more.
    assert len(api.writes) - base <= 2
    assert await r.close(writer)
    assert api.writes[-1]["lastObservation"]["message"] == "step 49"


async def test_task_transitions_wait_for_the_interval_like_any_change_and_none_is_lost() -> None:
    api = API()
    r = reporter(api, min_interval=3600)
    writer = asyncio.create_task(r.flush_loop())
    await asyncio.sleep(0.05)  # the leading-edge write of the adopted task
    r.task_started("t")
    await asyncio.sleep(0.05)
    r.task_completed("t", "ok")
    await asyncio.sleep(0.05)
    assert api.states() == ["Pending"]
    assert await r.close(writer)  # at exit the latest state goes out at once
    assert api.states() == ["Pending", "Succeeded"]
    assert api.writes[-1]["tasks"][0]["attempts"] == 1


async def test_an_outage_loses_no_transition_and_never_blocks_the_agent() -> None:
    api = API()
    api.fail_with = httpx.ConnectError("api server down")
    r = reporter(api, min_interval=0.01)
    writer = asyncio.create_task(r.flush_loop())
    r.task_started("t")
    r.observe("working")
    r.task_completed("t", "finished while the API server was down")
    await asyncio.sleep(0.5)
    assert api.writes == []
    assert r.failures >= 2
    api.fail_with = None
    assert await r.close(writer, timeout=10)
    final = api.writes[-1]
    assert final["tasks"][0]["state"] == "Succeeded"
    assert final["tasks"][0]["summary"] == "finished while the API server was down"


async def test_a_403_while_the_role_binding_propagates_is_retried() -> None:
    api = API()
    api.fail_with = ApiError(403, "Forbidden", "agents.toka.dev is forbidden")
    r = reporter(api, min_interval=0.01)
    writer = asyncio.create_task(r.flush_loop())
    r.task_started("t")
    await asyncio.sleep(0.3)
    api.fail_with = None
    assert await r.close(writer)
    assert api.states()[-1] == "Running"


async def test_long_values_are_cut_to_their_schema_bounds_in_bytes_with_a_marker() -> None:
    api = API()
    r = reporter(api)
    r.task_started("t")
    r.task_completed("t", "s" * 10_000)
    r.observe("é" * 10_000)  # 2 bytes each
    r.denial("d" * 10_000)
    snap = r.snapshot()
    summary, observation = snap["tasks"][0]["summary"], snap["lastObservation"]["message"]
    assert summary == "s" * 998 + "…[truncated 9002 bytes]"
    assert observation == "é" * 499 + "…[truncated 19002 bytes]"
    assert all(
        len(text.encode()) <= 1024 for text in (summary, observation, snap["denials"]["last"])
    )
    assert snap["truncatedBytes"] == 9002 + 19002 + 9002


async def test_nothing_cut_leaves_no_truncation_field() -> None:
    r = reporter(API())
    r.task_completed("t", "short")
    assert r.snapshot()["truncatedBytes"] is None


async def test_unset_fields_are_written_as_null_so_nothing_lingers() -> None:
    api = API()
    r = reporter(api)
    r.task_started("t")
    assert r.snapshot()["currentTask"] == "t"
    r.task_completed("t", "ok")
    assert r.snapshot()["currentTask"] is None


async def test_a_new_attempt_adopts_the_earlier_report_and_reruns_only_unfinished_tasks() -> None:
    from toka.api.models import RunStatus, TaskState, TaskStatus

    earlier = RunStatus(
        tasks=[
            TaskStatus(name="one", state=TaskState.SUCCEEDED, attempts=1, summary="x"),
            TaskStatus(name="two", state=TaskState.RUNNING, attempts=1),
        ]
    )
    r = Reporter(API(), "ns", "a")  # type: ignore[arg-type]
    r.adopt(earlier, ["one", "two", "three"])
    states = {t.name: (t.state, t.attempts) for t in r.run.tasks or []}
    assert states == {
        "one": (TaskState.SUCCEEDED, 1),
        "two": (TaskState.PENDING, 1),
        "three": (TaskState.PENDING, 0),
    }
    assert r.run.progress == "1/3"


async def test_a_kernel_restarted_in_its_pod_keeps_the_running_task_running() -> None:
    from toka.api.models import RunStatus, TaskState, TaskStatus

    earlier = RunStatus(
        tasks=[TaskStatus(name="two", state=TaskState.RUNNING, attempts=1)],
        current_task="two",
    )
    r = Reporter(API(), "ns", "a")  # type: ignore[arg-type]
    r.adopt(earlier, ["two"], restarted=True)
    assert [(t.name, t.state, t.attempts) for t in r.run.tasks or []] == [
        ("two", TaskState.RUNNING, 1)
    ]
    assert r.run.current_task == "two"


def test_a_kernel_knows_when_it_starts_again_in_the_same_pod(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from toka.kernel.main import restarted_in_this_pod

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("TOKA_ATTEMPT", "1")
    assert restarted_in_this_pod("uid-a") is False
    assert restarted_in_this_pod("uid-a") is True
    assert restarted_in_this_pod("uid-b") is False
    monkeypatch.setenv("TOKA_ATTEMPT", "2")  # a new attempt is a new pod
    assert restarted_in_this_pod("uid-a") is False


def test_a_key_shaped_follow_up_name_is_refused_not_rewritten() -> None:
    r = reporter(API())
    assert not r.follow_up("sk-ant-api03-abcdefghijklmnop", "x")
    assert r.follow_up("later", "x")
    assert [t.name for t in r.run.tasks or []] == ["t", "later"]
