"""The sweeper against a real Redis and the database: which unfinished runs it enqueues again,
and that only one sweeper (the lock holder) acts at a time."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable
from datetime import timedelta

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from runrelay.server.keys import RedisKeys
from runrelay.server.lifecycle import Lifecycle
from runrelay.server.quota import dispatching_member
from runrelay.server.run_table import Ending, RunTable
from runrelay.server.settings import Settings
from runrelay.server.store import Store, Unfinished, new_id
from runrelay.server.tables import Run, utcnow
from runrelay.types import RunStatus
from worker.sweeper import Requeuer, Sweeper


def make_run(
    store: Store,
    status: str,
    *,
    age_s: float = 0,
    thread_id: str | None = None,
    tenant_id: str | None = None,
) -> Run:
    tenant_id = tenant_id or store.create_tenant(f"sw-{secrets.token_hex(6)}").id
    return store.create_run(
        Run(
            id=new_id("run"),
            tenant_id=tenant_id,
            status=status,
            agent_name="slow-analyst",
            agent_id="bank.slow-analyst",
            thread_id=thread_id,
            created_at=utcnow() - timedelta(seconds=age_s),
        )
    )


def swept(run: Run) -> Unfinished:
    """`run` as the sweeper reads it."""
    return Unfinished(run.id, run.tenant_id, RunStatus(run.status), run.thread_id, run.created_at)


def sent_to(sent: list[str]) -> Callable[[str], Awaitable[None]]:
    """A task sender that records what it was asked to enqueue."""

    async def send(run_id: str) -> None:
        sent.append(run_id)

    return send


def sweepers(
    settings: Settings, store: Store, redis: Redis, count: int, sent: list[str]
) -> list[Sweeper]:
    keys = RedisKeys(settings.redis_prefix)
    return [
        Sweeper(
            settings,
            store,
            redis,
            keys,
            Requeuer(redis, keys, 30, sent_to(sent)),
            Lifecycle.build(settings, store, redis),
        )
        for _ in range(count)
    ]


def test_only_one_of_several_sweepers_enqueues_a_run_whose_lease_lapsed(
    settings: Settings, store: Store
) -> None:
    local = settings.model_copy(
        update={"redis_prefix": f"{settings.redis_prefix}sw{secrets.token_hex(3)}:"}
    )
    orphan = make_run(store, "running")

    async def scenario() -> tuple[list[list[str]], list[list[str]], list[str]]:
        redis = Redis.from_url(local.redis_url)
        sent: list[str] = []
        try:
            group = sweepers(local, store, redis, 3, sent)
            first = await asyncio.gather(*(s.sweep() for s in group))
            again = await asyncio.gather(*(s.sweep() for s in group))
        finally:
            await redis.aclose()
        return first, again, sent

    first, again, sent = asyncio.run(scenario())

    assert [orphan.id in ids for ids in first].count(True) == 1
    assert sum(1 for ids in first if ids) == 1, "only the lock holder swept"
    assert not any(orphan.id in ids for ids in again), "not enqueued twice within the lease TTL"
    assert sent.count(orphan.id) == 1


def test_a_run_that_finished_after_the_sweep_read_it_is_not_enqueued_again(
    settings: Settings, store: Store
) -> None:
    """The sweep reads `running` runs, then checks their leases: a run that finished in between
    (its lease released after its row said `completed`) has not lapsed."""
    local = settings.model_copy(
        update={"redis_prefix": f"{settings.redis_prefix}sw{secrets.token_hex(3)}:"}
    )
    finished = make_run(store, "completed")
    lapsed = make_run(store, "running")
    read_while_running = Unfinished(
        finished.id, finished.tenant_id, RunStatus.RUNNING, None, finished.created_at
    )
    page = [read_while_running, swept(lapsed)]

    async def scenario() -> list[str]:
        redis = Redis.from_url(local.redis_url)
        try:
            sweeper = sweepers(local, store, redis, 1, [])[0]
            return await sweeper._sweep_page(page, utcnow())
        finally:
            await redis.aclose()

    assert asyncio.run(scenario()) == [lapsed.id]


def test_sweep_leaves_leased_and_fresh_runs_alone_and_requeues_lost_queued_ones(
    settings: Settings, store: Store
) -> None:
    local = settings.model_copy(
        update={
            "redis_prefix": f"{settings.redis_prefix}sw{secrets.token_hex(3)}:",
            "stuck_queued_s": 60.0,
        }
    )
    keys = RedisKeys(local.redis_prefix)
    leased = make_run(store, "running")
    fresh_queued = make_run(store, "queued")
    lost_queued = make_run(store, "queued", age_s=30)  # its log is not in Redis
    stuck_queued = make_run(store, "queued", age_s=120)
    taken_queued = make_run(store, "queued", age_s=30)  # a worker took it, then died
    finished = make_run(store, "completed")

    async def scenario() -> list[str]:
        redis = Redis.from_url(local.redis_url)
        try:
            await redis.set(keys.lease(leased.id), "1.abc", px=30_000)
            for run in (fresh_queued, stuck_queued, taken_queued):
                await redis.xadd(keys.events(run.id), {"d": "{}", "t": "run_queued"}, id="0-1")
            await redis.incr(keys.fence(taken_queued.id))
            sent: list[str] = []
            return await sweepers(local, store, redis, 1, sent)[0].sweep()
        finally:
            await redis.aclose()

    requeued = set(asyncio.run(scenario()))

    assert {lost_queued.id, stuck_queued.id, taken_queued.id} <= requeued
    assert not requeued & {leased.id, fresh_queued.id, finished.id}


def test_sweep_leaves_runs_waiting_in_their_tenants_queue_to_the_dispatcher(
    settings: Settings, store: Store
) -> None:
    """A run held back by its tenant's concurrency cap is not lost, however long it waits."""
    local = settings.model_copy(
        update={
            "redis_prefix": f"{settings.redis_prefix}sw{secrets.token_hex(3)}:",
            "stuck_queued_s": 60.0,
        }
    )
    keys = RedisKeys(local.redis_prefix)
    pending = make_run(store, "queued", age_s=120)
    dispatching = make_run(store, "queued", age_s=120)
    stuck = make_run(store, "queued", age_s=120)

    async def scenario() -> list[str]:
        redis = Redis.from_url(local.redis_url)
        try:
            for run in (pending, dispatching, stuck):
                await redis.xadd(keys.events(run.id), {"d": "{}", "t": "run_queued"}, id="0-1")
            await redis.rpush(keys.tenant_pending(pending.tenant_id), pending.id)
            await redis.zadd(
                keys.dispatching(), {dispatching_member(dispatching.tenant_id, dispatching.id): 1}
            )
            return await sweepers(local, store, redis, 1, [])[0].sweep()
        finally:
            await redis.aclose()

    requeued = set(asyncio.run(scenario()))

    assert stuck.id in requeued
    assert not requeued & {pending.id, dispatching.id}


