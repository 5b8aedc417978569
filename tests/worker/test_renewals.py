"""The per-process renewer against a real Redis: every lease and slot registered is renewed, a
lease another holder took (or that lapsed) is not and its run is stopped, and a run that ended
is renewed no more."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from runrelay.server.keys import RedisKeys
from runrelay.server.quota import QuotaStore, dispatching_member
from runrelay.server.settings import Settings
from tests.tcp_proxy import tcp_proxy
from worker.control import RunControl, StopReason
from worker.lease import Lease, Leases
from worker.renewals import Renewals, timers_client
from worker.slots import Slot

LEASE_TTL_S = 30.0


class Held:
    """Runs as the executor registers them: a lease with its control, and a tenant slot."""

    def __init__(self, redis: Redis, keys: RedisKeys, lease_ttl_s: float = LEASE_TTL_S) -> None:
        self.redis = redis
        self.keys = keys
        self.leases = Leases(redis, keys, lease_ttl_s)
        self.quotas = QuotaStore(redis, keys, dispatch_timeout_s=60)
        self.renewals = Renewals(redis, keys, lease_ttl_s=lease_ttl_s, slot_ttl_s=lease_ttl_s)
        self.tenant = f"t{secrets.token_hex(4)}"

    async def start(self, run_id: str) -> tuple[Lease, RunControl, Slot]:
        lease = await self.leases.acquire(run_id)
        assert lease is not None
        control = RunControl(run_id)
        self.renewals.hold_lease(lease, control)
        await self.quotas.hold(self.tenant, run_id, int(self.renewals.slot_ttl_ms))
        slot = Slot(self.tenant, run_id, period=None)
        self.renewals.hold_slot(slot)
        return lease, control, slot

    async def redis_ms(self) -> int:
        seconds, micros = await self.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000


def scenario(
    settings: Settings, body: Callable[[Held], Awaitable[None]], lease_ttl_s: float = LEASE_TTL_S
) -> None:
    keys = RedisKeys(f"{settings.redis_prefix}ren{secrets.token_hex(3)}:")

    async def main() -> None:
        redis = Redis.from_url(settings.redis_url)
        try:
            await body(Held(redis, keys, lease_ttl_s))
        finally:
            stale = [key async for key in redis.scan_iter(match=f"{keys.prefix}*", count=1000)]
            if stale:
                await redis.delete(*stale)
            await redis.aclose()

    asyncio.run(main())


def test_one_round_renews_every_registered_lease_and_slot(settings: Settings) -> None:
    async def body(held: Held) -> None:
        runs = [await held.start(f"run_{n}") for n in range(300)]
        redis, keys = held.redis, held.keys
        # Close to lapsing: five seconds left on every lease and slot (down from 30); and a
        # dispatching entry, as if the run had been sent to Celery again meanwhile.
        soon = await held.redis_ms() + 5000
        member = dispatching_member(held.tenant, "run_7")
        async with redis.pipeline(transaction=False) as pipe:
            for lease, _, slot in runs:
                pipe.pexpire(keys.lease(lease.run_id), 5000)
                pipe.zadd(keys.tenant_slots(slot.tenant_id), {slot.run_id: soon})
            pipe.zadd(keys.dispatching(), {member: soon})
            await pipe.execute()

        await held.renewals.renew_all()

        now = await held.redis_ms()
        for lease, control, slot in runs:
            assert await redis.get(keys.lease(lease.run_id)) == lease.token.encode()
            assert await redis.pttl(keys.lease(lease.run_id)) > 15_000
            score = await redis.zscore(keys.tenant_slots(slot.tenant_id), slot.run_id)
            assert score is not None and score > now + 15_000
            assert control.reason is None
        assert await redis.zscore(keys.dispatching(), member) is None

    scenario(settings, body)


def test_the_renewer_keeps_leases_alive_past_their_ttl(settings: Settings) -> None:
    """With a 3 s TTL, after 7 s every lease and slot of the process is still held."""

    async def body(held: Held) -> None:
        runs = [await held.start(f"run_{n}") for n in range(200)]
        renewer = asyncio.create_task(held.renewals.run_forever())
        await asyncio.sleep(7.0)
        held.renewals.stop()
        await renewer
        now = await held.redis_ms()
        for lease, control, slot in runs:
            assert await held.redis.get(held.keys.lease(lease.run_id)) == lease.token.encode()
            score = await held.redis.zscore(held.keys.tenant_slots(held.tenant), slot.run_id)
            assert score is not None and score > now
            assert control.reason is None

    scenario(settings, body, lease_ttl_s=3.0)


def test_a_lease_taken_or_lapsed_is_not_renewed_and_its_run_is_stopped(
    settings: Settings,
) -> None:
    async def body(held: Held) -> None:
        redis, keys = held.redis, held.keys
        (kept, kept_control, _), (taken, taken_control, _), (lapsed, lapsed_control, _) = [
            await held.start(run_id) for run_id in ("run_kept", "run_taken", "run_lapsed")
        ]
        agent_loop = asyncio.create_task(asyncio.sleep(3600))
        taken_control.task = agent_loop
        # Another worker took run_taken (a newer token); run_lapsed's lease expired.
        await redis.set(keys.lease(taken.run_id), "99.other", px=5000)
        await redis.delete(keys.lease(lapsed.run_id))

        await held.renewals.renew_all()

        assert await redis.get(keys.lease(taken.run_id)) == b"99.other"
        assert await redis.pttl(keys.lease(taken.run_id)) <= 5000  # not extended by us
        assert await redis.exists(keys.lease(lapsed.run_id)) == 0
        assert taken_control.reason is StopReason.LEASE_LOST
        assert lapsed_control.reason is StopReason.LEASE_LOST
        await asyncio.gather(agent_loop, return_exceptions=True)
        assert agent_loop.cancelled()  # the run is told: its agent loop stops
        assert kept_control.reason is None
        assert await redis.pttl(keys.lease(kept.run_id)) > 10_000
        # A refused lease leaves the renewer: the next rounds do not stop the run again.
        assert len(held.renewals) == 1 + 3

    scenario(settings, body)


def test_a_run_that_ended_is_renewed_no_more(settings: Settings) -> None:
    async def body(held: Held) -> None:
        redis, keys = held.redis, held.keys
        lease, control, slot = await held.start("run_ended")
        other = await held.start("run_going_on")
        round_in_flight = asyncio.create_task(held.renewals.renew_all())
        await asyncio.sleep(0)  # the round has taken its list and waits on Redis

        # The run ends as the executor ends it: unregister, then release lease and slot.
        held.renewals.drop_lease(lease)
        await held.renewals.drop_slot(slot)
        assert round_in_flight.done()  # a renewal in flight can no longer take the slot back
        await held.leases.release(lease)
        await held.quotas.release(held.tenant, slot.run_id, used_tokens=0)

        for _ in range(2):
            await held.renewals.renew_all()
        assert await redis.exists(keys.lease(lease.run_id)) == 0
        assert await redis.zscore(keys.tenant_slots(held.tenant), slot.run_id) is None
        assert control.reason is None  # its released lease is not mistaken for a lost one
        assert await redis.exists(keys.lease(other[0].run_id)) == 1
        assert await redis.zscore(keys.tenant_slots(held.tenant), other[2].run_id) is not None
        assert len(held.renewals) == 2

    scenario(settings, body)


def test_a_failed_round_does_not_end_the_renewer(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A round that raises what no outage raises (a bug) is logged, and the next tick renews
    every lease again: the renewer ending would let all of the process's leases lapse."""

    async def body(held: Held) -> None:
        runs = [await held.start(f"run_{n}") for n in range(20)]
        renew = held.renewals._renew
        failures = 0

        async def fails_once(*args: Any) -> list[Any]:
            nonlocal failures
            if failures == 0:
                failures += 1
                raise ValueError("a round that went wrong")
            return await renew(*args)

        held.renewals._renew = fails_once  # type: ignore[method-assign]
        renewer = asyncio.create_task(held.renewals.run_forever())
        await asyncio.sleep(7.0)  # TTL 3 s: lapsed unless the rounds after the failure ran
        assert not renewer.done()
        held.renewals.stop()
        await renewer
        assert failures == 1
        for lease, control, _ in runs:
            assert await held.redis.get(held.keys.lease(lease.run_id)) == lease.token.encode()
            assert control.reason is None

    with caplog.at_level(logging.ERROR, logger="worker.renewals"):
        scenario(settings, body, lease_ttl_s=3.0)
    assert "a round failed" in caplog.text and "a round that went wrong" in caplog.text


