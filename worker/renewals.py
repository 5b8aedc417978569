"""Renewals: the one task per worker process that keeps alive every lease and slot it holds.

A run registers its lease (with its `RunControl`) and its tenant slot when it starts, and drops
them when its attempt ends. Every tick, a third of the shorter of the two TTLs, the renewer
renews all of them in one Lua call (`renew_held.lua`): so 2,000 runs cost one Redis round trip
per tick, not 4,000, and one pooled connection. A lease is renewed only for its fencing token;
one that lapsed or that a newer holder took is not, and its run is stopped (`LEASE_LOST`). If
the process dies, nothing renews: the leases and slots expire with their TTLs.

Nothing here stops a run's renewal with `task.cancel()` around a Redis call (redis-py can
swallow such a cancel, leaving a renewal running forever): a run stops being renewed when it
drops its registration, which the loop reads at the start of each round. Dropping a slot also
waits for a round in flight, so a renewal can never take back a slot the run then releases.
A round that fails is logged and the next tick tries again: the renewer never ends before
`stop`, since every lease of the process would lapse with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from runrelay.server import lua
from runrelay.server.keys import RedisKeys
from runrelay.server.quota import dispatching_member
from runrelay.server.settings import Settings
from worker.control import RunControl, StopReason
from worker.lease import Lease

if TYPE_CHECKING:
    from worker.slots import Slot

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class _HeldLease:
    lease: Lease
    control: RunControl


def interval_s(lease_ttl_s: float, slot_ttl_s: float) -> float:
    """Time between two rounds: a third of the shorter TTL, so two rounds may fail in a row."""
    return min(lease_ttl_s, slot_ttl_s) / 3


def timers_client(settings: Settings) -> Redis:
    """The Redis client of the process's per-tick calls (renewals, the cancel watch).

    One connection of their own, so runs that keep the pool busy never starve them. A reply
    timeout of half a round's interval: a connection gone silent (its peer lost without a FIN:
    a failover, a partition) fails one round, and the next round connects again. Without it
    the renewer would wait on that connection for hours while every lease lapsed."""
    timeout = interval_s(settings.run_lease_ttl_s, settings.quota_slot_ttl_s) / 2
    return Redis.from_url(
        settings.redis_url,
        single_connection_client=True,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
    )


class Renewals:
    def __init__(
        self, redis: Redis, keys: RedisKeys, *, lease_ttl_s: float, slot_ttl_s: float
    ) -> None:
        self.keys = keys
        self.lease_ttl_ms = int(lease_ttl_s * 1000)
        self.slot_ttl_ms = int(slot_ttl_s * 1000)
        self.interval_s = interval_s(lease_ttl_s, slot_ttl_s)
        self._script = lua.script(redis, "renew_held")
        self._leases: dict[str, _HeldLease] = {}
        self._slots: dict[str, Slot] = {}
        self._round: asyncio.Event | None = None  # set when the round in flight is over
        self._stop = asyncio.Event()

    def __len__(self) -> int:
        return len(self._leases) + len(self._slots)

    def hold_lease(self, lease: Lease, control: RunControl) -> None:
        """Renew `lease` from now on; if it is refused, stop the run through `control`."""
        self._leases[lease.run_id] = _HeldLease(lease, control)

    def drop_lease(self, lease: Lease) -> None:
        """Renew `lease` no more (idempotent). A round in flight may still renew it once; that
        is harmless: a released lease is gone, and only its own token renews it."""
        held = self._leases.get(lease.run_id)
        if held is not None and held.lease is lease:
            del self._leases[lease.run_id]

    def hold_slot(self, slot: Slot) -> None:
        self._slots[slot.run_id] = slot

    async def drop_slot(self, slot: Slot) -> None:
        """Renew `slot` no more (idempotent); on return no renewal of it is in flight, so the
        caller may release it."""
        if self._slots.get(slot.run_id) is slot:
            del self._slots[slot.run_id]
        if self._round is not None:
            await self._round.wait()

    def stop(self) -> None:
        """End `run_forever` at its next tick (graceful shutdown)."""
        self._stop.set()

    async def run_forever(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval_s)
            if not self._stop.is_set():
                try:
                    await self.renew_all()
                except Exception:  # a bug, not an outage: say so, and keep renewing
                    log.exception("renewals: a round failed; trying again at the next tick")

    async def renew_all(self) -> None:
        """One round: renew every lease and slot held now; stop the runs whose lease was refused.
        A Redis error is logged and the round skipped: the TTLs leave room for two more."""
        leases = list(self._leases.values())
        slots = list(self._slots.values())
        if not leases and not slots:
            return
        done = self._round = asyncio.Event()
        try:
            renewed = await self._renew(leases, slots)
        except RedisError as exc:
            log.warning(
                "renewals: Redis error (%s) renewing %d lease(s) and %d slot(s)",
                exc,
                len(leases),
                len(slots),
            )
            return
        finally:
            done.set()
            if self._round is done:
                self._round = None
        for held, ok in zip(leases, renewed, strict=True):
            if not ok and self._leases.get(held.lease.run_id) is held:
                # Someone else runs it now: stop before this worker calls more tools.
                log.warning("run %s: lease renewal refused; stopping", held.lease.run_id)
                del self._leases[held.lease.run_id]
                held.control.stop(StopReason.LEASE_LOST)

    async def _renew(self, leases: list[_HeldLease], slots: list[Slot]) -> list[Any]:
        k = self.keys
        keys = [k.lease(held.lease.run_id) for held in leases]
        keys.append(k.dispatching())
        keys.extend(k.tenant_slots(slot.tenant_id) for slot in slots)
        args: list[Any] = [self.lease_ttl_ms, self.slot_ttl_ms, len(leases)]
        args.extend(held.lease.token for held in leases)
        for slot in slots:
            args += [slot.run_id, dispatching_member(slot.tenant_id, slot.run_id)]
        renewed: list[Any] = await self._script(keys=keys, args=args)
        return renewed
