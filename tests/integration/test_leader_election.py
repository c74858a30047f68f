"""Two operator replicas and a Lease: one reconciles, the other takes over when it dies.

Both replicas are real processes against a real API server; the Lease, the
objects and their creations are observed through the API server, never
through the operator's own account of itself.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import NodeAgentProcess, OperatorProcess
from tests.helpers import wait_for
from tests.sessions import Recorder, agent, call, finish, put_recordings, recording, session
from toka.controller.leader import microtime
from toka.kube.client import (
    AGENTS,
    CONFIGMAPS,
    LEASES,
    PODS,
    ROLEBINDINGS,
    ROLES,
    SERVICEACCOUNTS,
    SESSIONS,
    ApiError,
    AsyncKube,
)

pytestmark = pytest.mark.controlplane
LEASE, RENEW, RETRY = 4.0, 3.0, 0.5
LAYERS, WIDTH = 4, 5


def election_args(namespace: str) -> list[str]:
    return [
        "--leader-elect",
        "--leader-election-namespace",
        namespace,
        "--lease-duration",
        f"{LEASE}s",
        "--renew-deadline",
        f"{RENEW}s",
        "--retry-period",
        f"{int(RETRY * 1000)}ms",
    ]


@pytest.fixture
def replicas(
    kubeconfig: Path, namespace: str, node_agent: NodeAgentProcess, tmp_path: Path
) -> Iterator[tuple[OperatorProcess, OperatorProcess]]:
    pair = tuple(
        OperatorProcess(kubeconfig, namespace, tmp_path / f"{n}.log", election_args(namespace))
        for n in ("a", "b")
    )
    try:
        yield pair  # type: ignore[misc]
    finally:
        for op in pair:
            op.stop()
            print(f"--- {op.log.name} (last 4000 characters)")
            print(op.log.read_text(errors="replace")[-4000:] if op.log.exists() else "")


def identity_of(op: OperatorProcess) -> re.Pattern[str]:
    assert op.proc is not None
    return re.compile(rf".*_{op.proc.pid}$")


async def holder(kube: AsyncKube, namespace: str) -> str | None:
    try:
        lease = await kube.get(LEASES, "toka-operator", namespace)
    except ApiError as err:
        if err.not_found:
            return None
        raise
    return (lease.get("spec") or {}).get("holderIdentity") or None


async def wait_holder(
    kube: AsyncKube, namespace: str, who: re.Pattern[str], timeout: float
) -> float:
    """When the Lease named `who` as its holder (monotonic), polled every 50 ms."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = await holder(kube, namespace)
        if current and who.match(current):
            return time.monotonic()
        await asyncio.sleep(0.05)
    raise AssertionError(f"the Lease was not taken by {who.pattern} in {timeout}s: {current}")


