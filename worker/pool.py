"""The worker's Celery pool: Celery's threads pool, with its threads started with the worker.

Each run holds a pool thread while it runs (the task waits for the run on the process's event
loop). Celery's pool starts a thread for each task of the first burst that finds none idle: a
worker that starts with thousands of runs queued makes its threads one at a time while it starts
runs, and each costs ~0.2 ms of CPU and a hand-over of the GIL. Started with the worker, they
are ready before the first task comes.
"""

from __future__ import annotations

import threading
from typing import Any

from celery.concurrency import thread

_START_TIMEOUT_S = 60.0


class TaskPool(thread.TaskPool):  # type: ignore[misc]  # celery ships no type hints
    def on_start(self) -> None:
        super().on_start()
        start_threads(self.executor, self.limit)


def start_threads(executor: Any, count: int) -> None:
    """Make `executor` (a `ThreadPoolExecutor` of `count` workers) start all its threads: it
    starts one per submitted call that finds none idle, so `count` calls that wait for one
    another need them all."""
    barrier = threading.Barrier(count)
    waits = [executor.submit(barrier.wait, _START_TIMEOUT_S) for _ in range(count)]
    for wait in waits:
        wait.result()