def test_sweep_leaves_parked_runs_alone_and_hands_on_a_thread_whose_holder_finished(
    settings: Settings, store: Store
) -> None:
    """Runs waiting for their thread are not lost: if the thread's holder finished without
    handing it over (its process died), the sweeper hands it to the oldest waiter."""
    local = settings.model_copy(
        update={"redis_prefix": f"{settings.redis_prefix}sw{secrets.token_hex(3)}:"}
    )
    keys = RedisKeys(local.redis_prefix)
    tenant = store.create_tenant(f"sw-{secrets.token_hex(6)}").id

    def on_thread(thread_id: str, status: str) -> Run:
        return store.create_run(
            Run(
                id=new_id("run"),
                tenant_id=tenant,
                status=status,
                agent_name="slow-analyst",
                agent_id="bank.slow-analyst",
                thread_id=thread_id,
                created_at=utcnow() - timedelta(seconds=120),
            )
        )

    dead_holder, orphaned = on_thread("a", "completed"), on_thread("a", "queued")
    live_holder, waiting = on_thread("b", "running"), on_thread("b", "queued")

    async def scenario() -> tuple[list[str], list[bytes | None], list[bytes]]:
        redis = Redis.from_url(local.redis_url)
        try:
            await redis.set(keys.lease(live_holder.id), "1.abc", px=30_000)
            for holder, parked in ((dead_holder, orphaned), (live_holder, waiting)):
                assert holder.thread_id is not None
                await redis.set(keys.thread_owner(tenant, holder.thread_id), holder.id)
                await redis.zadd(keys.thread_waiting(tenant, holder.thread_id), {parked.id: 1})
                # Taken by a worker (fence), parked, its lease given back: looks "died early".
                await redis.xadd(keys.events(parked.id), {"d": "{}", "t": "run_queued"}, id="0-1")
                await redis.incr(keys.fence(parked.id))
            requeued = await sweepers(local, store, redis, 1, [])[0].sweep()
            owners = [await redis.get(keys.thread_owner(tenant, t)) for t in ("a", "b")]
            return requeued, owners, await redis.lrange(keys.tenant_pending(tenant), 0, -1)
        finally:
            await redis.aclose()

    requeued, owners, pending = asyncio.run(scenario())

    assert not set(requeued) & {orphaned.id, waiting.id}, "parked runs are not sent again"
    assert owners == [orphaned.id.encode(), live_holder.id.encode()]
    assert pending == [orphaned.id.encode()], "queued to start at the tenant's next free slot"


