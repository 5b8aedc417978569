"""Worker log lines name their run: every line logged while a run executes — by the executor,
the agent loop, a tool or a library — starts with `run=<id> tenant=<id>`.

The executor sets a context variable for the run (asyncio copies it into every task the run
starts: heartbeats, tool calls); a log record factory, installed once when the worker starts,
prefixes the message. Celery's own lines name only its task UUIDs: its two lines per task
("received", "succeeded") are left to DEBUG, and the executor logs one line as a run ends
instead, naming the run, its tenant, its status and its duration.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import Any

_RUN_TAG: ContextVar[str] = ContextVar("runrelay_log_run", default="")

# Celery's loggers of a task's "received" and "succeeded" lines (both INFO; a failure is ERROR).
CELERY_TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace")


def about_run(run_id: str, tenant_id: str | None = None) -> None:
    """From here on in this task (and the tasks it starts), log lines name the run."""
    _RUN_TAG.set(f"run={run_id}" + (f" tenant={tenant_id}" if tenant_id else ""))


def install() -> None:
    """Prefix records made while a run executes (once per process)."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "runrelay_run_tags", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        tag = _RUN_TAG.get()
        if tag:
            record.msg = f"{tag} {record.msg}"
        return record

    factory.runrelay_run_tags = True  # type: ignore[attr-defined]  # a marker on the function
    logging.setLogRecordFactory(factory)


def quiet_celery_task_lines(level: int | str) -> None:
    """Below DEBUG's detail (`runrelay --log-level INFO` and up), Celery's per-task INFO lines
    are left out: at thousands of runs a minute they were two lines per run naming only a task
    UUID, and ~3% of a busy worker's CPU. Its warnings and errors about tasks still show."""
    number = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    debug = isinstance(number, int) and number <= logging.DEBUG
    for name in CELERY_TASK_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if debug else logging.WARNING)
