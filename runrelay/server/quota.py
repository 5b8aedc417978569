"""The Redis side of tenant quotas, shared by the shim (admission, dispatcher) and the worker
(slot lease, token metering): one method per Lua script in `lua/quota_*.lua`, each atomic.

Per tenant: a GCRA rate state, a sorted set of concurrency slots (run id → expiry; expired
members are pruned by the scripts, so a dead worker's slots come back), a pending queue (runs
admitted above the concurrency cap), a budget counter per period and the reservations of its
unfinished runs. Globally: the tenants with pending runs and the runs dispatched but not
started. The shape of each key is in `runrelay/server/keys.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from runrelay.server import lua
from runrelay.server.keys import RedisKeys
from runrelay.server.tenants import Period, TenantLimits


@dataclass(frozen=True)
class Decision:
    """What admission decided. `outcome`: dispatch | queue | reject; for a rejection `code` names
    the limit and `reset_s` is the Retry-After; otherwise limit/remaining/reset_s describe the
    request rate (limit 0: no rate limit)."""

    outcome: str
    code: str
    limit: int
    remaining: int
    reset_s: int

    @property
    def admitted(self) -> bool:
        return self.outcome != "reject"


def dispatching_member(tenant_id: str, run_id: str) -> str:
    return f"{tenant_id} {run_id}"


def as_text(value: Any) -> str:
    """A Redis reply as str, whether the client decodes responses or not."""
    return value.decode() if isinstance(value, bytes) else str(value)


def reserved_period(entry: Any) -> str | None:
    """The budget period of a reservation entry (`'<period>|<tokens>'`), as `quota_hold.lua`
    returns it; None for a run without one."""
    return as_text(entry).partition("|")[0] if entry is not None else None


class QuotaStore:
    def __init__(self, redis: Redis, keys: RedisKeys, *, dispatch_timeout_s: float) -> None:
        self.redis = redis
        self.keys = keys
        self.dispatch_ms = int(dispatch_timeout_s * 1000)

        def load(name: str) -> Any:
            return lua.script(redis, f"quota_{name}")

        self._admit = load("admit")
        self._promote = load("promote")
        self._redispatch = load("redispatch")
        self._hold = load("hold")
        self._charge = load("charge")
        self._release = load("release")

    async def admit(
        self,
        tenant_id: str,
        run_id: str,
        limits: TenantLimits,
        *,
        reserve_tokens: int,
        retry_after_s: int,
    ) -> Decision:
        k = self.keys
        period = Period.current(limits.budget_period)
        raw: Any = await self._admit(
            keys=[
                k.tenant_rate(tenant_id),
                k.tenant_slots(tenant_id),
                k.tenant_pending(tenant_id),
                k.tenant_limits(tenant_id),
                k.tenant_budget(tenant_id, period.id),
                k.tenant_reservations(tenant_id),
                k.pending_tenants(),
                k.quota_tenants(),
                k.dispatching(),
            ],
            args=[
                tenant_id,
                run_id,
                limits.requests_per_minute or 0,
                limits.max_concurrent_runs,
                limits.max_queued_runs,
                limits.token_budget or 0,
                reserve_tokens,
                period.id,
                period.seconds_left(),
                self.dispatch_ms,
                retry_after_s,
            ],
        )
        outcome, code, limit, remaining, reset_s = raw
        return Decision(as_text(outcome), as_text(code), int(limit), int(remaining), int(reset_s))

    async def promote(self, tenant_id: str, *, at_most: int) -> list[str]:
        k = self.keys
        raw: Any = await self._promote(
            keys=[
                k.tenant_slots(tenant_id),
                k.tenant_pending(tenant_id),
                k.tenant_limits(tenant_id),
                k.pending_tenants(),
                k.dispatching(),
            ],
            args=[tenant_id, at_most, self.dispatch_ms],
        )
        return [as_text(run_id) for run_id in raw]

    async def redispatch(self, tenant_id: str, run_id: str) -> bool:
        return bool(
            await self._redispatch(
                keys=[self.keys.dispatching(), self.keys.tenant_slots(tenant_id)],
                args=[dispatching_member(tenant_id, run_id), run_id, self.dispatch_ms],
            )
        )

    async def overdue(self, *, count: int = 100) -> list[tuple[str, str]]:
        """Dispatched runs no worker started in time: (tenant id, run id)."""
        raw: Any = await self.redis.zrangebyscore(
            self.keys.dispatching(), "-inf", await self.now_ms(), start=0, num=count
        )
        pairs = (as_text(member).partition(" ") for member in raw)
        return [(tenant, run) for tenant, _, run in pairs]

    async def hold(self, tenant_id: str, run_id: str, ttl_ms: int) -> str | None:
        """Take the run's slot; returns the budget period its tokens are reserved in, if any."""
        keys, args = self.hold_call(tenant_id, run_id, ttl_ms)
        return reserved_period(await self._hold(keys=keys, args=args))

    def hold_call(self, tenant_id: str, run_id: str, ttl_ms: int) -> tuple[list[str], list[Any]]:
        """`quota_hold.lua`'s KEYS and ARGV (also run by a worker's `start_run.lua`)."""
        keys = [
            self.keys.tenant_slots(tenant_id),
            self.keys.dispatching(),
            self.keys.tenant_reservations(tenant_id),
        ]
        return keys, [run_id, ttl_ms, dispatching_member(tenant_id, run_id)]

    async def reservation_period(self, tenant_id: str, run_id: str) -> str | None:
        entry = await self.redis.hget(self.keys.tenant_reservations(tenant_id), run_id)
        return as_text(entry).partition("|")[0] if entry is not None else None

    async def charge(self, tenant_id: str, run_id: str, period: str, used_tokens: int) -> bool:
        """Charge the run's usage so far; False when the tenant's budget is now exceeded."""
        k = self.keys
        raw: Any = await self._charge(
            keys=[
                k.tenant_reservations(tenant_id),
                k.tenant_budget(tenant_id, period),
                k.tenant_limits(tenant_id),
            ],
            args=[run_id, used_tokens, period],
        )
        return bool(int(raw[0]))

    async def release(
        self, tenant_id: str, run_id: str, *, used_tokens: int, period: str | None = None
    ) -> bool:
        """Free the run's slot and settle its reservation at `used_tokens`."""
        k = self.keys
        period = period or await self.reservation_period(tenant_id, run_id) or "-"
        return bool(
            await self._release(
                keys=[
                    k.tenant_slots(tenant_id),
                    k.tenant_reservations(tenant_id),
                    k.tenant_budget(tenant_id, period),
                    k.tenant_pending(tenant_id),
                    k.dispatch_wakeup(),
                    k.dispatching(),
                ],
                args=[run_id, used_tokens, tenant_id, period],
            )
        )

    async def free_slot(self, tenant_id: str, run_id: str) -> None:
        """Free the run's concurrency slot only (its reservation stays): a run paused for
        approval, or waiting for its thread (it leaves the dispatching set too). Wakes the
        dispatcher for the tenant's pending runs."""
        k = self.keys
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(k.tenant_slots(tenant_id), run_id)
            pipe.zrem(k.dispatching(), dispatching_member(tenant_id, run_id))
            pipe.rpush(k.dispatch_wakeup(), tenant_id)
            pipe.ltrim(k.dispatch_wakeup(), -1000, -1)
            await pipe.execute()

    async def resume(self, tenant_id: str, run_id: str) -> None:
        """Put an admitted run that may go on (its approvals are all decided, or its thread is
        free) at the head of its tenant's pending queue: it starts again as soon as the tenant
        has a free slot."""
        k = self.keys
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lrem(k.tenant_pending(tenant_id), 1, run_id)  # at most once in the queue
            pipe.lpush(k.tenant_pending(tenant_id), run_id)
            pipe.sadd(k.pending_tenants(), tenant_id)
            pipe.rpush(k.dispatch_wakeup(), tenant_id)
            pipe.ltrim(k.dispatch_wakeup(), -1000, -1)
            await pipe.execute()

    async def abandon(self, tenant_id: str, run_id: str, *, used_tokens: int = 0) -> None:
        """Undo an admission whose run could not be created or queued, or end a run that no
        worker holds (cancelled while queued or paused), settling at `used_tokens`."""
        await self.redis.lrem(self.keys.tenant_pending(tenant_id), 1, run_id)
        await self.release(tenant_id, run_id, used_tokens=used_tokens)

    async def running(self, tenant_id: str) -> int:
        now = await self.now_ms()
        return int(await self.redis.zcount(self.keys.tenant_slots(tenant_id), now, "+inf"))

    async def now_ms(self) -> int:
        """Redis's clock, which the scripts use: slot expiries are on it, not on ours."""
        seconds, micros = await self.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000
