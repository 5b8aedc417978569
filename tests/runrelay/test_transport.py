"""Retries: a create whose answer is lost is sent again with the same idempotency key, so it
never makes two runs; retry delays honour Retry-After."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import pytest

from runrelay import (
    APIConnectionError,
    AsyncClient,
    Client,
    ConflictError,
    NotFoundError,
    RateLimitError,
)
from runrelay.errors import status_error
from runrelay.transport import retry_delay
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


def test_cancel_posts_to_the_cancel_endpoint(api: str, tenant: TenantKey) -> None:
    """The cancel endpoint is issue 5's; here only the request the SDK sends is checked."""
    with tcp_proxy(api) as proxy, Client(tenant.key, base_url=proxy.base_url) as sdk:
        run = sdk.runs.create("credit-risk-analyst", input=QUERY)
        # Without issue 5's endpoint the shim answers 404; with it, the run or a 409.
        with contextlib.suppress(NotFoundError, ConflictError):
            sdk.runs.cancel(run.id)
    assert f"POST /v1/runs/{run.id}/cancel HTTP/1.1" in proxy.requests


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
