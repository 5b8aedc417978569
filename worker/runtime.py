"""The process-wide asyncio runtime of a worker.

Celery 5 cannot run `async def` tasks, so each worker process runs one event loop in a
background thread; task threads (threads pool) hand their run to it with
`run_coroutine_threadsafe` and wait. Hundreds of runs share the loop, one Redis pool and one
HTTP client pool.

The runtime also runs the process's background tasks: the renewer of every lease and slot the
process holds (worker/renewals.py), the cancel watch (worker/control.py) and the sweeper
(worker/sweeper.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

import httpx
from redis.asyncio import BlockingConnectionPool

from runrelay.agent.config import Registry
from runrelay.server.autopipeline import PipelinedRedis
from runrelay.server.engine import make_engine
from runrelay.server.eventlog import EventLog
from runrelay.server.gc_tuning import tune_gc
from runrelay.server.keys import RedisKeys
from runrelay.server.lifecycle import Lifecycle
from runrelay.server.loop_database import LoopDatabase
from runrelay.server.run_listeners import standard_listeners
from runrelay.server.run_table import RunListener
from runrelay.server.settings import Settings
from runrelay.server.store import Store
from runrelay.server.task_sender import TaskSender
from runrelay.server.thread_gate import ThreadGate
from worker.checkpoints import Checkpoints
from worker.control import RunControls
from worker.executor import RunExecutor
from worker.lease import Leases
from worker.renewals import Renewals, timers_client
from worker.slots import Slots
from worker.sweeper import Requeuer, Sweeper

T = TypeVar("T")
_CLOSE_TIMEOUT_S = 10.0
_LOOP_CLOSE_TIMEOUT_S = 5.0
log = logging.getLogger(__name__)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop where it is installed (`uvicorn[standard]` brings it on Linux and macOS):
    with hundreds of runs on one loop, asyncio's pure-Python selector loop is a large share of
    the worker's CPU (bench/README, `throughput.py`). asyncio's own elsewhere."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class AsyncRuntime:
    def __init__(
        self,
        settings: Settings,
        listeners: Sequence[RunListener] = (),
        send_delivery: Callable[[str], None] | None = None,
    ) -> None:
        """`listeners` attach to the run lifecycle (`runrelay.server.lifecycle`);
        `send_delivery` enqueues a webhook delivery (the Celery app's `send_task`, by name)."""
        self.settings = settings
        self._listeners = tuple(listeners)
        self._send_delivery = send_delivery or (lambda _delivery_id: None)
        self._background: list[asyncio.Task[None]] = []
        self._sweeper: asyncio.Task[None] | None = None
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self._loop = new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="runrelay-asyncio", daemon=True)
        self._thread.start()
        self.executor: RunExecutor = self.call(self._build())
        tune_gc(settings.gc_full_collection_s)  # runs in flight by the thousand

    def _run_loop(self) -> None:
        """The loop's thread: runs it until `close` stops it, then closes it there, where it
        ran. uvloop's `close` waits for every connection left open on the loop to close; here
        that wait cannot hold up the process's exit (see `close`)."""
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    async def _build(self) -> RunExecutor:
        settings = self.settings
        keys = RedisKeys(settings.redis_prefix)
        self._redis = PipelinedRedis.from_pool(
            BlockingConnectionPool.from_url(
                settings.redis_url, max_connections=settings.worker_redis_connections, timeout=20
            )
        )
        # The per-tick calls of the process (renewals, the cancel watch) have a connection of
        # their own: runs that keep the pool busy can never starve them into lapsed leases.
        self._timers_redis = timers_client(settings)
        self._http = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=500, max_keepalive_connections=100)
        )
        registry = Registry.from_file(settings.agents_config, os.environ)
        self._store = Store(make_engine(settings))
        # The runs' hot statements on this loop, without a thread hop each (PostgreSQL), those
        # of many runs committed together.
        self._database = await LoopDatabase.attached(self._store.engine, settings)
        self.controls = RunControls(
            self._redis, keys, settings.cancel_poll_s, timers=self._timers_redis
        )
        # A run's task enqueued again (a hand-back, the sweeper) is pushed from this loop: a
        # thousand runs handed back at SIGTERM make no thread hop and no kombu producer each.
        self._sender = TaskSender(settings, self._redis)
        requeuer = Requeuer(self._redis, keys, settings.run_lease_ttl_s, self._sender.send_async)
        events = EventLog(self._redis, keys, settings.events_ttl_s)
        self.renewals = Renewals(
            self._timers_redis,
            keys,
            lease_ttl_s=settings.run_lease_ttl_s,
            slot_ttl_s=settings.quota_slot_ttl_s,
        )
        slots = Slots(self._redis, keys, settings, self.renewals)
        self.lifecycle = Lifecycle(
            settings,
            self._store.engine,
            events,
            slots.quotas,
            ThreadGate(slots.quotas, self._store),
            (*standard_listeners(self._redis, keys, self._send_delivery), *self._listeners),
        )
        self._background.append(asyncio.create_task(self.renewals.run_forever()))
        self._background.append(asyncio.create_task(self.controls.watch_cancels()))
        if settings.sweeper_enabled:
            sweeper = Sweeper(settings, self._store, self._redis, keys, requeuer, self.lifecycle)
            self._sweeper = asyncio.create_task(sweeper.run_forever())
            self._background.append(self._sweeper)
        return RunExecutor(
            settings=settings,
            store=self._store,
            lifecycle=self.lifecycle,
            events=events,
            checkpoints=Checkpoints(self._redis, keys, settings.events_ttl_s, self._store),
            leases=Leases(self._redis, keys, settings.run_lease_ttl_s),
            controls=self.controls,
            requeuer=requeuer,
            registry=registry,
            http=self._http,
            worker_id=f"{socket.gethostname()}:{os.getpid()}",
            slots=slots,
            renewals=self.renewals,
        )

    def begin_shutdown(self) -> None:
        """SIGTERM: take no new runs (any that still arrive are handed back at once) and stop
        sweeping (the other workers' sweepers take over once the lock lapses). Does not wait,
        so a signal handler may call it."""

        def _begin() -> None:
            self.controls.draining = True
            if self._sweeper is not None:
                self._sweeper.cancel()

        self._loop.call_soon_threadsafe(_begin)

    def held(self) -> int:
        """How many runs this process holds now (from any thread)."""
        return len(self.controls)

    def hand_back_all(self) -> int:
        """Graceful shutdown: take no more runs, and hand back every run held; returns how many."""

        async def _hand_back() -> int:
            return self.controls.hand_back_all()

        return self.call(_hand_back())

    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        """Run a coroutine on the shared loop and wait for it from this (task) thread."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    def close_with(self, closer: Callable[[], Awaitable[None]]) -> None:
        """`closer` is awaited first when the runtime closes: what else lives on its loop
        (the control tasks' clients) closes with it, before the loop does."""
        self._closers.append(closer)

    def close(self) -> None:
        async def _close() -> None:
            for closer in self._closers:
                try:
                    await closer()
                except Exception:  # the runtime's own clients still close
                    log.exception("closing %r failed", closer)
            # The renewer and the cancel watch end on a flag (a cancel around a Redis call can
            # be swallowed); the sweeper was cancelled at `begin_shutdown`, or is now.
            self.renewals.stop()
            self.controls.stop_watching()
            if self._sweeper is not None:
                self._sweeper.cancel()
            if self._background:
                await asyncio.wait(self._background, timeout=_CLOSE_TIMEOUT_S / 4)
            # Runs still on the loop (none after a graceful hand-back): cancel them, so that
            # the task threads waiting on them return instead of blocking the process's exit.
            if self._database is not None:
                # Before the tasks left are cancelled, which would cancel its pool's own; a
                # run still here makes its statements in a thread from now on.
                await self._database.close()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            if others:
                await asyncio.wait(others, timeout=_CLOSE_TIMEOUT_S / 2)
            await self._http.aclose()
            await self._redis.aclose()
            await self._timers_redis.aclose()

        try:
            self.call(_close(), timeout_s=_CLOSE_TIMEOUT_S)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=_LOOP_CLOSE_TIMEOUT_S)
            if self._thread.is_alive():
                log.warning(
                    "the event loop did not stop and close within %g s (a connection left open "
                    "on it?); going on without it",
                    _LOOP_CLOSE_TIMEOUT_S,
                )
            self._store.engine.dispose()
            self._sender.close()
