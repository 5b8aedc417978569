"""The thread gate against a real Redis and the database: one run holds a thread, the others
park in creation order, the end of a run hands the thread to the oldest live waiter, and a
holder whose releaser died is taken over."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from redis.asyncio import Redis

from runrelay.server.keys import RedisKeys
from runrelay.server.quota import QuotaStore, dispatching_member
from runrelay.server.run_table import Ending, RunTable
from runrelay.server.store import Store
from runrelay.server.tables import Run
from runrelay.server.thread_gate import Entry, ThreadGate
from runrelay.types import RunStatus

T = TypeVar("T")
THREAD = "chat-1"



Scenario = Callable[[ThreadGate], Awaitable[T]]


@pytest.fixture
def run_gate(redis_url: str, prefix: str, store: Store) -> Callable[[Scenario[T]], T]:
    def runner(scenario: Scenario[T]) -> T:
        async def main() -> T:
            client = Redis.from_url(redis_url)
            try:
                quotas = QuotaStore(client, RedisKeys(prefix), dispatch_timeout_s=60)
                return await scenario(ThreadGate(quotas, store))
            finally:
                await client.aclose()

        return asyncio.run(main())

    return runner


def finish(store: Store, run: Run, status: RunStatus = RunStatus.COMPLETED) -> None:
    table = RunTable(store.engine)
    if status is not RunStatus.CANCELLED:
        table.start(run.id, "t")
    assert table.end(run.id, status, ending=Ending(), log="")


async def owner(gate: ThreadGate, run: Run) -> str | None:
    raw = await gate.redis.get(gate.keys.thread_owner(run.tenant_id, THREAD))
    return raw.decode() if raw is not None else None


async def waiting_runs(gate: ThreadGate, runs: list[Run]) -> set[str]:
    """The ids of those of `runs` that wait for their thread."""
    waiting = set()
    for run in runs:
        if run.thread_id is not None:
            key = gate.keys.thread_waiting(run.tenant_id, run.thread_id)
            if await gate.redis.zscore(key, run.id) is not None:
                waiting.add(run.id)
    return waiting


async def pending(gate: ThreadGate, tenant_id: str) -> list[str]:
    return [r.decode() for r in await gate.redis.lrange(gate.keys.tenant_pending(tenant_id), 0, -1)]


def test_one_run_holds_the_thread_the_next_parks_and_is_handed_it(
    run_gate: Callable[[Scenario[None]], None], make_run: Callable[..., Run], store: Store
) -> None:
    first, second = make_run(), make_run()

    async def scenario(gate: ThreadGate) -> None:
        keys, tenant = gate.keys, second.tenant_id
        # Dispatch gave the second run a slot; parking gives it back.
        await gate.redis.zadd(keys.tenant_slots(tenant), {second.id: 2**40})
        await gate.redis.zadd(keys.dispatching(), {dispatching_member(tenant, second.id): 1})
        assert (await gate.enter(first)).holder is None
        assert (await gate.enter(first)).holder is None, "a resumed run finds the thread its own"
        assert (await gate.enter(second)).holder == first.id
        assert await gate.redis.zscore(keys.tenant_slots(tenant), second.id) is None
        assert await gate.redis.zcard(keys.dispatching()) == 0
        assert await waiting_runs(gate, [first, second]) == {second.id}

        finish(store, first)
        await gate.release(first)
        assert await owner(gate, first) == second.id
        assert await pending(gate, tenant) == [second.id], "first in its tenant's queue"
        assert await waiting_runs(gate, [second]) == set()
        assert (await gate.enter(second)).holder is None

        finish(store, second)
        await gate.release(second)
        assert await owner(gate, second) is None
        await gate.release(second)  # twice is harmless

    run_gate(scenario)


def test_waiters_are_handed_the_thread_in_creation_order_skipping_finished_ones(
    run_gate: Callable[[Scenario[None]], None], make_run: Callable[..., Run], store: Store
) -> None:
    holder, oldest, middle, newest = (make_run() for _ in range(4))

    async def scenario(gate: ThreadGate) -> None:
        assert (await gate.enter(holder)).holder is None
        for run in (newest, oldest, middle):  # the order workers happen to take them
            assert (await gate.enter(run)).holder == holder.id
        finish(store, oldest, "cancelled")  # cancelled while parked; its release got lost
        finish(store, holder)
        await gate.release(holder)
        assert await owner(gate, holder) == middle.id
        assert await pending(gate, middle.tenant_id) == [middle.id]

    run_gate(scenario)


def test_a_parked_run_that_finishes_leaves_the_waiters(
    run_gate: Callable[[Scenario[None]], None], make_run: Callable[..., Run], store: Store
) -> None:
    holder, parked = make_run(), make_run()

    async def scenario(gate: ThreadGate) -> None:
        await gate.enter(holder)
        await gate.enter(parked)
        finish(store, parked, "cancelled")
        await gate.release(parked)
        assert await waiting_runs(gate, [parked]) == set()
        assert await owner(gate, holder) == holder.id, "the holder keeps the thread"

    run_gate(scenario)


def test_a_holder_finished_without_release_is_taken_over(
    run_gate: Callable[[Scenario[None]], None], make_run: Callable[..., Run], store: Store
) -> None:
    dead, next_run = make_run(), make_run()

    async def scenario(gate: ThreadGate) -> None:
        await gate.enter(dead)
        finish(store, dead)  # and its process died before releasing
        assert (await gate.enter(next_run)).holder is None
        assert await owner(gate, next_run) == next_run.id

    run_gate(scenario)


def test_unstick_hands_on_a_thread_whose_holder_finished(
    run_gate: Callable[[Scenario[None]], None], make_run: Callable[..., Run], store: Store
) -> None:
    dead, parked = make_run(), make_run()

    async def scenario(gate: ThreadGate) -> None:
        await gate.enter(dead)
        assert (await gate.enter(parked)).holder == dead.id
        assert not await gate.unstick(parked.tenant_id, THREAD), "its holder is alive"
        finish(store, dead)
        assert await gate.unstick(parked.tenant_id, THREAD)
        assert await owner(gate, parked) == parked.id
        assert await pending(gate, parked.tenant_id) == [parked.id]

    run_gate(scenario)


def test_runs_without_a_thread_pass_through(
    run_gate: Callable[[Scenario[None]], None], make_run: Callable[..., Run]
) -> None:
    loose = make_run(thread_id=None)

    async def scenario(gate: ThreadGate) -> None:
        assert (await gate.enter(loose)).holder is None
        await gate.release(loose)
        assert await waiting_runs(gate, [loose]) == set()
        assert await gate.redis.keys(f"{gate.keys.prefix}*") == []

    run_gate(scenario)


def test_only_the_first_run_to_take_a_new_thread_reads_no_history(
    run_gate: Callable[[Scenario[None]], None], make_run: Callable[..., Run], store: Store
) -> None:
    """A thread made for a run is new to whichever run takes it first, even another run of the
    thread that got there before its creator: after that run, the creator reads the history
    (the messages the first one added). A thread never marked new is read as always."""
    creator, first, other = make_run(), make_run(), make_run(thread_id="chat-2")

    async def scenario(gate: ThreadGate) -> None:
        await gate.redis.set(gate.new_mark(creator), 1, ex=60)  # as `Lifecycle.create` does
        assert (await gate.enter(first)).new_thread, "no run held the thread before it"
        assert not (await gate.enter(first)).new_thread, "a resumed run has its checkpoint"
        assert await gate.enter(creator) == Entry(holder=first.id)
        finish(store, first)
        await gate.release(first)
        assert await gate.enter(creator) == Entry(holder=None, new_thread=False)
        assert await gate.enter(other) == Entry(holder=None, new_thread=False)

    run_gate(scenario)
