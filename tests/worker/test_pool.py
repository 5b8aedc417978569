"""The worker's pool starts all its threads with the worker, not one per task of a first burst."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from celery import concurrency

from worker.app import WorkerApp
from worker.pool import TaskPool, start_threads


def _threads(prefix: str) -> int:
    return sum(1 for thread in threading.enumerate() if thread.name.startswith(prefix))


def test_start_threads_starts_every_thread_of_the_executor() -> None:
    executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="pool-probe")
    try:
        assert _threads("pool-probe") == 0
        start_threads(executor, 8)
        assert _threads("pool-probe") == 8
        # They are idle again: eight calls that wait for one another all run at once.
        barrier = threading.Barrier(8)
        calls = [executor.submit(barrier.wait, 10) for _ in range(8)]
        assert sorted(call.result(timeout=10) for call in calls) == list(range(8))
        assert _threads("pool-probe") == 8, "no thread more was needed"
    finally:
        executor.shutdown()


def test_the_worker_uses_that_pool(worker: WorkerApp) -> None:
    assert concurrency.get_implementation(worker.conf.worker_pool) is TaskPool
