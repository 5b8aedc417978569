"""Idempotent creates: one key makes at most one run per tenant, however often and however
concurrently it is sent."""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.conftest import TenantKey

ANALYST = {"agent": "bank credit-analyst", "input": {"company": "ACME Corp"}}


def test_concurrent_creates_with_one_key_make_one_run(api: str, tenant: TenantKey) -> None:
    key = f"k-{secrets.token_hex(8)}"

    def create(_: int) -> httpx.Response:
        with httpx.Client(base_url=api, headers=tenant.headers, timeout=30) as http:
            return http.post("/v1/runs", json=ANALYST, headers={"Idempotency-Key": key})

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(create, range(8)))
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["id"] for r in responses}) == 1
    with httpx.Client(base_url=api, headers=tenant.headers) as http:
        assert len(http.get("/v1/runs").json()["data"]) == 1


def test_the_key_in_the_body_and_in_the_header_are_the_same_key(client: httpx.Client) -> None:
    key = f"k-{secrets.token_hex(8)}"
    first = client.post("/v1/runs", json={**ANALYST, "idempotency_key": key}).json()
    again = client.post("/v1/runs", json=ANALYST, headers={"Idempotency-Key": key}).json()
    waited = client.post("/v1/runs/wait", json=ANALYST, headers={"Idempotency-Key": key}).json()
    assert first["id"] == again["id"] == waited["run"]["id"]
    assert waited["run"]["status"] == "completed"
    other = client.post("/v1/runs", json=ANALYST, headers={"Idempotency-Key": key + "-2"}).json()
    assert other["id"] != first["id"]


def test_same_key_with_another_body_is_refused(client: httpx.Client) -> None:
    key = f"k-{secrets.token_hex(8)}"
    assert (
        client.post("/v1/runs", json=ANALYST, headers={"Idempotency-Key": key}).status_code == 202
    )
    response = client.post(
        "/v1/runs",
        json={**ANALYST, "input": {"company": "Other"}},
        headers={"Idempotency-Key": key},
    )
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "idempotency_key_reused" and error["param"] == "idempotency_key"
    assert "different request body" in error["message"]
    assert len(client.get("/v1/runs").json()["data"]) == 1


def test_header_and_body_keys_that_differ_are_refused(client: httpx.Client) -> None:
    response = client.post(
        "/v1/runs", json={**ANALYST, "idempotency_key": "a"}, headers={"Idempotency-Key": "b"}
    )
    assert response.status_code == 422 and response.json()["error"]["param"] == "idempotency_key"


def test_keys_belong_to_one_tenant(client: httpx.Client, api: str, store) -> None:
    key = f"k-{secrets.token_hex(8)}"
    mine = client.post("/v1/runs", json=ANALYST, headers={"Idempotency-Key": key}).json()
    other_tenant = store.create_tenant(f"idem-{secrets.token_hex(6)}")
    headers = {
        "Authorization": f"Bearer {store.create_api_key(other_tenant.id)}",
        "Idempotency-Key": key,
    }
    theirs = httpx.post(f"{api}/v1/runs", json=ANALYST, headers=headers).json()
    assert theirs["id"] != mine["id"] and theirs["tenant_id"] == other_tenant.id


def test_a_key_whose_agent_was_not_found_stays_free(client: httpx.Client) -> None:
    key = f"k-{secrets.token_hex(8)}"
    missing = client.post(
        "/v1/runs", json={"agent": "nobody", "message": "hi"}, headers={"Idempotency-Key": key}
    )
    assert missing.status_code == 404
    assert (
        client.post("/v1/runs", json=ANALYST, headers={"Idempotency-Key": key}).status_code == 202
    )
