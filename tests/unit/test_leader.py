"""Leader election's pure parts: the Lease a candidate writes, the flags, the write fence."""

from __future__ import annotations

import httpx
import pytest

from toka.controller.leader import (
    FencedKube,
    LeaderElection,
    NotLeading,
    compute_lease_spec,
)
from toka.kube.client import AGENTS
from toka.kube.config import KubeConfig

NOW = "2026-12-01T06:00:00.000000Z"
EARLIER = "2026-12-01T05:00:00.000000Z"


@pytest.mark.parametrize(
    ("current", "acquire_time", "transitions"),
    [
        # No Lease yet: the first term.
        (None, NOW, 0),
        # Our own Lease: renewing keeps the term.
        ({"holderIdentity": "me", "acquireTime": EARLIER, "leaseTransitions": 3}, EARLIER, 3),
        # Someone else's (expired) Lease: a new term.
        ({"holderIdentity": "them", "acquireTime": EARLIER, "leaseTransitions": 3}, NOW, 4),
        # Released (no holder): a new term.
        ({"holderIdentity": "", "acquireTime": EARLIER, "leaseTransitions": 1}, NOW, 2),
    ],
)
def test_the_lease_a_candidate_writes(
    current: dict[str, object] | None, acquire_time: str, transitions: int
) -> None:
    spec = compute_lease_spec(current, "me", 15.0, NOW)
    assert spec == {
        "holderIdentity": "me",
        "leaseDurationSeconds": 15,
        "acquireTime": acquire_time,
        "renewTime": NOW,
        "leaseTransitions": transitions,
    }


@pytest.mark.parametrize(
    ("lease", "renew", "retry"),
    [(10.0, 10.0, 2.0), (15.0, 2.0, 2.0), (15.0, 10.0, 0.0), (5.0, 10.0, 2.0)],
)
def test_timings_that_could_make_two_leaders_are_refused(
    lease: float, renew: float, retry: float
) -> None:
    with pytest.raises(ValueError, match="lease duration > renew deadline > retry period"):
        LeaderElection("ns", lease_duration=lease, renew_deadline=renew, retry_period=retry)


async def test_a_replica_that_does_not_lead_cannot_write_but_can_read() -> None:
    # Nothing listens on port 9: a request that got as far as the network fails to connect.
    kube = FencedKube(KubeConfig(server="https://127.0.0.1:9"), lambda: False)
    try:
        for write in (
            kube.create(AGENTS, {"metadata": {"name": "x"}}, "ns"),
            kube.patch(AGENTS, "x", {"spec": {}}, "ns"),
            kube.replace(AGENTS, "x", {}, "ns"),
            kube.delete(AGENTS, "x", "ns"),
        ):
            with pytest.raises(NotLeading, match="not the leader"):
                await write
        with pytest.raises(httpx.ConnectError):
            await kube.get(AGENTS, "x", "ns")
    finally:
        await kube.aclose()