def test_a_connection_gone_silent_costs_a_round_not_the_leases(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """The renewer's connection goes silent (its peer lost without a FIN): that round times
    out, the next one connects again, and no lease lapses (TTL 3 s, 7 s of silence)."""
    ttl_s = 3.0

    async def body(held: Held) -> None:
        runs = [await held.start(f"run_{n}") for n in range(20)]
        with tcp_proxy(settings.redis_url) as proxy:
            through = settings.model_copy(
                update={
                    "redis_url": proxy.through(settings.redis_url),
                    "run_lease_ttl_s": ttl_s,
                    "quota_slot_ttl_s": ttl_s,
                }
            )
            timers = timers_client(through)
            renewals = Renewals(timers, held.keys, lease_ttl_s=ttl_s, slot_ttl_s=ttl_s)
            for lease, control, slot in runs:
                renewals.hold_lease(lease, control)
                renewals.hold_slot(slot)
            renewer = asyncio.create_task(renewals.run_forever())
            await asyncio.sleep(1.5)  # a round went through the proxy
            assert proxy.stall() == 1
            await asyncio.sleep(7.0)
            renewals.stop()
            await asyncio.wait_for(renewer, 5.0)
            await timers.aclose()
        for lease, control, _ in runs:
            assert await held.redis.get(held.keys.lease(lease.run_id)) == lease.token.encode()
            assert control.reason is None

    with caplog.at_level(logging.WARNING, logger="worker.renewals"):
        scenario(settings, body, lease_ttl_s=ttl_s)
    assert "renewals: Redis error" in caplog.text
