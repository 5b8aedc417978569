"""Rough edges a new user hit (issue 14), at the API: bodies without `Content-Type`, a bad
status filter, duplicate shortcuts, agents that hide their tags."""

from __future__ import annotations

import json

import httpx

ANALYST = {"agent": "bank credit-analyst", "input": {"company": "ACME Corp"}}


def test_a_json_body_without_content_type_is_read_as_json(api: str, client: httpx.Client) -> None:
    headers = {"Authorization": client.headers["Authorization"]}
    response = httpx.post(f"{api}/v1/runs", content=json.dumps(ANALYST).encode(), headers=headers)
    assert response.status_code == 202, response.text
    assert response.json()["id"].startswith("run_")


def test_a_form_encoded_body_is_a_415_naming_the_header(client: httpx.Client) -> None:
    # What `curl -d '{...}'` sends when the example forgets `-H 'Content-Type: application/json'`.
    response = client.post(
        "/v1/runs",
        content=json.dumps(ANALYST).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 415
    error = response.json()["error"]
    assert error["code"] == "unsupported_media_type"
    assert "Content-Type: application/json" in error["message"]
    assert response.headers["x-request-id"] == error["request_id"]


def test_a_post_without_a_body_still_works(api: str, client: httpx.Client) -> None:
    run = client.post("/v1/runs", json={"agent": "slow-analyst", "message": "x"}).json()
    cancelled = httpx.post(
        f"{api}/v1/runs/{run['id']}/cancel",
        headers={"Authorization": client.headers["Authorization"]},
        timeout=30,
    )
    assert cancelled.status_code in (200, 202)


def test_an_unknown_status_filter_is_a_422_listing_the_valid_ones(client: httpx.Client) -> None:
    response = client.get("/v1/runs", params={"status": "bogus"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["param"] == "status"
    for status in ("queued", "running", "requires_action", "completed", "cancelled", "expired"):
        assert status in error["message"]


def test_a_valid_status_filter_still_filters(client: httpx.Client) -> None:
    run = client.post("/v1/runs", json={"agent": "slow-analyst", "message": "x"}).json()
    client.post(f"/v1/runs/{run['id']}/cancel")
    listed = client.get("/v1/runs", params={"status": "cancelled"}).json()["data"]
    assert [r["id"] for r in listed] == [run["id"]]
    assert client.get("/v1/runs", params={"status": "completed"}).json()["data"] == []


def test_shortcuts_are_listed_once(client: httpx.Client) -> None:
    patterns = [s["pattern"] for s in client.get("/v1/shortcuts").json()["data"]]
    assert "bank openai-analyst" in patterns
    assert len(patterns) == len(set(patterns)), sorted(patterns)


def test_agents_list_their_tags(client: httpx.Client) -> None:
    agents = {a["name"]: a for a in client.get("/v1/agents").json()["data"]}
    analyst = agents["credit-risk-analyst"]
    assert analyst["tags"] == {"production": analyst["revision"]}
    assert agents["slow-analyst"]["tags"] == {}
    one = client.get("/v1/agents/credit-risk-analyst").json()
    assert one["tags"] == {"production": analyst["revision"]}
