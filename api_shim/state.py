"""What the shim's routes share: built once in the app's lifespan from the settings."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from celery import Celery
from fastapi import Request
from redis.asyncio import BlockingConnectionPool, Redis

from api_shim.dispatcher import Dispatcher
from api_shim.hub import StreamHub
from api_shim.quotas import Quotas
from runrelay.agent.config import Registry
from runrelay.server.batches import BatchStore
from runrelay.server.eventlog import EventLog
from runrelay.server.keys import DELIVER_WEBHOOK_TASK, EXECUTE_RUN_TASK, RedisKeys
from runrelay.server.lifecycle import Lifecycle, RunListener
from runrelay.server.run_listeners import standard_listeners
from runrelay.server.settings import Settings
from runrelay.server.store import Store, make_engine
from runrelay.server.stream_tokens import StreamTokens
from runrelay.server.thread_gate import ThreadGate


class TaskSender:
    """Enqueues runs by task name: the shim never imports the worker's code."""

    def __init__(self, settings: Settings) -> None:
        self._celery = Celery("runrelay-shim", set_as_current=False)
        self._celery.conf.update(settings.celery_config())
        self._queue = settings.task_queue
        self._control_queue = settings.control_queue

    def send(self, run_id: str) -> None:
        self._celery.send_task(EXECUTE_RUN_TASK, args=[run_id], queue=self._queue)

    def send_delivery(self, delivery_id: str) -> None:
        """Webhooks (issue 12): a delivery attempt, on the workers' control queue."""
        self._celery.send_task(DELIVER_WEBHOOK_TASK, args=[delivery_id], queue=self._control_queue)

    def close(self) -> None:
        self._celery.close()


# An open SSE stream ends within about this long once the API key it reads by is revoked.
KEY_CHECK_S = 1.0


class LiveKeys:
    """Whether API keys are still valid, for the streams that read by them: read from the
    database at most once per `KEY_CHECK_S` per key and process, however many streams share
    the key, so a revoked key ends its streams within about that long."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._checked: dict[str, tuple[float, bool]] = {}

    async def active(self, key_id: str) -> bool:
        now = time.monotonic()
        checked = self._checked.get(key_id)
        if checked is not None and now - checked[0] < KEY_CHECK_S:
            return checked[1]
        if len(self._checked) > 10_000:  # bounded: forget the old answers
            self._checked = {k: v for k, v in self._checked.items() if now - v[0] < KEY_CHECK_S}
        active = await asyncio.to_thread(self._store.key_active, key_id)
        self._checked[key_id] = (time.monotonic(), active)
        return active



@dataclass
class ShimState:
    settings: Settings
    store: Store
    redis: Redis
    hub_redis: Redis
    events: EventLog
    hub: StreamHub
    registry: Registry
    sender: TaskSender
    quotas: Quotas
    dispatcher: Dispatcher
    dispatcher_redis: Redis
    threads: ThreadGate
    lifecycle: Lifecycle
    batches: BatchStore
    stream_tokens: StreamTokens
    live_keys: LiveKeys

    @classmethod
    def build(cls, settings: Settings, listeners: Sequence[RunListener] = ()) -> ShimState:
        keys = RedisKeys(settings.redis_prefix)
        # Bounded, whatever the number of clients: past the limit a request waits for a
        # connection instead of opening one. SSE tails share the hub's single connection.
        name = f"{settings.redis_prefix}shim"
        redis = Redis.from_pool(
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
        sender = TaskSender(settings)
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
        return cls(
            settings=settings,
            store=store,
            redis=redis,
            hub_redis=hub_redis,
            events=events,
            hub=StreamHub(hub_redis, redis, keys, block_ms=settings.hub_block_ms),
            registry=Registry.from_file(settings.agents_config, os.environ),
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
            live_keys=LiveKeys(store),
        )

    async def close(self) -> None:
        await self.dispatcher.stop()
        await self.dispatcher_redis.aclose()
        await self.hub.stop()
        await self.redis.aclose()
        await self.hub_redis.aclose()
        self.sender.close()
        self.store.engine.dispose()


def state_of(request: Request) -> ShimState:
    state: Any = request.app.state.runrelay
    return state  # type: ignore[no-any-return]
