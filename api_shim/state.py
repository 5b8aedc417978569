"""What the shim's routes share: built once in the app's lifespan from the settings."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from redis.asyncio import BlockingConnectionPool, Redis

from api_shim.dispatcher import Dispatcher
from api_shim.hub import StreamHub
from api_shim.quotas import Quotas
from runrelay.agent.config import Registry
from runrelay.server.autopipeline import PipelinedRedis
from runrelay.server.batches import BatchStore
from runrelay.server.engine import make_engine
from runrelay.server.eventlog import EventLog
from runrelay.server.keys import RedisKeys
from runrelay.server.lifecycle import Lifecycle
from runrelay.server.loop_database import LoopDatabase
from runrelay.server.revisions import AgentCatalog
from runrelay.server.run_listeners import standard_listeners
from runrelay.server.run_table import RunListener
from runrelay.server.settings import Settings
from runrelay.server.store import KEY_CACHE_S, Principal, Store, hash_key
from runrelay.server.stream_tokens import StreamTokens
from runrelay.server.tables import Run
from runrelay.server.task_sender import TaskSender
from runrelay.server.thread_gate import ThreadGate

T = TypeVar("T")


class ApiKeys:
    """API keys as the routes see them. Answers come from the store's per-process cache
    (trusted for `store.KEY_CACHE_S`) without a thread hop; on a miss, one database read per
    key answers every request that waits for it (a thousand streams opening with one key make
    one query, not a thousand)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._reading: dict[str, asyncio.Future[Any]] = {}

    async def principal(self, key: str) -> Principal | None:
        """The key's principal; None for an unknown or revoked key."""
        cached = self._store.cached_principal(key)
        if cached is not None:
            return cached.principal
        return await self._once(f"k:{hash_key(key)}", self._store.authenticate, key)

    async def active(self, key_id: str) -> bool:
        """Whether the key (by id) exists and is not revoked."""
        cached = self._store.cached_key_active(key_id)
        if cached is not None:
            return cached
        return await self._once(f"i:{key_id}", self._store.key_active, key_id)

    async def _once(self, name: str, read: Callable[[str], T], arg: str) -> T:
        # Never joins a read that began before a revocation in this process.
        name = f"{self._store.key_generation}:{name}"
        reading = self._reading.get(name)
        if reading is None:
            reading = asyncio.ensure_future(asyncio.to_thread(read, arg))
            self._reading[name] = reading
            reading.add_done_callback(lambda done: self._done(name, done))
        # Shielded: a waiter that gives up (a client gone) does not cancel the others' read.
        result: T = await asyncio.shield(reading)
        return result

    def _done(self, name: str, reading: asyncio.Future[Any]) -> None:
        self._reading.pop(name, None)
        if not reading.cancelled():
            reading.exception()  # retrieved here too: every waiter may have gone


class RecentRuns:
    """The runs this process created in the last few seconds, for the event streams that their
    clients open right after the POST (`POST /v1/runs`, then `GET /v1/runs/{id}/events`, or
    `runrelay runs events <id>`): such a stream needs no database read. What opening a stream
    takes from the run is its tenant (fixed at creation) and whether it ended; a run created
    here moments ago is opened as live, which is right however it is now: a live stream
    replays the run's Redis log, which ends with `done` and is kept `events_ttl_after_done_s`
    after it (if that log is gone, the tail falls back to the archive; with nothing above the
    client's cursor, `events` reads the run). Bounded by age and by count."""

    def __init__(self, ttl_s: float = 10.0, max_runs: int = 4096) -> None:
        self.ttl_s = ttl_s
        self.max_runs = max_runs
        self._runs: dict[str, tuple[float, Run]] = {}  # oldest first

    def add(self, run: Run) -> None:
        now = time.monotonic()
        self._runs[run.id] = (now + self.ttl_s, run)
        # Oldest first: drop the expired and those past the bound, and stop at the first kept.
        while len(self._runs) > self.max_runs or next(iter(self._runs.values()))[0] <= now:
            del self._runs[next(iter(self._runs))]

    def get(self, run_id: str, tenant_id: str) -> Run | None:
        """The run as created, if it is the tenant's and recent; None otherwise (read it)."""
        entry = self._runs.get(run_id)
        if entry is None or entry[0] <= time.monotonic() or entry[1].tenant_id != tenant_id:
            return None
        return entry[1]


