"""Leader election on a coordination.k8s.io/v1 Lease, as client-go does it.

Replicas race for one Lease; the holder renews it every retry period and
the others watch it. A candidate takes the Lease only when its record has
not changed for a whole lease duration *as measured on the candidate's own
clock* (from when it last saw the record change), so clock skew between
replicas cannot make two leaders. Every write is a PUT carrying the
resourceVersion it read: of two candidates, one wins and the other gets a
409.

A leader that cannot renew within the renew deadline (shorter than the lease
duration), or finds the Lease held by someone else, has lost: `lost` is set
at once and the operator stops its workers and exits before another replica
can take over. On a clean stop the leader releases the Lease so a standby
takes over without waiting the lease out.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from toka.kube.client import LEASES, ApiError, AsyncKube
from toka.kube.config import KubeConfig

JSON = dict[str, Any]
log = logging.getLogger("toka.operator.leader")


@dataclass(frozen=True)
class LeaderElection:
    """controller-runtime's flags and defaults."""

    namespace: str
    name: str = "toka-operator"
    identity: str = ""
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not self.lease_duration > self.renew_deadline > self.retry_period > 0:
            raise ValueError(
                "leader election needs lease duration > renew deadline > retry period > 0, got "
                f"{self.lease_duration}s, {self.renew_deadline}s, {self.retry_period}s"
            )


