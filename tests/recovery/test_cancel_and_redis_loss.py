"""Cancelling queued and running runs, runs that survive Redis being emptied, the shim restarted
mid-stream, and the attempt limit, against the deployment's real processes."""

from __future__ import annotations

import time

import httpx
from sqlmodel import Session

from runrelay.server.tables import Run
from tests.recovery.conftest import Deployment
from tests.sse import assert_complete_log, read_events

SLOW = {"agent": "slow-analyst", "message": "go"}


def wait_status(
    client: httpx.Client, run_id: str, statuses: set[str], timeout_s: float = 60
) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        run = client.get(f"/v1/runs/{run_id}").json()
        if run["status"] in statuses:
            return run
        assert time.monotonic() < deadline, f"run {run_id} still {run['status']}"
        time.sleep(0.1)


def test_cancelled_queued_run_ends_without_a_worker_and_never_starts(
    deployment: Deployment, rec_client: httpx.Client
) -> None:
    deployment.stop_workers()
    run = rec_client.post("/v1/runs", json=SLOW).json()

    response = rec_client.post(f"/v1/runs/{run['id']}/cancel")

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    events = read_events(rec_client, "GET", f"/v1/runs/{run['id']}/events")
    assert_complete_log(events)
    assert [e["type"] for e in events] == ["run_queued", "done"]
    assert events[-1]["status"] == "cancelled"
    assert events[-1]["error"]["code"] == "cancelled"
    deployment.ensure_workers(1)  # its task is still in the queue: the worker drops it
    time.sleep(2)
    after = rec_client.get(f"/v1/runs/{run['id']}").json()
    assert (after["status"], after["attempts"], after["started_at"]) == ("cancelled", 0, None)
    assert read_events(rec_client, "GET", f"/v1/runs/{run['id']}/events") == events


def test_cancelled_running_run_stops_within_a_second_with_done_cancelled(
    deployment: Deployment, rec_client: httpx.Client
) -> None:
    deployment.ensure_workers(1)
    run = rec_client.post("/v1/runs", json=SLOW).json()
    read_events(rec_client, "GET", f"/v1/runs/{run['id']}/events", limit=6)  # it is streaming

    asked = time.time()
    response = rec_client.post(f"/v1/runs/{run['id']}/cancel")

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    events = read_events(rec_client, "GET", f"/v1/runs/{run['id']}/events")
    assert_complete_log(events)
    done = events[-1]
    assert done["status"] == "cancelled" and done["error"]["code"] == "cancelled"
    assert done["ts"] - asked < 1.0, f"stopped {done['ts'] - asked:.2f} s after the request"
    deltas = sum(e["type"] == "output_text_delta" for e in events)
    assert 0 < deltas < 40, "it stopped mid-stream"
    assert rec_client.post(f"/v1/runs/{run['id']}/cancel").status_code == 409


def test_run_accepted_before_redis_was_emptied_is_not_lost(
    deployment: Deployment, rec_client: httpx.Client
) -> None:
    deployment.stop_workers()
    run = rec_client.post("/v1/runs", json=SLOW).json()
    client = deployment.redis()
    prefix = deployment.settings.redis_prefix
    deleted = sum(client.delete(k) for k in client.scan_iter(match=f"{prefix}*"))
    client.close()
    assert deleted >= 2, "the run's log and its queued task were in Redis"

    deployment.ensure_workers(1)
    finished = wait_status(rec_client, run["id"], {"completed", "failed", "cancelled"})

    assert finished["status"] == "completed"
    events = read_events(rec_client, "GET", f"/v1/runs/{run['id']}/events")
    assert_complete_log(events)
    assert [e["type"] for e in events[:3]] == ["run_queued", "run_started", "agent_resolved"]


def test_shim_restarted_mid_stream_clients_resume_with_last_event_id_and_lose_nothing(
    deployment: Deployment, rec_client: httpx.Client
) -> None:
    deployment.ensure_workers(1)
    first = read_events(rec_client, "POST", "/v1/runs/stream", json=SLOW, limit=8)
    run_id = first[0]["run_id"]

    deployment.kill_api()
    deployment.start_api()

    rest = read_events(
        rec_client,
        "GET",
        f"/v1/runs/{run_id}/events",
        headers={"Last-Event-ID": str(first[-1]["seq"])},
    )
    assert rest[0]["seq"] == first[-1]["seq"] + 1
    assert_complete_log(first + rest)
    assert rest[-1]["status"] == "completed"


def test_run_started_too_many_times_ends_failed_with_too_many_attempts(
    deployment: Deployment, rec_client: httpx.Client
) -> None:
    deployment.stop_workers()
    run = rec_client.post("/v1/runs", json=SLOW).json()
    with Session(deployment.store.engine) as session:  # as if 5 workers had died running it
        row = session.get(Run, run["id"])
        assert row is not None
        row.status, row.attempts = "running", 5
        session.add(row)
        session.commit()

    deployment.ensure_workers(1)
    finished = wait_status(rec_client, run["id"], {"completed", "failed"})

    assert finished["status"] == "failed"
    assert finished["error"]["code"] == "too_many_attempts"
    assert "5 times" in finished["error"]["message"]
    events = read_events(rec_client, "GET", f"/v1/runs/{run['id']}/events")
    assert_complete_log(events)
    assert events[-1]["error"]["code"] == "too_many_attempts"


def test_tool_call_past_its_timeout_fails_alone_and_the_run_goes_on(
    deployment: Deployment, rec_client: httpx.Client
) -> None:
    deployment.ensure_workers(1)
    started = time.monotonic()
    events = read_events(
        rec_client, "POST", "/v1/runs/stream", json={"agent": "sleepy-tool", "message": "go"}
    )

    assert time.monotonic() - started < 4, "the 5 s tool call was cut at 0.3 s"
    assert_complete_log(events)
    result = next(e for e in events if e["type"] == "tool_call_result")
    assert result["error"] == "sleepy timed out after 0.3 s"
    assert events[-1]["status"] == "completed"