async def test_a_standby_takes_over_a_killed_leader_and_the_session_completes_without_duplicates(
    kube: AsyncKube,
    namespace: str,
    replicas: tuple[OperatorProcess, OperatorProcess],
    kubeconfig: Path,
    tmp_path: Path,
) -> None:
    leader, standby = replicas
    names = [f"l{i}-{j}" for i in range(LAYERS) for j in range(WIDTH)]
    await put_recordings(
        kube,
        namespace,
        "rec",
        {
            n: recording(
                n,
                {"t": [call("fs_write", path=f"out/{n}.txt", content=n), finish(f"{n} wrote")]},
            )
            for n in names
        },
    )
    leader.start()
    await wait_holder(kube, namespace, identity_of(leader), timeout=30)
    standby.start()
    body = session(
        "big",
        [
            agent(
                n,
                caps=["llm:complete", "fs:write:out/**"],
                depends=[f"l{i - 1}-{j}"] if i else None,
            )
            for i in range(LAYERS)
            for j in range(WIDTH)
            for n in [f"l{i}-{j}"]
        ],
        limits={"requestsPerMinute": 6000, "maxParallelAgents": 6},
        workspace={"configMap": "seed"},
    )
    await kube.create(
        CONFIGMAPS,
        {"metadata": {"name": "seed"}, "data": {"README.md": "# seed\n"}},
        namespace,
    )
    watched = (
        ("agent", AGENTS),
        ("pod", PODS),
        ("serviceaccount", SERVICEACCOUNTS),
        ("role", ROLES),
        ("rolebinding", ROLEBINDINGS),
        ("configmap", CONFIGMAPS),
    )
    async with Recorder(kube, namespace, kinds=watched) as seen:
        await kube.create(SESSIONS, body, namespace)
        # The middle of the session: the first layer done, later layers not yet started.
        await wait_for(
            kube,
            SESSIONS,
            "big",
            namespace,
            lambda s: int(((s.get("status") or {}).get("progress") or "0/20").split("/")[0]) >= 5,
            timeout=120,
            what="five agents done",
        )
        assert leader.proc is not None
        killed = time.monotonic()
        leader.kill()
        took_over = await wait_holder(kube, namespace, identity_of(standby), timeout=LEASE * 4)
        takeover = took_over - killed
        print(f"standby took over {takeover:.2f}s after the leader was killed (lease {LEASE}s)")
        # The standby waits one lease duration from the last renewal it saw change, and
        # looks once per retry period.
        assert takeover <= LEASE + 2 * RETRY, takeover
        done = await wait_for(
            kube,
            SESSIONS,
            "big",
            namespace,
            lambda s: (s.get("status") or {}).get("phase") in ("Succeeded", "Failed"),
            timeout=300,
            what="a final phase",
        )
    assert done["status"]["phase"] == "Succeeded", done["status"]

    expected = {
        "agent": Counter(f"big-{n}" for n in names),
        "pod": Counter(f"big-{n}-1" for n in names),
        "serviceaccount": Counter(f"big-{n}" for n in names),
        "role": Counter(f"big-{n}" for n in names),
        "rolebinding": Counter(f"big-{n}" for n in names),
    }
    for kind, want in expected.items():
        got = Counter(name for name, _ in seen.created(kind) if name != "default")
        assert got == want, f"{kind}: duplicated {got - want}, missing {want - got}"
    configmaps = Counter(name for name, _ in seen.created("configmap"))
    assert all(n == 1 for n in configmaps.values()), configmaps

    # No result lost: every agent's summary, and the session's result holds every file.
    for n in names:
        obj = await kube.get(AGENTS, f"big-{n}", namespace)
        tasks = obj["status"]["run"]["tasks"]
        assert [(t["state"], t["summary"]) for t in tasks] == [("Succeeded", f"{n} wrote")]
    out = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "toka.cli",
            "export",
            "big",
            "-n",
            namespace,
            "--dir",
            str(tmp_path / "d"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
    )
    assert out.returncode == 0, out.stderr
    files = sorted(
        str(p.relative_to(tmp_path / "d")) for p in (tmp_path / "d").rglob("*") if p.is_file()
    )
    assert files == sorted(["README.md", *(f"out/{n}.txt" for n in names)])
    assert standby.proc is not None
    assert standby.proc.poll() is None, "the new leader is still running"


async def test_a_leader_that_loses_its_lease_stops_writing_at_once(
    kube: AsyncKube, namespace: str, replicas: tuple[OperatorProcess, OperatorProcess]
) -> None:
    leader, _ = replicas
    leader.start()
    await wait_holder(kube, namespace, identity_of(leader), timeout=30)
    suspended = {"suspend": True, "tasks": [{"name": "t", "description": "x"}]}
    kind = {"apiVersion": "toka.dev/v1alpha1", "kind": "Agent"}
    await kube.create(
        AGENTS, {**kind, "metadata": {"name": "before"}, "spec": suspended}, namespace
    )
    await wait_for(
        kube,
        AGENTS,
        "before",
        namespace,
        lambda a: (a.get("status") or {}).get("phase") == "Suspended",
        timeout=30,
        what="the leader's status",
    )

    lease = await kube.get(LEASES, "toka-operator", namespace)
    lease["spec"] = {
        **lease["spec"],
        "holderIdentity": "someone-else",
        "leaseDurationSeconds": 3600,
        "renewTime": microtime(),
    }
    await kube.replace(LEASES, "toka-operator", lease, namespace)
    stolen = time.monotonic()
    assert leader.proc is not None
    rc = await asyncio.to_thread(leader.proc.wait, 30)
    stopped = time.monotonic() - stolen
    print(f"the old leader stopped {stopped:.2f}s after its lease was taken (retry {RETRY}s)")
    assert rc == 1
    assert "lost the lease" in leader.log.read_text()
    # It stopped within a renewal attempt or two, well before its lease would have run out.
    assert stopped < RENEW, stopped

    # Nothing reconciles now: a new Agent gets no status from anyone.
    await kube.create(AGENTS, {**kind, "metadata": {"name": "after"}, "spec": suspended}, namespace)
    await asyncio.sleep(3 * RETRY + 2)
    after = await kube.get(AGENTS, "after", namespace)
    assert "status" not in after or not after["status"], after.get("status")
    assert await holder(kube, namespace) == "someone-else"
