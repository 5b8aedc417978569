"""A duplicate or redelivered task for a run that is leased elsewhere, or already finished, does
nothing: the run is executed once."""

from __future__ import annotations

import time

import httpx
from celery import Celery

from runrelay.server.keys import EXECUTE_RUN_TASK
from tests.recovery.conftest import Deployment
from tests.sse import assert_complete_log, read_events


def test_duplicate_tasks_of_a_running_and_of_a_finished_run_do_nothing(
    deployment: Deployment, rec_client: httpx.Client
) -> None:
    deployment.ensure_workers(2)
    sender = Celery("duplicates", set_as_current=False)
    sender.conf.update(deployment.settings.celery_config())
    run = rec_client.post("/v1/runs", json={"agent": "slow-analyst", "message": "go"}).json()
    read_events(rec_client, "GET", f"/v1/runs/{run['id']}/events", limit=4)  # it is running

    for _ in range(3):
        sender.send_task(EXECUTE_RUN_TASK, args=[run["id"]], queue=deployment.settings.task_queue)
    events = read_events(rec_client, "GET", f"/v1/runs/{run['id']}/events")
    sender.send_task(EXECUTE_RUN_TASK, args=[run["id"]], queue=deployment.settings.task_queue)
    time.sleep(1.5)
    sender.close()

    assert_complete_log(events)
    assert events[-1]["status"] == "completed"
    assert [e["type"] for e in events].count("run_started") == 1
    assert not any(e["type"] == "metadata" for e in events)
    final = rec_client.get(f"/v1/runs/{run['id']}").json()
    assert (final["status"], final["attempts"]) == ("completed", 1)
    assert read_events(rec_client, "GET", f"/v1/runs/{run['id']}/events") == events
