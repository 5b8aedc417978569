"""Batches over real HTTP with a real worker: upload and validation, results and errors, counts,
progress events, cancel and expiry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from runrelay.server.settings import Settings
from runrelay.server.store import Store
from runrelay.server.tenants import update_limits
from tests.api_shim.batch_helpers import (
    counts_add_up,
    ended,
    publish_agents,
    rows,
    submit,
    wait_for,
)
from tests.conftest import TenantKey


@pytest.fixture(scope="module")
def module(store: Store, settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> str:
    return publish_agents(store, settings, tmp_path_factory.mktemp("agents"))


def test_a_1000_line_batch_completes_with_every_custom_id_once_and_counts_that_add_up(
    client: httpx.Client, store: Store, tenant: TenantKey, module: str
) -> None:
    update_limits(store, tenant.tenant_id, max_concurrent_runs=40)
    lines = [{"custom_id": f"c-{i}", "message": f"line {i}"} for i in range(1000)]
    created = submit(client, lines, agent=f"{module}.quick", metadata='{"team": "risk"}')
    assert created.status_code == 202, created.text
    batch = created.json()
    assert batch["status"] == "in_progress"
    assert batch["request_counts"]["total"] == 1000
    assert created.headers["Location"] == f"/v1/batches/{batch['id']}"
    seen_done: list[int] = []

    def check(polled: dict[str, Any]) -> None:
        counts_add_up(polled)
        counts = polled["request_counts"]
        seen_done.append(counts["completed"] + counts["failed"])
        assert counts["running"] <= 40

    final = wait_for(client, batch["id"], ended, on_poll=check, timeout_s=300)
    assert final["status"] == "completed"
    assert final["request_counts"]["completed"] == 1000
    assert final["completed_at"] is not None and final["finalizing_at"] is not None
    assert seen_done == sorted(seen_done)
    results = rows(client, final["results_url"])
    assert sorted(r["custom_id"] for r in results) == sorted(f"c-{i}" for i in range(1000))
    assert all(r["output"] == "done" for r in results)
    assert rows(client, final["errors_url"]) == []
    run = client.get(f"/v1/runs/{results[0]['run_id']}").json()
    assert run["metadata"] == {
        "team": "risk",
        "batch_id": batch["id"],
        "custom_id": results[0]["custom_id"],
    }


def test_a_batch_with_three_bad_lines_is_refused_naming_each_line_and_field(
    client: httpx.Client, module: str
) -> None:
    lines: list[Any] = [{"custom_id": f"c-{i}", "message": "hi"} for i in range(10)]
    lines[2] = {"custom_id": "c-2", "message": "hi", "model_params": {"temperature": 7}}
    lines[5] = {"message": "no custom id"}
    lines[8] = {"custom_id": "c-1", "message": "a duplicate"}
    response = submit(client, lines, agent=f"{module}.quick")
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_lines"
    assert [(e["line"], e["custom_id"], e["param"]) for e in error["errors"]] == [
        (3, "c-2", "model_params.temperature"),
        (6, None, "custom_id"),
        (9, "c-1", "custom_id"),
    ]
    assert "line 9: custom_id is already used by line 2" in error["message"]
    assert client.get("/v1/batches").json()["data"] == []  # refused whole: nothing kept


def test_on_invalid_skip_runs_the_valid_lines_and_keeps_the_errors_on_the_batch(
    client: httpx.Client, module: str
) -> None:
    lines = [
        {"custom_id": "a", "message": "hi"},
        {"custom_id": "b", "agent": "no-such-agent", "message": "hi"},
        {"custom_id": "c", "body": {"message": "openai style"}},
    ]
    body = "".join(json.dumps(line) + "\n" for line in lines) + "not json\n"
    response = client.post(
        "/v1/batches",
        content=body,
        params={"agent": f"{module}.quick", "on_invalid": "skip"},
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert response.status_code == 202, response.text
    batch = response.json()
    assert batch["request_counts"]["total"] == 2
    assert batch["invalid_lines"] == 2
    assert [(e["line"], e["param"]) for e in batch["validation_errors"]] == [
        (2, "agent"),
        (4, None),
    ]
    final = wait_for(client, batch["id"], ended)
    assert sorted(r["custom_id"] for r in rows(client, final["results_url"])) == ["a", "c"]


def test_a_json_body_with_requests_is_a_batch_too(client: httpx.Client, module: str) -> None:
    response = client.post(
        "/v1/batches",
        json={
            "agent": f"{module}.quick",
            "completion_window": "1h",
            "requests": [{"custom_id": "x", "input": {"company": "ACME"}}],
        },
    )
    assert response.status_code == 202, response.text
    final = wait_for(client, response.json()["id"], ended)
    assert final["status"] == "completed"
    assert final["completion_window"] == "1h"
    assert [r["custom_id"] for r in rows(client, final["results_url"])] == ["x"]


@pytest.mark.parametrize(
    ("params", "content_type", "status", "param"),
    [
        ({"completion_window": "2 weeks"}, "application/jsonl", 422, "completion_window"),
        ({"on_invalid": "ignore"}, "application/jsonl", 422, "on_invalid"),
        ({"metadata": "[1"}, "application/jsonl", 422, "metadata"),
        ({"colour": "blue"}, "application/jsonl", 422, "colour"),
        ({}, "application/xml", 415, None),
    ],
)
def test_bad_batch_options_are_a_clear_4xx(
    client: httpx.Client,
    module: str,
    params: dict[str, str],
    content_type: str,
    status: int,
    param: str | None,
) -> None:
    response = client.post(
        "/v1/batches",
        content=b'{"custom_id": "a", "message": "hi"}\n',
        params={"agent": f"{module}.quick", **params},
        headers={"Content-Type": content_type},
    )
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param


def test_another_tenants_batch_is_a_404(
    client: httpx.Client, api: str, store: Store, module: str
) -> None:
    batch = submit(client, [{"custom_id": "a", "message": "hi"}], agent=f"{module}.quick").json()
    other = store.create_tenant(f"t-other-{batch['id'][-6:]}")
    headers = {"Authorization": f"Bearer {store.create_api_key(other.id)}"}
    with httpx.Client(base_url=api, headers=headers) as stranger:
        for path in ("", "/results", "/errors", "/events"):
            assert stranger.get(f"/v1/batches/{batch['id']}{path}").status_code == 404
        assert stranger.post(f"/v1/batches/{batch['id']}/cancel").status_code == 404
        assert stranger.get("/v1/batches").json()["data"] == []
    listed = client.get("/v1/batches").json()["data"]
    assert [b["id"] for b in listed] == [batch["id"]]


def test_cancel_mid_batch_keeps_what_finished_and_ends_every_other_line(
    client: httpx.Client, store: Store, tenant: TenantKey, module: str
) -> None:
    update_limits(store, tenant.tenant_id, max_concurrent_runs=4)
    lines = [{"custom_id": f"c-{i}", "message": "hi"} for i in range(60)]
    batch = submit(client, lines, agent=f"{module}.slow").json()
    wait_for(client, batch["id"], lambda b: b["request_counts"]["completed"] >= 3)
    partial = rows(client, batch["results_url"])  # partial results while it runs
    assert len(partial) >= 3
    cancelled = client.post(f"/v1/batches/{batch['id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] in ("cancelling", "cancelled")
    final = wait_for(client, batch["id"], ended)
    assert final["status"] == "cancelled"
    counts = final["request_counts"]
    counts_add_up(final)
    assert counts["queued"] == counts["running"] == 0
    assert counts["cancelled"] > 40
    results, errors = rows(client, final["results_url"]), rows(client, final["errors_url"])
    assert {r["custom_id"] for r in partial} <= {r["custom_id"] for r in results}
    every = [r["custom_id"] for r in results] + [e["custom_id"] for e in errors]
    assert sorted(every) == sorted(line["custom_id"] for line in lines)
    assert {e["status"] for e in errors} == {"cancelled"}
    never_started = [e for e in errors if e["run_id"] is None]
    assert never_started and never_started[0]["error"]["code"] == "cancelled"
    assert client.post(f"/v1/batches/{batch['id']}/cancel").status_code == 200  # idempotent


def test_past_its_completion_window_a_batch_expires_and_keeps_its_results(
    client: httpx.Client, store: Store, tenant: TenantKey, module: str
) -> None:
    update_limits(store, tenant.tenant_id, max_concurrent_runs=3)
    lines = [{"custom_id": f"c-{i}", "message": "hi"} for i in range(40)]
    batch = submit(client, lines, agent=f"{module}.slow", completion_window="3s").json()
    final = wait_for(client, batch["id"], ended)
    assert final["status"] == "expired"
    assert final["expired_at"] is not None
    counts = final["request_counts"]
    counts_add_up(final)
    assert counts["expired"] > 20
    results, errors = rows(client, final["results_url"]), rows(client, final["errors_url"])
    every = [r["custom_id"] for r in results] + [e["custom_id"] for e in errors]
    assert sorted(every) == sorted(line["custom_id"] for line in lines)
    assert {e["status"] for e in errors} == {"expired"}
    assert client.post(f"/v1/batches/{batch['id']}/cancel").status_code == 409


def test_progress_events_grow_end_with_done_and_resume_after_an_id(
    client: httpx.Client, module: str
) -> None:
    lines = [{"custom_id": f"c-{i}", "message": "hi"} for i in range(30)]
    batch = submit(client, lines, agent=f"{module}.quick").json()
    events = _sse(client, f"/v1/batches/{batch['id']}/events")
    ids = [int(e["id"]) for e in events]
    assert ids == sorted(set(ids))
    assert [e["event"] for e in events][-1] == "batch.done"
    assert {e["event"] for e in events[:-1]} <= {"batch.progress"}
    last = json.loads(events[-1]["data"])
    assert last["status"] == "completed" and last["request_counts"]["completed"] == 30
    resumed = _sse(client, f"/v1/batches/{batch['id']}/events", last_event_id=str(ids[-1] - 1))
    assert [int(e["id"]) for e in resumed] == [ids[-1]]
    assert _sse(client, f"/v1/batches/{batch['id']}/events", last_event_id=str(ids[-1])) == []
    assert client.get(f"/v1/batches/{batch['id']}/events?after=-1").status_code == 400


def _sse(client: httpx.Client, path: str, last_event_id: str | None = None) -> list[dict[str, str]]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    events, current = [], {}
    with client.stream("GET", path, headers=headers, timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line:
                if "event" in current:
                    events.append(current)
                current = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                current[name] = value.strip()
    return events


def test_a_paged_list_of_batches(client: httpx.Client, module: str, tmp_path: Path) -> None:
    ids = [
        submit(client, [{"custom_id": "a", "message": "hi"}], agent=f"{module}.quick").json()["id"]
        for _ in range(3)
    ]
    first = client.get("/v1/batches", params={"limit": 2}).json()
    assert [b["id"] for b in first["data"]] == ids[::-1][:2] and first["has_more"]
    second = client.get("/v1/batches", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [b["id"] for b in second["data"]] == [ids[0]] and not second["has_more"]
