"""`POST /v1/runs/{id}/cancel` refusals, and run deadlines: the per-request `timeout_s`, capped
by the server's maximum. (Cancelling queued and running runs: tests/recovery/.)"""

from __future__ import annotations

import time

import httpx

from runrelay.server.settings import Settings
from runrelay.server.store import Store
from tests.sse import assert_complete_log, read_events

ANALYST = {"agent": "bank credit-analyst", "input": {"company": "ACME Corp"}}
SLOW = {"agent": "slow-analyst", "message": "go"}


def test_cancelling_a_finished_run_is_409_naming_its_status(client: httpx.Client) -> None:
    events = read_events(client, "POST", "/v1/runs/stream", json=ANALYST)
    run_id = events[0]["run_id"]

    response = client.post(f"/v1/runs/{run_id}/cancel")

    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "run_not_cancellable"
    assert "completed" in error["message"]
    assert client.get(f"/v1/runs/{run_id}").json()["status"] == "completed"


def test_cancelling_another_tenants_run_is_404_and_leaves_it_running(
    client: httpx.Client, api: str, store: Store
) -> None:
    run = client.post("/v1/runs", json=SLOW).json()
    other = store.create_tenant(f"other-{run['id'][-8:]}")
    with httpx.Client(
        base_url=api, headers={"Authorization": f"Bearer {store.create_api_key(other.id)}"}
    ) as intruder:
        response = intruder.post(f"/v1/runs/{run['id']}/cancel")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "run_not_found"
    events = read_events(client, "GET", f"/v1/runs/{run['id']}/events")
    assert events[-1]["status"] == "completed"


def test_cancelling_an_unknown_run_is_404(client: httpx.Client) -> None:
    assert client.post("/v1/runs/run_nope/cancel").status_code == 404


def test_run_past_its_requested_timeout_ends_failed_with_run_timeout(client: httpx.Client) -> None:
    started = time.monotonic()
    events = read_events(client, "POST", "/v1/runs/stream", json={**SLOW, "timeout_s": 1})

    assert time.monotonic() - started < 4, "the 5 s run was stopped at its 1 s deadline"
    assert_complete_log(events)
    done = events[-1]
    assert done["status"] == "failed"
    assert done["error"]["code"] == "run_timeout"
    assert "1 s" in done["error"]["message"]
    assert any(e["type"] == "error" and e["code"] == "run_timeout" for e in events)
    run = client.get(f"/v1/runs/{done['run_id']}").json()
    assert run["error"]["code"] == "run_timeout"


def test_timeout_above_the_servers_maximum_is_422_naming_the_limit(
    client: httpx.Client, settings: Settings
) -> None:
    too_long = settings.max_run_timeout_s + 1
    response = client.post("/v1/runs", json={**SLOW, "timeout_s": too_long})

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["param"] == "timeout_s"
    assert f"{settings.max_run_timeout_s:g}" in error["message"]


def test_non_positive_timeout_is_422(client: httpx.Client) -> None:
    response = client.post("/v1/runs", json={**SLOW, "timeout_s": 0})
    assert response.status_code == 422
    assert "timeout_s" in response.json()["error"]["message"]
