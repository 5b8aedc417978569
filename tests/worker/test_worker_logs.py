"""Worker log lines name the run they are about (run id and tenant), not only Celery's task id."""

from __future__ import annotations

import logging
import time

import httpx
import pytest
import redis

from runrelay.server.keys import RedisKeys
from runrelay.server.settings import Settings
from tests.conftest import TenantKey
from worker.app import WorkerApp

ANALYST = {"agent": "bank credit-analyst", "input": {"company": "ACME Corp"}}


def _finished(client: httpx.Client, settings: Settings, run_id: str) -> None:
    """The run completed and its worker let go of it (the lease goes a moment after the
    database says `completed`: `done`, the slot and the thread come first)."""
    deadline = time.monotonic() + 60
    while client.get(f"/v1/runs/{run_id}").json()["status"] != "completed":
        assert time.monotonic() < deadline, "the run did not complete"
        time.sleep(0.1)
    lease = RedisKeys(settings.redis_prefix).lease(run_id)
    with redis.Redis.from_url(settings.redis_url) as r:
        while r.exists(lease):
            assert time.monotonic() < deadline, "the worker kept the run's lease"
            time.sleep(0.05)


def test_a_line_the_worker_logs_about_a_run_names_the_run_and_its_tenant(
    client: httpx.Client,
    tenant: TenantKey,
    worker: WorkerApp,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    run_id = client.post("/v1/runs", json=ANALYST).json()["id"]
    _finished(client, settings, run_id)
    with caplog.at_level(logging.INFO, logger="worker.executor"):
        # A duplicate task for the finished run: the worker says it has nothing to do.
        worker.runtime.call(worker.runtime.executor.execute(run_id))
        logging.getLogger("worker.executor").info("not about a run")
    *about_run, last = [r.getMessage() for r in caplog.records if r.name == "worker.executor"]
    assert about_run, "the worker logged nothing about the duplicate task"
    assert all(line.startswith(f"run={run_id} tenant={tenant.tenant_id} ") for line in about_run)
    assert last == "not about a run"


@pytest.mark.parametrize(
    ("level", "shown"), [("DEBUG", True), (logging.DEBUG, True), ("INFO", False), (30, False)]
)
def test_celerys_per_task_lines_show_only_at_debug(level: int | str, shown: bool) -> None:
    from worker.logs import CELERY_TASK_LOGGERS, quiet_celery_task_lines

    loggers = [logging.getLogger(name) for name in CELERY_TASK_LOGGERS]
    before = [logger.level for logger in loggers]
    root = logging.getLogger()
    root_level = root.level
    try:
        root.setLevel(logging.DEBUG if shown else logging.INFO)
        quiet_celery_task_lines(level)
        for logger in loggers:
            assert logger.isEnabledFor(logging.INFO) is shown  # "received", "succeeded"
            assert logger.isEnabledFor(logging.ERROR)  # a task's failure always shows
    finally:
        root.setLevel(root_level)
        for logger, was in zip(loggers, before, strict=True):
            logger.setLevel(was)
