"""The process-wide asyncio runtime of a worker.

Celery 5 cannot run `async def` tasks, so each worker process runs one event loop in a
background thread; task threads (threads pool) hand their run to it with
`run_coroutine_threadsafe` and wait. Hundreds of runs share the loop, one Redis pool and one
HTTP client pool.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import httpx
from redis.asyncio import BlockingConnectionPool, Redis

from runrelay.agents import Registry
from runrelay.eventlog import EventLog
from runrelay.keys import RedisKeys
from runrelay.settings import Settings
from runrelay.store import Store, make_engine
from worker.executor import RunExecutor
from worker.lease import Leases
from worker.slots import Slots

T = TypeVar("T")
log = logging.getLogger(__name__)


class AsyncRuntime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="runrelay-asyncio", daemon=True
        )
        self._thread.start()
        self.executor: RunExecutor = self.call(self._build())

    async def _build(self) -> RunExecutor:
        settings = self.settings
        keys = RedisKeys(settings.redis_prefix)
        self._redis = Redis.from_pool(
            BlockingConnectionPool.from_url(settings.redis_url, max_connections=100, timeout=20)
        )
        self._http = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=500, max_keepalive_connections=100)
        )
        registry = Registry.from_file(settings.agents_config, os.environ)
        self._store = Store(make_engine(settings))
        return RunExecutor(
            settings=settings,
            store=self._store,
            events=EventLog(self._redis, keys, settings.events_ttl_s),
            leases=Leases(self._redis, keys, settings.run_lease_ttl_s),
            registry=registry,
            http=self._http,
            slots=Slots(self._redis, keys, settings),
        )

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the shared loop and wait for it from this (task) thread."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        async def _close() -> None:
            await self._http.aclose()
            await self._redis.aclose()

        try:
            self.call(_close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            self._loop.close()
            self._store.engine.dispose()
