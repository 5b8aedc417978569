"""The quota Lua scripts against a real Redis: exact GCRA, refusals that write nothing, slot
leases that expire, FIFO promotion up to the cap, and token reservations settled at real use."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
import redis
from redis.asyncio import Redis

from runrelay.server.keys import RedisKeys
from runrelay.server.quota import Decision, QuotaStore
from runrelay.server.tenants import Period, TenantLimits

T = TypeVar("T")
TENANT = "ten_test"


def limits(**overrides: Any) -> TenantLimits:
    base: dict[str, Any] = {
        "max_concurrent_runs": 2,
        "max_queued_runs": 2,
        "requests_per_minute": None,
        "token_budget": None,
        "budget_period": "month",
    }
    return TenantLimits(**{**base, **overrides})



@pytest.fixture
def run(redis_url: str, prefix: str) -> Callable[[Callable[[QuotaStore], Awaitable[T]]], T]:
    def runner(scenario: Callable[[QuotaStore], Awaitable[T]]) -> T:
        async def main() -> T:
            client = Redis.from_url(redis_url)
            try:
                return await scenario(QuotaStore(client, RedisKeys(prefix), dispatch_timeout_s=60))
            finally:
                await client.aclose()

        return asyncio.run(main())

    return runner


async def _admit(q: QuotaStore, run_id: str, lim: TenantLimits, reserve: int = 10) -> Decision:
    return await q.admit(TENANT, run_id, lim, reserve_tokens=reserve, retry_after_s=5)


def _snapshot(redis_url: str, prefix: str) -> dict[bytes, bytes | None]:
    client = redis.Redis.from_url(redis_url)
    try:
        return {key: client.dump(key) for key in sorted(client.scan_iter(match=f"{prefix}*"))}
    finally:
        client.close()


def test_gcra_admits_exactly_the_burst_then_says_when_to_retry(run) -> None:
    async def scenario(q: QuotaStore) -> list[Decision]:
        lim = limits(requests_per_minute=5, max_concurrent_runs=100, max_queued_runs=100)
        return list(await asyncio.gather(*(_admit(q, f"run_{n}", lim) for n in range(8))))

    decisions = run(scenario)
    assert [d.outcome for d in decisions].count("dispatch") == 5
    refused = [d for d in decisions if not d.admitted]
    assert len(refused) == 3 and {d.code for d in refused} == {"rate_limited"}
    assert all(1 <= d.reset_s <= 12 for d in refused), "one request every 12 s refills"
    assert sorted(d.remaining for d in decisions if d.admitted) == [0, 1, 2, 3, 4]


def test_a_refusal_writes_nothing(run, redis_url: str, prefix: str) -> None:
    lim = limits(
        max_concurrent_runs=1, max_queued_runs=0, requests_per_minute=100, token_budget=1000
    )

    async def fill(q: QuotaStore) -> Decision:
        return await _admit(q, "run_a", lim)

    assert run(fill).outcome == "dispatch"
    before = _snapshot(redis_url, prefix)
    for lim_, reserve, code in (
        (lim, 10, "concurrency_limit"),
        (limits(max_concurrent_runs=5, token_budget=1000), 995, "token_budget_exhausted"),
    ):

        async def refuse(
            q: QuotaStore, lim_: TenantLimits = lim_, reserve: int = reserve
        ) -> Decision:
            return await _admit(q, "run_b", lim_, reserve)

        decision = run(refuse)
        assert (decision.outcome, decision.code) == ("reject", code)
    assert _snapshot(redis_url, prefix) == before


def test_runs_above_the_cap_queue_then_queue_full(run) -> None:
    async def scenario(q: QuotaStore) -> list[str]:
        decisions = [await _admit(q, f"run_{n}", limits()) for n in range(5)]
        return [d.outcome if d.admitted else d.code for d in decisions]

    assert run(scenario) == ["dispatch", "dispatch", "queue", "queue", "queue_full"]


def test_expired_slots_are_free_again_and_promotion_is_fifo(run) -> None:
    async def scenario(q: QuotaStore) -> tuple[list[str], list[str], int]:
        for n in range(4):
            await _admit(q, f"run_{n}", limits())
        # A worker held run_0 and run_1 and died: their leases lapse.
        await q.hold(TENANT, "run_0", ttl_ms=1)
        await q.hold(TENANT, "run_1", ttl_ms=1)
        await asyncio.sleep(0.05)
        promoted = await q.promote(TENANT, at_most=10)
        again = await q.promote(TENANT, at_most=10)
        return promoted, again, await q.running(TENANT)

    promoted, again, running = run(scenario)
    assert promoted == ["run_2", "run_3"] and again == [] and running == 2


def test_release_settles_the_reservation_at_real_usage(run, prefix: str) -> None:
    lim = limits(token_budget=1000)

    async def scenario(q: QuotaStore) -> tuple[int, int, bool, int]:
        period = Period.current("month").id
        budget_key = q.keys.tenant_budget(TENANT, period)
        await _admit(q, "run_a", lim, reserve=300)
        reserved = int(await q.redis.get(budget_key))
        # 250 used: within the reservation, nothing more is charged; 400: 100 more.
        assert await q.charge(TENANT, "run_a", period, 250)
        within = await q.charge(TENANT, "run_a", period, 400)
        charged = int(await q.redis.get(budget_key))
        await q.release(TENANT, "run_a", used_tokens=420)
        return reserved, charged, within, int(await q.redis.get(budget_key))

    assert run(scenario) == (300, 400, True, 420)


def test_charge_past_the_budget_says_stop(run) -> None:
    lim = limits(token_budget=100)

    async def scenario(q: QuotaStore) -> bool:
        period = Period.current("month").id
        await _admit(q, "run_a", lim, reserve=10)
        return await q.charge(TENANT, "run_a", period, 101)

    assert run(scenario) is False
