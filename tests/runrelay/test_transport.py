"""Retries: a create whose answer is lost is sent again with the same idempotency key, so it
never makes two runs; retry delays honour Retry-After."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from runrelay import (
    APIConnectionError,
    AsyncClient,
    Client,
    ConflictError,
    RateLimitError,
)
from runrelay.client._transport import retry_delay
from runrelay.errors import status_error
from tests.conftest import TenantKey
from tests.tcp_proxy import tcp_proxy

QUERY = {"company": "ACME Corp"}


def _runs(client: httpx.Client) -> list[dict]:
    return client.get("/v1/runs").json()["data"]


def test_create_retried_after_a_lost_answer_makes_one_run(
    api: str, tenant: TenantKey, client: httpx.Client
) -> None:
    with tcp_proxy(api) as proxy, Client(tenant.key, base_url=proxy.base_url) as sdk:
        proxy.drop_responses(1)
        run = sdk.runs.create("credit-risk-analyst", input=QUERY)
    assert [r.split()[:2] for r in proxy.requests] == [["POST", "/v1/runs"]] * 2
    assert [r["id"] for r in _runs(client)] == [run.id]


def test_invoke_retried_after_a_lost_answer_returns_the_first_run(
    api: str, tenant: TenantKey, client: httpx.Client
) -> None:
    with tcp_proxy(api) as proxy, Client(tenant.key, base_url=proxy.base_url) as sdk:
        proxy.drop_responses(1)
        response = sdk.agents.invoke("credit-risk-analyst", QUERY)
    assert proxy.connections == 2
    assert response.run.status == "completed"
    assert [r["id"] for r in _runs(client)] == [response.run.id]


def test_async_invoke_retried_after_a_lost_answer_makes_one_run(
    api: str, tenant: TenantKey, client: httpx.Client
) -> None:
    async def invoke(base_url: str) -> str:
        async with AsyncClient(tenant.key, base_url=base_url) as sdk:
            return (await sdk.agents.invoke("credit-risk-analyst", QUERY)).run.id

    with tcp_proxy(api) as proxy:
        proxy.drop_responses(1)
        run_id = asyncio.run(invoke(proxy.base_url))
    assert [r["id"] for r in _runs(client)] == [run_id]


def test_without_retries_a_lost_answer_is_a_connection_error(api: str, tenant: TenantKey) -> None:
    with tcp_proxy(api) as proxy, Client(tenant.key, base_url=proxy.base_url, max_retries=0) as sdk:
        proxy.drop_responses(1)
        with pytest.raises(APIConnectionError):
            sdk.runs.create("credit-risk-analyst", input=QUERY)
    assert proxy.connections == 1


def test_a_user_idempotency_key_spans_calls(
    api: str, tenant: TenantKey, client: httpx.Client
) -> None:
    with Client(tenant.key, base_url=api) as sdk:
        first = sdk.runs.create("credit-risk-analyst", input=QUERY, idempotency_key="order-42")
        again = sdk.runs.create("credit-risk-analyst", input=QUERY, idempotency_key="order-42")
    assert first.id == again.id and len(_runs(client)) == 1


def test_cancel_stops_a_running_run_and_a_second_cancel_is_one_conflict(
    api: str, tenant: TenantKey
) -> None:
    """A 409 that waiting cannot change (`run_not_cancellable`) is raised at once, not retried."""
    with tcp_proxy(api) as proxy, Client(tenant.key, base_url=proxy.base_url) as sdk:
        run = sdk.runs.create("slow-analyst", message="go")
        stream = sdk.runs.events(run.id)
        for event in stream:
            if event["type"] == "output_text_delta":
                break
        cancelled = sdk.runs.cancel(run.id)
        assert cancelled.status == "cancelled"
        before = len(proxy.requests)
        with pytest.raises(ConflictError) as conflict:
            sdk.runs.cancel(run.id)
        assert conflict.value.code == "run_not_cancellable"
        assert len(proxy.requests) == before + 1, "the conflict was not retried"
        assert sdk.runs.get(run.id).status == "cancelled"


def test_retry_delay_honours_retry_after_and_backs_off_with_jitter() -> None:
    request = httpx.Request("POST", "http://runrelay.test/v1/runs")
    limited = status_error(
        httpx.Response(429, headers={"Retry-After": "3"}, json={}, request=request)
    )
    assert isinstance(limited, RateLimitError)
    assert retry_delay(0, limited) == 3
    delays = [retry_delay(attempt, None) for attempt in range(6)]
    assert 0.375 <= delays[0] <= 0.5 and 0.75 <= delays[1] <= 1.0
    assert all(delay <= 8 for delay in delays)
