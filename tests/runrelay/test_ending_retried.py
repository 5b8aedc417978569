"""A worker's `finish` tried again after its ending committed (the database's reply was lost, or
Redis failed right after the commit): the run still ends once. Its stream gets exactly one
`done`, the archived one; its slot is given back; the listeners hear of the ending once. Against
the real Redis and database, with a real outage in front of Redis (`tests.tcp_proxy`)."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from runrelay.agent._driver import Outcome
from runrelay.agent.events import encode, make_event
from runrelay.server.eventlog import EventLog, LogText
from runrelay.server.keys import RedisKeys
from runrelay.server.lifecycle import Lifecycle
from runrelay.server.quota import QuotaStore
from runrelay.server.run_table import Ending
from runrelay.server.settings import Settings
from runrelay.server.store import Store
from runrelay.server.tables import Run
from runrelay.server.thread_gate import ThreadGate
from runrelay.types import RunStatus
from tests.listener import RecordingListener
from tests.runrelay.test_lifecycle import run_in
from tests.tcp_proxy import TcpProxy, tcp_proxy

OUTCOME = Outcome.failed("tool_error", "the ledger tool failed")
TOKEN = "lease-of-this-worker"


def own_settings(settings: Settings) -> Settings:
    prefix = f"{settings.redis_prefix}er{secrets.token_hex(3)}:"
    return settings.model_copy(update={"redis_prefix": prefix})


async def running_run(store: Store, lifecycle: Lifecycle) -> Run:
    """A run started under `TOKEN`, holding its tenant's slot, with two events in its stream."""
    run = run_in(store, store.create_tenant(f"er-{secrets.token_hex(6)}").id, RunStatus.QUEUED)
    queued = encode(make_event(run.id, 1, "run_queued", {}))
    await lifecycle.events.append(run.id, 1, "run_queued", queued)
    started = await lifecycle.start(run.id, lease_token=TOKEN)
    assert started is not None
    await lifecycle.quotas.hold(run.tenant_id, run.id, 60_000)
    await lifecycle.events.append(
        run.id, 2, "run_started", encode(make_event(run.id, 2, "run_started", {}))
    )
    return started


async def stream_of(redis: Redis, keys: RedisKeys, run_id: str) -> list[dict[str, Any]]:
    return [json.loads(fields[b"d"]) for _, fields in await redis.xrange(keys.events(run_id))]


Scenario = Callable[[Lifecycle, TcpProxy, Run], Awaitable[None]]


def ended_after_retry(settings: Settings, store: Store, first_try: Scenario) -> None:
    """Start a run, let `first_try` end it with what follows the commit cut short, then
    `finish` again as the worker's retry does; check what the run's users see."""
    local = own_settings(settings)
    keys = RedisKeys(local.redis_prefix)
    listener = RecordingListener()

    async def scenario() -> None:
        redis = Redis.from_url(local.redis_url)
        with tcp_proxy(local.redis_url) as proxy:
            # The quotas (and the thread gate on them) reach Redis through the proxy.
            flaky = Redis.from_url(proxy.through(local.redis_url))
            quotas = QuotaStore(flaky, keys, dispatch_timeout_s=local.dispatch_timeout_s)
            events = EventLog(redis, keys, local.events_ttl_s)
            threads = ThreadGate(quotas, store)
            lifecycle = Lifecycle(local, store.engine, events, quotas, threads, [listener])
            try:
                run = await running_run(store, lifecycle)
                await first_try(lifecycle, proxy, run)
                assert listener.endings(run.id)[1] == [], "the first try did not get that far"

                retried = await lifecycle.finish(run, OUTCOME, ending=Ending.by_worker(TOKEN))

                assert retried, "the retry finds the ending it made, not a lost lease"
                stream = await stream_of(redis, keys, run.id)
                assert [e["type"] for e in stream] == ["run_queued", "run_started", "done"]
                archived = [json.loads(data) for data in store.archived_events(run.id)]
                assert stream == archived, "the stream's one `done` is the archived one"
                assert stream[-1]["status"] == "failed"
                slot = await redis.zscore(keys.tenant_slots(run.tenant_id), run.id)
                assert slot is None, "the slot is given back"
                reserved = await redis.hget(keys.tenant_reservations(run.tenant_id), run.id)
                assert reserved is None
                assert listener.endings(run.id) == ([RunStatus.FAILED], [RunStatus.FAILED])
                assert (
                    await lifecycle.finish(run, OUTCOME, ending=Ending.by_worker("another-lease"))
                    is False
                ), "another lease's ending is still refused"
            finally:
                await flaky.aclose()
                await redis.aclose()

    asyncio.run(scenario())


def test_redis_failing_right_after_the_commit(settings: Settings, store: Store) -> None:
    """The ending committed and `done` reached the stream, then Redis went away before the
    slot was given back: the retry appends no second `done`."""

    async def first_try(lifecycle: Lifecycle, proxy: TcpProxy, run: Run) -> None:
        proxy.refuse()
        proxy.cut()
        with pytest.raises(RedisConnectionError):
            await lifecycle.finish(run, OUTCOME, ending=Ending.by_worker(TOKEN))
        proxy.refuse(False)

    ended_after_retry(settings, store, first_try)


def test_the_database_reply_lost_after_the_commit(settings: Settings, store: Store) -> None:
    """The ending committed but its reply never came back: nothing after it was done. The
    retry appends the archived `done`, byte for byte."""

    async def first_try(lifecycle: Lifecycle, proxy: TcpProxy, run: Run) -> None:
        history = LogText.of(await lifecycle.events.read(run.id))
        done = make_event(run.id, 3, "done", OUTCOME.done_data(duration_ms=5))
        moved = await lifecycle.table.end_async(
            run.id,
            OUTCOME.status,
            ending=Ending.by_worker(TOKEN),
            log=history.plus(3, encode(done)),
            known=run,
            error=OUTCOME.error,
        )
        assert moved is not None  # committed; the worker saw an error instead of this reply

    ended_after_retry(settings, store, first_try)
