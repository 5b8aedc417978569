"""Schedules over HTTP: create, validation, read, list, change, pause/resume, trigger, delete,
tenants apart, and `GET /v1/runs?schedule_id=`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx

from tests.conftest import TenantKey
from tests.sse import wait_finished

BODY = {"agent": "credit-risk-analyst", "message": "daily report", "cron": "0 9 * * *"}


def create(client: httpx.Client, **extra: Any) -> dict[str, Any]:
    response = client.post("/v1/schedules", json={**BODY, **extra})
    assert response.status_code == 201, response.text
    schedule: dict[str, Any] = response.json()
    return schedule


def test_create_shows_the_next_run_in_the_schedules_time_zone(client: httpx.Client) -> None:
    schedule = create(client, timezone="America/New_York", metadata={"team": "risk"})
    assert schedule["id"].startswith("sch_")
    assert schedule["overlap"] == "skip" and schedule["catch_up"] == "none"
    assert schedule["run"] == {
        "agent": "credit-risk-analyst",
        "message": "daily report",
        "metadata": {"team": "risk"},
    }
    next_run = datetime.fromisoformat(schedule["next_run_at"])
    assert next_run > datetime.now(UTC)
    assert next_run.minute == 0 and next_run.hour in (13, 14)  # 09:00 EDT / EST in UTC
    assert schedule["last_run_id"] is None and schedule["last_status"] is None
    fetched = client.get(f"/v1/schedules/{schedule['id']}").json()
    assert fetched == schedule


def test_bad_cron_is_a_422_naming_the_field_with_the_parse_error(client: httpx.Client) -> None:
    response = client.post("/v1/schedules", json={**BODY, "cron": "61 * * * *"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["param"] == "cron"
    assert "out of range" in error["message"]


def test_bad_time_zone_is_a_422_naming_timezone(client: httpx.Client) -> None:
    response = client.post("/v1/schedules", json={**BODY, "timezone": "Europe/Atlantis"})
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "timezone"
    assert "Europe/Atlantis" in response.json()["error"]["message"]


def test_bad_overlap_and_unknown_agent_are_refused(client: httpx.Client) -> None:
    response = client.post("/v1/schedules", json={**BODY, "overlap": "sometimes"})
    assert response.status_code == 422
    assert "overlap" in response.text
    response = client.post("/v1/schedules", json={**BODY, "agent": "no-such-agent"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "agent_not_found"


def test_another_tenants_schedule_is_a_404(client: httpx.Client, api: str, store: Any) -> None:
    schedule = create(client)
    other = store.create_tenant("other-" + schedule["id"][-8:])
    headers = {"Authorization": f"Bearer {store.create_api_key(other.id)}"}
    with httpx.Client(base_url=api, headers=headers) as stranger:
        for method, path in [
            ("GET", ""),
            ("PATCH", ""),
            ("DELETE", ""),
            ("POST", "/pause"),
            ("POST", "/trigger"),
        ]:
            kwargs: dict[str, Any] = {"json": {"cron": "@daily"}} if method == "PATCH" else {}
            response = stranger.request(method, f"/v1/schedules/{schedule['id']}{path}", **kwargs)
            assert response.status_code == 404, (method, path, response.text)
        assert stranger.get("/v1/schedules").json()["data"] == []


def test_pause_clears_the_next_run_and_resume_sets_it(client: httpx.Client) -> None:
    schedule = create(client)
    paused = client.post(f"/v1/schedules/{schedule['id']}/pause").json()
    assert paused["paused"] is True and paused["next_run_at"] is None
    resumed = client.post(f"/v1/schedules/{schedule['id']}/resume").json()
    assert resumed["paused"] is False and resumed["next_run_at"] == schedule["next_run_at"]


def test_patch_changes_cron_and_run_fields_and_validates_the_result(
    client: httpx.Client,
) -> None:
    schedule = create(client)
    response = client.patch(
        f"/v1/schedules/{schedule['id']}", json={"cron": "@hourly", "message": "hourly now"}
    )
    assert response.status_code == 200, response.text
    changed = response.json()
    assert changed["cron"] == "@hourly" and changed["run"]["message"] == "hourly now"
    assert datetime.fromisoformat(changed["next_run_at"]).minute == 0
    bad = client.patch(f"/v1/schedules/{schedule['id']}", json={"timezone": "Nowhere/Land"})
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "timezone"


def test_list_pages_with_a_cursor(client: httpx.Client) -> None:
    ids = [create(client)["id"] for _ in range(3)]
    first = client.get("/v1/schedules", params={"limit": 2}).json()
    assert [s["id"] for s in first["data"]] == ids[::-1][:2] and first["has_more"]
    rest = client.get("/v1/schedules", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [s["id"] for s in rest["data"]] == [ids[0]] and not rest["has_more"]


def test_trigger_makes_one_run_now_listed_by_schedule_id(client: httpx.Client) -> None:
    schedule = create(client, webhook=None)
    response = client.post(f"/v1/schedules/{schedule['id']}/trigger")
    assert response.status_code == 202, response.text
    run = response.json()
    assert run["schedule_id"] == schedule["id"] and run["scheduled_for"] is not None
    assert wait_finished(client, run["id"])["status"] == "completed"
    listed = client.get("/v1/runs", params={"schedule_id": schedule["id"]}).json()["data"]
    assert [r["id"] for r in listed] == [run["id"]]
    shown = client.get(f"/v1/schedules/{schedule['id']}").json()
    assert shown["last_run_id"] == run["id"]
    assert shown["last_status"] == "completed"


def test_trigger_while_the_last_run_is_active_is_skipped_with_overlap_skip(
    client: httpx.Client,
) -> None:
    schedule = create(client, agent="slow-analyst")
    first = client.post(f"/v1/schedules/{schedule['id']}/trigger")
    assert first.status_code == 202
    second = client.post(f"/v1/schedules/{schedule['id']}/trigger")
    assert second.status_code == 409, second.text
    assert second.json()["error"]["code"] == "trigger_skipped"
    shown = client.get(f"/v1/schedules/{schedule['id']}").json()
    assert shown["last_status"] == "skipped" and first.json()["id"] in shown["last_detail"]
    client.post(f"/v1/runs/{first.json()['id']}/cancel")


def test_delete_removes_the_schedule_but_keeps_its_runs(client: httpx.Client) -> None:
    schedule = create(client)
    run = client.post(f"/v1/schedules/{schedule['id']}/trigger").json()
    assert client.delete(f"/v1/schedules/{schedule['id']}").status_code == 204
    assert client.get(f"/v1/schedules/{schedule['id']}").status_code == 404
    assert client.get(f"/v1/runs/{run['id']}").json()["schedule_id"] == schedule["id"]


def test_refused_admission_is_recorded_on_the_schedule(
    client: httpx.Client, tenant: TenantKey, store: Any
) -> None:
    from runrelay.server.tenants import update_limits

    update_limits(store, tenant.tenant_id, max_concurrent_runs=1, max_queued_runs=0)
    schedule = create(client, agent="slow-analyst", overlap="enqueue")
    assert client.post(f"/v1/schedules/{schedule['id']}/trigger").status_code == 202
    refused = client.post(f"/v1/schedules/{schedule['id']}/trigger")
    assert refused.status_code == 429, refused.text
    shown = client.get(f"/v1/schedules/{schedule['id']}").json()
    assert shown["last_status"] == "refused"
    assert "concurrency_limit" in shown["last_detail"]