def microtime(at: datetime | None = None) -> str:
    """A Lease's MicroTime: RFC 3339 with microseconds, in UTC."""
    return (at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def compute_lease_spec(
    current: JSON | None, identity: str, lease_duration: float, now: str
) -> JSON:
    """The spec `identity` writes to hold the Lease: renewing keeps the acquire time
    and transition count; taking it over starts a new term."""
    spec = dict(current or {})
    held = spec.get("holderIdentity") == identity
    return {
        "holderIdentity": identity,
        "leaseDurationSeconds": max(1, round(lease_duration)),
        "acquireTime": spec.get("acquireTime", now) if held else now,
        "renewTime": now,
        "leaseTransitions": int(spec.get("leaseTransitions", 0)) + (0 if held or not spec else 1),
    }


class LeaderElector:
    def __init__(
        self,
        kube: AsyncKube,
        config: LeaderElection,
        *,
        on_change: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.config = config
        self.on_change = on_change
        self.clock = clock
        self.leading = asyncio.Event()
        self.lost = asyncio.Event()
        self._observed: JSON | None = None  # the Lease's spec as last read
        self._observed_at = 0.0  # when it last changed, by our clock
        self._resource_version: str | None = None

    @property
    def is_leader(self) -> bool:
        return self.leading.is_set() and not self.lost.is_set()

    async def run(self) -> None:
        """Acquire, then renew until lost (returns) or cancelled (releases, re-raises)."""
        await self._acquire()
        try:
            await self._renew()
        except asyncio.CancelledError:
            await asyncio.shield(self._release())
            raise

    async def _acquire(self) -> None:
        log.info(
            "%s waits to lead (Lease %s/%s)",
            self.config.identity,
            self.config.namespace,
            self.config.name,
        )
        while not await self._try_acquire_or_renew():
            jitter = 1 + 0.2 * random.random()  # noqa: S311  (spreads candidates, no secret)
            await asyncio.sleep(self.config.retry_period * jitter)
        log.info("%s now leads", self.config.identity)
        self._set(True)

    async def _renew(self) -> None:
        last = self.clock()
        while True:
            await asyncio.sleep(self.config.retry_period)
            try:
                renewed = await asyncio.wait_for(
                    self._try_acquire_or_renew(),
                    max(0.1, self.config.renew_deadline - (self.clock() - last)),
                )
            except TimeoutError:
                renewed = False
            if renewed:
                last = self.clock()
                continue
            held_by = (self._observed or {}).get("holderIdentity")
            if (held_by and held_by != self.config.identity) or (
                self.clock() - last >= self.config.renew_deadline
            ):
                log.error(
                    "%s lost the lease (held by %s; last renewed %.1fs ago): stopping",
                    self.config.identity,
                    held_by,
                    self.clock() - last,
                )
                self.lost.set()
                self._set(False)
                return

    async def _try_acquire_or_renew(self) -> bool:
        cfg = self.config
        now = microtime()
        try:
            lease = await self.kube.get(LEASES, cfg.name, cfg.namespace)
        except ApiError as err:
            if not err.not_found:
                log.warning("reading the Lease failed: %s", err)
                return False
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": cfg.name, "namespace": cfg.namespace},
                "spec": compute_lease_spec(None, cfg.identity, cfg.lease_duration, now),
            }
            try:
                created = await self.kube.create(LEASES, body, cfg.namespace)
            except Exception as create_err:
                log.info("creating the Lease failed: %s", create_err)
                return False
            self._remember(created)
            return True
        except Exception as err:
            log.warning("reading the Lease failed: %s", err)
            return False
        self._remember(lease)
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        if (
            holder
            and holder != cfg.identity
            and self._observed_at + float(spec.get("leaseDurationSeconds") or cfg.lease_duration)
            > self.clock()
        ):
            return False
        body = {
            **lease,
            "spec": compute_lease_spec(spec, cfg.identity, cfg.lease_duration, now),
        }
        try:
            updated = await self.kube.replace(LEASES, cfg.name, body, cfg.namespace)
        except Exception as err:
            log.info("writing the Lease failed: %s", err)
            return False
        self._remember(updated)
        return True

    def _remember(self, lease: JSON) -> None:
        spec = lease.get("spec") or {}
        if spec != self._observed:
            self._observed = spec
            self._observed_at = self.clock()
        self._resource_version = lease["metadata"].get("resourceVersion")

    async def _release(self) -> None:
        """Give the Lease up (only if still ours) so a standby need not wait it out."""
        if not self.is_leader:
            return
        self._set(False)
        cfg = self.config
        try:
            lease = await self.kube.get(LEASES, cfg.name, cfg.namespace)
            if (lease.get("spec") or {}).get("holderIdentity") != cfg.identity:
                return
            lease["spec"] = {
                **lease["spec"],
                "holderIdentity": "",
                "leaseDurationSeconds": 1,
                "renewTime": microtime(),
            }
            await self.kube.replace(LEASES, cfg.name, lease, cfg.namespace)
            log.info("%s released the lease", cfg.identity)
        except Exception as err:
            log.warning("releasing the Lease failed: %s", err)

    def _set(self, leading: bool) -> None:
        if leading:
            self.leading.set()
        else:
            self.leading.clear()
        if self.on_change is not None:
            self.on_change(leading)


async def run_while_leading(
    elector: LeaderElector,
    work: Callable[[], Coroutine[Any, Any, None]],
    on_lost: Callable[[], None],
) -> None:
    """Run `work` once this replica leads; cancel it the moment the lease is lost.

    Cancelled (the operator stops), the work stops first and the Lease is
    released after, so nothing is written once a standby may lead.
    """
    election = asyncio.create_task(elector.run())
    waits: list[asyncio.Task[Any]] = []
    working: asyncio.Task[None] | None = None
    try:
        waits.append(asyncio.create_task(elector.leading.wait()))
        await asyncio.wait({election, waits[-1]}, return_when=asyncio.FIRST_COMPLETED)
        if elector.is_leader:
            working = asyncio.create_task(work())
            waits.append(asyncio.create_task(elector.lost.wait()))
            await asyncio.wait({working, waits[-1]}, return_when=asyncio.FIRST_COMPLETED)
        if elector.lost.is_set() or election.done():
            on_lost()
    finally:
        for task in (working, *waits):
            if task is not None:
                task.cancel()
        if working is not None:
            await asyncio.gather(working, return_exceptions=True)
        election.cancel()
        await asyncio.gather(election, return_exceptions=True)
    if working is not None and working.done() and not working.cancelled():
        working.result()  # a bug in the work: raised here, not swallowed


class NotLeading(ApiError):
    """A write refused because this replica no longer leads."""

    def __init__(self) -> None:
        super().__init__(0, "NotLeading", "this operator replica is not the leader: write refused")


class FencedKube(AsyncKube):
    """An AsyncKube whose writes fail the moment `leads()` turns false (reads still work)."""

    def __init__(self, config: KubeConfig, leads: Callable[[], bool]) -> None:
        super().__init__(config)
        self.leads = leads

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        if method != "GET" and not self.leads():
            raise NotLeading
        return await super().request(method, path, **kwargs)
