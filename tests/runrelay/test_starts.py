"""A run's start in one Redis call (worker/starts.py), against a real Redis: it does what taking
the lease, entering the thread, holding the slot and reading the log's last seq do one after the
other, and stops where they stop (another worker's lease; a thread another run holds)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from redis.asyncio import Redis

from runrelay.server.keys import RedisKeys, entry_id
from runrelay.server.quota import QuotaStore, dispatching_member
from runrelay.server.store import Store
from runrelay.server.tables import Run
from runrelay.server.thread_gate import ThreadGate
from worker.lease import Leases
from worker.starts import Starts

T = TypeVar("T")
SLOT_TTL_MS = 30_000
Scenario = Callable[[Starts], Awaitable[T]]


@pytest.fixture
def run_starts(redis_url: str, prefix: str, store: Store) -> Callable[[Scenario[T]], T]:
    def runner(scenario: Scenario[T]) -> T:
        async def main() -> T:
            client = Redis.from_url(redis_url)
            try:
                keys = RedisKeys(prefix)
                gate = ThreadGate(QuotaStore(client, keys, dispatch_timeout_s=60), store)
                return await scenario(Starts(Leases(client, keys, 10), gate, SLOT_TTL_MS))
            finally:
                await client.aclose()

        return asyncio.run(main())

    return runner


async def dispatched(starts: Starts, run: Run, *, seqs: int = 0, reserved: str = "") -> None:
    """`run` as the API leaves it: sent to Celery, its log at `seqs`, tokens `reserved`."""
    redis: Any = starts.quotas.redis
    keys = starts.keys
    await redis.zadd(keys.dispatching(), {dispatching_member(run.tenant_id, run.id): 1})
    for seq in range(1, seqs + 1):
        await redis.xadd(keys.events(run.id), {"type": "x"}, id=entry_id(seq))
    if reserved:
        await redis.hset(keys.tenant_reservations(run.tenant_id), run.id, reserved)


async def slot_expiry_ms(starts: Starts, run: Run) -> float | None:
    redis: Any = starts.quotas.redis
    score: float | None = await redis.zscore(starts.keys.tenant_slots(run.tenant_id), run.id)
    return score


async def is_dispatching(starts: Starts, run: Run) -> bool:
    redis: Any = starts.quotas.redis
    member = dispatching_member(run.tenant_id, run.id)
    return await redis.zscore(starts.keys.dispatching(), member) is not None


async def thread_owner(starts: Starts, run: Run) -> str | None:
    assert run.thread_id is not None
    redis: Any = starts.quotas.redis
    raw = await redis.get(starts.keys.thread_owner(run.tenant_id, run.thread_id))
    return raw.decode() if raw is not None else None


def test_a_start_takes_the_lease_the_thread_and_the_slot_and_reads_the_last_seq(
    run_starts: Callable[[Scenario[Any]], Any], make_run: Callable[..., Run]
) -> None:
    run = make_run()

    async def scenario(starts: Starts) -> None:
        await dispatched(starts, run, seqs=3, reserved="2026-12|500")
        await starts.threads.redis.set(starts.threads.new_mark(run), 1, ex=60)
        redis: Any = starts.quotas.redis
        now_ms = (await starts.quotas.now_ms())

        started = await starts.start(run)

        assert started.lease is not None
        held = await redis.get(starts.keys.lease(run.id))
        assert held.decode() == started.lease.token
        assert started.lease.token.startswith("1.")  # the run's first fencing token
        assert started.holder is None and await thread_owner(starts, run) == run.id
        assert started.new_thread  # the first run of a thread made for it: no history to read
        assert started.period == "2026-12"
        assert started.last_seq == 3
        expiry = await slot_expiry_ms(starts, run)
        assert expiry is not None and now_ms + SLOT_TTL_MS <= expiry < now_ms + SLOT_TTL_MS + 5000
        assert not await is_dispatching(starts, run)

        # The thread is no longer new, and an empty log reads as seq 0.
        other = await starts.start(make_run(thread_id=None))
        assert other.lease is not None and other.last_seq == 0 and other.period is None
        again = await starts.start(run, started.lease)  # the lease already taken: kept
        assert again.lease is started.lease and not again.new_thread

    run_starts(scenario)


def test_while_another_worker_holds_the_lease_nothing_else_is_done(
    run_starts: Callable[[Scenario[Any]], Any], make_run: Callable[..., Run]
) -> None:
    run = make_run()

    async def scenario(starts: Starts) -> None:
        await dispatched(starts, run, seqs=1)
        assert await starts.leases.acquire(run.id) is not None  # another worker's

        started = await starts.start(run)

        assert started.lease is None
        assert await thread_owner(starts, run) is None
        assert await slot_expiry_ms(starts, run) is None
        assert await is_dispatching(starts, run)  # still the other worker's to take

    run_starts(scenario)


def test_a_run_whose_thread_another_run_holds_is_parked_without_a_slot(
    run_starts: Callable[[Scenario[Any]], Any], make_run: Callable[..., Run]
) -> None:
    first, second = make_run(), make_run()

    async def scenario(starts: Starts) -> None:
        await dispatched(starts, first)
        await dispatched(starts, second, seqs=1)
        assert (await starts.start(first)).holder is None

        parked = await starts.start(second)

        assert parked.lease is not None  # its own: the executor gives it back
        assert parked.holder == first.id
        assert await thread_owner(starts, first) == first.id
        redis: Any = starts.quotas.redis
        assert second.thread_id is not None
        waiting = starts.keys.thread_waiting(second.tenant_id, second.thread_id)
        assert await redis.zscore(waiting, second.id) is not None
        assert await slot_expiry_ms(starts, second) is None
        assert parked.last_seq == 0  # not read: the run does not start

    run_starts(scenario)