def test_sweeper_survives_a_broker_that_refuses_a_requeue_and_sends_it_next_sweep(
    settings: Settings, store: Store
) -> None:
    """Enqueueing while Redis is down raises a connection error: the sweep fails, the sweeper
    goes on (it used to end, leaving runs without a lease `running` for good)."""
    local = settings.model_copy(
        update={
            "redis_prefix": f"{settings.redis_prefix}sw{secrets.token_hex(3)}:",
            "sweep_interval_s": 0.1,
        }
    )
    orphan = make_run(store, "running")
    sent: list[str] = []

    async def send(run_id: str) -> None:
        if not sent:
            sent.append("refused")
            raise RedisConnectionError("Error 111 connecting to 127.0.0.1:6379: refused")
        sent.append(run_id)

    async def scenario() -> bool:
        redis = Redis.from_url(local.redis_url)
        keys = RedisKeys(local.redis_prefix)
        sweeper = Sweeper(
            local,
            store,
            redis,
            keys,
            Requeuer(redis, keys, 0.2, send),
            Lifecycle.build(local, store, redis),
        )
        task = asyncio.create_task(sweeper.run_forever())
        try:
            for _ in range(300):  # up to ~30 s on a loaded machine
                if orphan.id in sent or task.done():
                    break
                await asyncio.sleep(0.1)
            return task.done()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await redis.aclose()

    ended = asyncio.run(scenario())

    assert not ended, "the sweeper ended"
    assert sent[0] == "refused" and orphan.id in sent


def test_a_run_parked_on_its_thread_is_left_alone_until_its_holder_finishes(
    settings: Settings, store: Store
) -> None:
    """An old queued run waiting for its thread is not stuck: the sweeper leaves it parked
    while the thread's holder runs, and hands the thread on to it once the holder has finished
    (its releaser died): the run goes to its tenant's queue, not to Celery."""
    local = settings.model_copy(
        update={
            "redis_prefix": f"{settings.redis_prefix}sw{secrets.token_hex(3)}:",
            "stuck_queued_s": 60.0,
        }
    )
    keys = RedisKeys(local.redis_prefix)
    holder = make_run(store, "queued", age_s=130, thread_id="thr-sweep")
    parked = make_run(store, "queued", age_s=120, thread_id="thr-sweep", tenant_id=holder.tenant_id)

    async def scenario() -> tuple[list[str], list[str], list[bytes]]:
        redis = Redis.from_url(local.redis_url)
        try:
            lifecycle = Lifecycle.build(local, store, redis)
            await lifecycle.threads.enter(holder)
            assert (await lifecycle.threads.enter(parked)).holder == holder.id
            await redis.xadd(keys.events(parked.id), {"d": "{}", "t": "run_queued"}, id="0-1")
            await lifecycle.start(holder.id, lease_token="holder-lease")
            await redis.set(keys.lease(holder.id), "1.holder-lease", px=30_000)
            sent: list[str] = []
            sweeper = sweepers(local, store, redis, 1, sent)[0]
            while_held = await sweeper.sweep()
            # Its worker died after ending it, before handing the thread over.
            RunTable(store.engine).end(holder.id, RunStatus.COMPLETED, ending=Ending(), log="")
            await redis.delete(keys.lease(holder.id))
            after_end = await sweeper.sweep()
            queue = await redis.lrange(keys.tenant_pending(parked.tenant_id), 0, -1)
            return while_held, after_end, queue
        finally:
            await redis.aclose()

    while_held, after_end, queue = asyncio.run(scenario())

    assert parked.id not in while_held + after_end, "a parked run is not sent to Celery"
    assert queue == [parked.id.encode()], "handed the thread, it waits for a slot"