@dataclass
class ShimState:
    settings: Settings
    store: Store
    redis: Redis
    hub_redis: Redis
    events: EventLog
    hub: StreamHub
    registry: Registry
    catalog: AgentCatalog  # one per process: stored revisions are read once
    sender: TaskSender
    quotas: Quotas
    dispatcher: Dispatcher
    dispatcher_redis: Redis
    threads: ThreadGate
    lifecycle: Lifecycle
    batches: BatchStore
    stream_tokens: StreamTokens
    api_keys: ApiKeys
    recent_runs: RecentRuns
    database: LoopDatabase | None = None

    @classmethod
    def build(cls, settings: Settings, listeners: Sequence[RunListener] = ()) -> ShimState:
        keys = RedisKeys(settings.redis_prefix)
        # Bounded, whatever the number of clients: past the limit a request waits for a
        # connection instead of opening one. SSE tails share the hub's single connection.
        name = f"{settings.redis_prefix}shim"
        redis = PipelinedRedis.from_pool(
            BlockingConnectionPool.from_url(
                settings.redis_url,
                max_connections=settings.shim_redis_connections,
                timeout=10,
                client_name=name,
            )
        )
        hub_redis = Redis.from_url(
            settings.redis_url,
            max_connections=1,
            client_name=name,
            socket_timeout=settings.hub_block_ms / 1000 + 10,
        )
        store = Store(make_engine(settings))
        sender = TaskSender(settings, redis)
        quotas = Quotas(settings, store, redis, keys)
        # The dispatcher blocks on its wake-up list: a connection of its own, like the hub's.
        dispatcher_redis = Redis.from_url(
            settings.redis_url,
            max_connections=1,
            client_name=name,
            socket_timeout=settings.dispatch_interval_s + 10,
        )
        events = EventLog(redis, keys, settings.events_ttl_s)
        threads = ThreadGate(quotas.backend, store)
        registry = Registry.from_file(settings.agents_config, os.environ)
        return cls(
            settings=settings,
            store=store,
            redis=redis,
            hub_redis=hub_redis,
            events=events,
            hub=StreamHub(
                hub_redis,
                redis,
                keys,
                block_ms=settings.hub_block_ms,
                idle_wake_s=KEY_CACHE_S,
                batch_s=settings.hub_batch_ms / 1000,
            ),
            registry=registry,
            catalog=AgentCatalog(store.engine, registry),
            sender=sender,
            quotas=quotas,
            dispatcher=Dispatcher(
                settings, store, quotas.backend, dispatcher_redis, keys, sender.send
            ),
            dispatcher_redis=dispatcher_redis,
            threads=threads,
            lifecycle=Lifecycle(
                settings,
                store.engine,
                events,
                quotas.backend,
                threads,
                (*standard_listeners(redis, keys, sender.send_delivery), *listeners),
            ),
            batches=BatchStore(store.engine),
            stream_tokens=StreamTokens(settings, redis, keys),
            api_keys=ApiKeys(store),
            recent_runs=RecentRuns(),
        )

    async def open_database(self) -> None:
        """On PostgreSQL, the hot statements of this process's requests go to connections on
        its event loop (`runrelay.server.loop_database`); call on that loop."""
        self.database = await LoopDatabase.attached(self.store.engine, self.settings)

    async def close(self) -> None:
        await self.dispatcher.stop()
        await self.dispatcher_redis.aclose()
        await self.hub.stop()
        await self.redis.aclose()
        await self.hub_redis.aclose()
        self.sender.close()
        if self.database is not None:
            await self.database.close()
        self.store.engine.dispose()


def state_of(request: Request) -> ShimState:
    state: Any = request.app.state.runrelay
    return state  # type: ignore[no-any-return]
