"""The Celery application of the worker side: configuration, the execute-run task, and the
process-wide asyncio runtime it hands runs to.

Graceful shutdown: on SIGTERM Celery stops taking tasks and waits for the running ones. The
process exits within `shutdown_grace_s`: in-flight runs go on until the hand-back must begin for
that (`hand_back_reserve_s` before the end, by how many runs are held); then the runtime hands the
rest back (each releases its lease and is enqueued again, to be resumed from its checkpoint by
another worker), and the task threads return, so the process exits.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from typing import Any

from celery import Celery
from celery.signals import (
    after_setup_logger,
    worker_init,
    worker_shutdown,
    worker_shutting_down,
)
from kombu import serialization
from kombu.utils import json as kombu_json

from runrelay.server.json_codec import kombu_message_loads
from runrelay.server.keys import DELIVER_WEBHOOK_TASK, EXECUTE_RUN_TASK
from runrelay.server.run_table import RunListener
from runrelay.server.settings import Settings
from runrelay.server.tables import RunRef
from worker import beat, logs
from worker.runtime import AsyncRuntime

log = logging.getLogger(__name__)
# After the hand-back, the process should be gone in moments; if something in Celery's shutdown
# hangs instead, the runs are safe (handed back, leases released), so exit anyway.
_EXIT_WATCHDOG_S = 15.0
# The worker's Celery pool: threads, all started with the worker (worker/pool.py).
POOL = "worker.pool:TaskPool"
# What the end of a shutdown takes, for the hand-back to begin early enough: Celery's own stop and
# the runtime's close (~1 s for an idle worker on the 2-core development machine), and per run
# held its hand-back (~1.4 ms there: bench/inflight.py); both with a margin.
_EXIT_RESERVE_S = 1.5
_HAND_BACK_PER_RUN_S = 0.002
# How often the wait for the hand-back looks again at how many runs are still held.
_HAND_BACK_POLL_S = 0.1


def hand_back_reserve_s(held: int) -> float:
    """How long before the end of the grace period the hand-back of `held` runs begins."""
    return _EXIT_RESERVE_S + held * _HAND_BACK_PER_RUN_S


class WorkerApp(Celery):  # type: ignore[misc]  # celery ships no type hints
    """A Celery app that owns the settings and, once a task needs it, the asyncio runtime."""

    def __init__(self, settings: Settings, listeners: Sequence[RunListener] = ()) -> None:
        super().__init__("runrelay", broker=settings.broker_url, set_as_current=False)
        self.settings = settings
        self.listeners = tuple(listeners)
        self._runtime: AsyncRuntime | None = None
        self._runtime_lock = threading.Lock()
        self.conf.update(settings.celery_config())
        self.conf.worker_pool = POOL

    @property
    def runtime(self) -> AsyncRuntime:
        with self._runtime_lock:
            if self._runtime is None:
                self._runtime = AsyncRuntime(self.settings, self.listeners, self.send_delivery)
            return self._runtime

    def send_run(self, run_id: str) -> None:
        self.send_task(EXECUTE_RUN_TASK, args=[run_id], queue=self.settings.task_queue)

    def send_delivery(self, delivery_id: str) -> None:
        """A webhook delivery attempt, on the control queue (worker/beat.py)."""
        self.send_task(DELIVER_WEBHOOK_TASK, args=[delivery_id], queue=self.settings.control_queue)

    def hand_back_after_grace(self) -> None:
        """From a signal handler: stop taking runs and sweeping now; in a thread, let the runs
        held go on as long as the grace period allows, then hand back those still held."""
        runtime = self._runtime  # no lock: the main thread may hold it when the signal comes
        if runtime is not None:
            runtime.begin_shutdown()
        ends_at = time.monotonic() + self.settings.shutdown_grace_s

        def _later() -> None:
            stop = threading.Event()
            # Runs that end meanwhile shorten the hand-back: look again until it must begin.
            # None held: nothing to wait for (one that starts from now on is handed back at once).
            while True:
                with self._runtime_lock:
                    runtime = self._runtime
                held = runtime.held() if runtime is not None else 0
                left = ends_at - time.monotonic()
                if runtime is not None:
                    left -= hand_back_reserve_s(held)
                if left <= 0 or (runtime is not None and not held):
                    break
                stop.wait(min(left, _HAND_BACK_POLL_S))
            count = runtime.hand_back_all() if runtime is not None else 0
            if count:
                log.warning(
                    "shutting down: handed back %d run(s), %.1f s before the grace period ends",
                    count,
                    max(ends_at - time.monotonic(), 0.0),
                )
            if not stop.wait(_EXIT_WATCHDOG_S):
                try:
                    log.error(
                        "still not stopped %g s after the hand-back; exiting. Threads:\n%s",
                        _EXIT_WATCHDOG_S,
                        _thread_stacks(),
                    )
                finally:
                    os._exit(0)

        threading.Thread(target=_later, name="runrelay-hand-back", daemon=True).start()

    def close_runtime(self) -> None:
        with self._runtime_lock:
            if self._runtime is not None:
                self._runtime.close()
                self._runtime = None


def _thread_stacks() -> str:
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    return "\n".join(
        f"--- {names.get(ident, ident)}\n{''.join(traceback.format_stack(frame))}"
        for ident, frame in sys._current_frames().items()
    )


def create_app(settings: Settings, listeners: Sequence[RunListener] = ()) -> WorkerApp:
    """The worker's Celery app; `listeners` attach to the run lifecycle of its runtime."""
    app = WorkerApp(settings, listeners)
    logs.install()  # log lines about a run name it (worker/logs.py)
    # Task bodies decoded by orjson (the same values; kombu's tagged ones still by kombu).
    serialization.register(  # type: ignore[no-untyped-call]  # kombu ships no type hints
        "json",
        kombu_json.dumps,
        kombu_message_loads,
        content_type="application/json",
        content_encoding="utf-8",
    )
    beat.register(app)  # schedules and webhooks: the control queue and its tasks

    @app.task(name=EXECUTE_RUN_TASK, ignore_result=True)  # type: ignore[untyped-decorator]
    def execute_run(run_id: str, about: Any = None) -> None:
        """Thin: hand the run to the process's event loop and wait for it to end. `about`: the
        run's identity when the API that created it sent it (`RunRef`)."""
        app.runtime.call(app.runtime.executor.execute(run_id, RunRef.of_message(run_id, about)))

    def _on_init(**_: Any) -> None:
        # Build the runtime before the first task arrives: tasks of a process that dies while it
        # is still starting up would otherwise be lost until the sweeper's stuck-queued bound.
        # The sweeper and the cancel watch start with it.
        app.runtime  # noqa: B018

    def _on_shutting_down(**_: Any) -> None:
        app.hand_back_after_grace()

    def _on_shutdown(**_: Any) -> None:
        app.close_runtime()

    def _on_logging(loglevel: int | str | None = None, **_: Any) -> None:
        logs.quiet_celery_task_lines(loglevel if loglevel is not None else logging.INFO)

    after_setup_logger.connect(_on_logging, weak=False)  # Celery's per-task lines at DEBUG only
    worker_init.connect(_on_init, weak=False)
    worker_shutting_down.connect(_on_shutting_down, weak=False)
    worker_shutdown.connect(_on_shutdown, weak=False)
    return app
