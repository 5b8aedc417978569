"""The run endpoints as a client sees them: create, wait, get, list, and tenant isolation."""

from __future__ import annotations

import httpx

from tests.conftest import TenantKey
from tests.sse import assert_complete_log, read_events, wait_finished

ANALYST = {"agent": "bank credit-analyst", "input": {"company": "ACME Corp"}}


def test_create_returns_202_with_location_and_the_run_completes(client: httpx.Client) -> None:
    response = client.post("/v1/runs", json={**ANALYST, "metadata": {"batch": "q1"}})
    assert response.status_code == 202
    run = response.json()
    assert response.headers["location"] == f"/v1/runs/{run['id']}"
    assert run["status"] == "queued" and run["agent"]["name"] == "credit-risk-analyst"
    assert run["events_url"] == f"/v1/runs/{run['id']}/events"
    done = wait_finished(client, run["id"])
    assert done["status"] == "completed"
    assert done["output"].startswith("The credit score")
    assert (
        done["usage"]["total_tokens"]
        == done["usage"]["prompt_tokens"] + done["usage"]["completion_tokens"]
        > 0
    )
    assert done["metadata"] == {"batch": "q1"}
    assert done["started_at"] and done["finished_at"] and done["attempts"] == 1
    assert done["result"]["tool_calls"][0]["name"] == "lookup_credit_score"


def test_wait_returns_the_result_usage_and_metadata(client: httpx.Client) -> None:
    response = client.post("/v1/runs/wait", json={**ANALYST, "model_params": {"temperature": 0.2}})
    assert response.status_code == 200
    body = response.json()
    assert body["result"]["output"] == body["run"]["output"] != ""
    assert body["usage"]["total_tokens"] > 0
    assert body["metadata"]["model"] == "scripted-analyst"
    assert body["metadata"]["duration_ms"] >= 0
    assert body["request_id"] == response.headers["x-request-id"]
    assert body["run"]["status"] == "completed"


def test_a2a_task_body_is_recognised(client: httpx.Client) -> None:
    response = client.post(
        "/v1/runs/wait",
        json={"agent": "credit-risk-analyst", "task": {"id": "task-1", "input": {"query": "Q1"}}},
    )
    assert response.status_code == 200
    assert response.json()["run"]["input"] == {"query": "Q1"}


def test_tag_resolves_to_its_agent(client: httpx.Client) -> None:
    response = client.post("/v1/runs", json={"tag": "production", "message": "hi"})
    assert response.status_code == 202
    assert response.json()["agent"] == {
        "name": "credit-risk-analyst",
        "id": "bank.credit-risk-analyst",
        "revision": 1,
        "tag": "production",
    }


def test_list_is_newest_first_with_cursor_pagination(client: httpx.Client) -> None:
    created = [client.post("/v1/runs", json=ANALYST).json()["id"] for _ in range(5)]
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/runs", params=params).json()
        seen += [run["id"] for run in page["data"]]
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    assert seen == list(reversed(created))


def test_list_filters_by_status(client: httpx.Client) -> None:
    run = client.post("/v1/runs/wait", json=ANALYST).json()["run"]
    completed = client.get("/v1/runs", params={"status": "completed"}).json()["data"]
    assert run["id"] in [r["id"] for r in completed]
    assert client.get("/v1/runs", params={"status": "failed"}).json()["data"] == []


def test_another_tenants_run_and_events_are_404(
    client: httpx.Client, api: str, tenant: TenantKey, store
) -> None:
    run = client.post("/v1/runs/wait", json=ANALYST).json()["run"]
    other_tenant = store.create_tenant(f"other-{tenant.tenant_id}")
    other = httpx.Client(
        base_url=api,
        timeout=10,
        headers={"Authorization": f"Bearer {store.create_api_key(other_tenant.id)}"},
    )
    with other:
        for path in (f"/v1/runs/{run['id']}", f"/v1/runs/{run['id']}/events"):
            response = other.get(path)
            assert response.status_code == 404, path
            assert response.json()["error"]["code"] == "run_not_found"
        assert other.get("/v1/runs").json()["data"] == []
        forged = other.post("/v1/runs", json={**ANALYST, "tenant_id": tenant.tenant_id})
        assert forged.status_code == 403, "a tenant key cannot act for another tenant"
    assert client.get("/v1/runs/run_doesnotexist").status_code == 404


def test_a_run_just_created_streams_to_its_tenant_only(
    client: httpx.Client, api: str, tenant: TenantKey, store
) -> None:
    """The shim opens the stream of a run it created moments ago without reading the database
    (`RecentRuns`): another tenant must still get 404, and the owner the whole log."""
    run = client.post("/v1/runs", json=ANALYST).json()
    other_tenant = store.create_tenant(f"recent-{tenant.tenant_id}")
    headers = {"Authorization": f"Bearer {store.create_api_key(other_tenant.id)}"}
    with httpx.Client(base_url=api, timeout=10, headers=headers) as other:
        response = other.get(f"/v1/runs/{run['id']}/events")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "run_not_found"
    events = read_events(client, "GET", f"/v1/runs/{run['id']}/events")
    assert_complete_log(events)
    assert events[-1]["type"] == "done" and events[-1]["status"] == "completed"


def test_platform_key_acts_for_a_tenant(api: str, tenant: TenantKey, store) -> None:
    platform = store.create_tenant(f"platform-{tenant.tenant_id}")
    headers = {"Authorization": f"Bearer {store.create_api_key(platform.id, is_platform=True)}"}
    with httpx.Client(base_url=api, timeout=10, headers=headers) as http:
        run = http.post("/v1/runs", json={**ANALYST, "tenant_id": tenant.tenant_id}).json()
        assert run["tenant_id"] == tenant.tenant_id
        listed = http.get("/v1/runs", headers={"X-Tenant-ID": tenant.tenant_id}).json()["data"]
        assert [r["id"] for r in listed] == [run["id"]]


def test_every_response_has_a_request_id(client: httpx.Client, api: str) -> None:
    ok = client.get("/v1/agents")
    assert ok.headers["x-request-id"].startswith("req_")
    echoed = client.get("/v1/agents", headers={"X-Request-ID": "trace-123"})
    assert echoed.headers["x-request-id"] == "trace-123"
    missing = httpx.get(f"{api}/v1/runs")
    assert missing.status_code == 401
    assert missing.json()["error"]["request_id"] == missing.headers["x-request-id"]
    assert client.get("/nope").headers["x-request-id"]


def test_health_readiness_docs_and_agents(client: httpx.Client, api: str) -> None:
    assert httpx.get(f"{api}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{api}/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"redis": "ok", "database": "ok"}
    assert httpx.get(f"{api}/docs").status_code == 200
    assert "/v1/runs/{run_id}/events" in httpx.get(f"{api}/openapi.json").json()["paths"]
    agents = {a["name"]: a for a in client.get("/v1/agents").json()["data"]}
    assert {"credit-risk-analyst", "slow-analyst", "openai-analyst"} <= set(agents)
    assert "bank credit-analyst" in agents["credit-risk-analyst"]["shortcuts"]
    one = client.get("/v1/agents/bank credit-analyst").json()
    assert one["id"] == "bank.credit-risk-analyst" and one["module_name"] == "Banking & Finance"


def test_stream_endpoint_events_match_the_replay(client: httpx.Client) -> None:
    live = read_events(client, "POST", "/v1/runs/stream", json=ANALYST)
    replay = read_events(client, "GET", f"/v1/runs/{live[0]['run_id']}/events")
    assert live == replay
