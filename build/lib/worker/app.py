"""The Celery application of the worker side: configuration, the execute-run task, and the
process-wide asyncio runtime it hands runs to."""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery
from celery.signals import worker_shutdown

from runrelay.keys import EXECUTE_RUN_TASK
from runrelay.settings import Settings
from worker.runtime import AsyncRuntime

log = logging.getLogger(__name__)


class WorkerApp(Celery):  # type: ignore[misc]  # celery ships no type hints
    """A Celery app that owns the settings and, once a task needs it, the asyncio runtime."""

    def __init__(self, settings: Settings) -> None:
        super().__init__("runrelay", broker=settings.broker_url, set_as_current=False)
        self.settings = settings
        self._runtime: AsyncRuntime | None = None
        self._runtime_lock = threading.Lock()
        self.conf.update(settings.celery_config())

    @property
    def runtime(self) -> AsyncRuntime:
        with self._runtime_lock:
            if self._runtime is None:
                self._runtime = AsyncRuntime(self.settings)
            return self._runtime

    def close_runtime(self) -> None:
        with self._runtime_lock:
            if self._runtime is not None:
                self._runtime.close()
                self._runtime = None


def create_app(settings: Settings) -> WorkerApp:
    app = WorkerApp(settings)

    @app.task(name=EXECUTE_RUN_TASK, ignore_result=True)  # type: ignore[untyped-decorator]
    def execute_run(run_id: str) -> None:
        """Thin: hand the run to the process's event loop and wait for it to end."""
        app.runtime.call(app.runtime.executor.execute(run_id))

    def _on_shutdown(**_: Any) -> None:
        app.close_runtime()

    worker_shutdown.connect(_on_shutdown, weak=False)
    return app
