"""The FAOS surface of the SDK against the real shim and worker: invoke, ainvoke, stream,
A2A input, multi-tenant invocation, and shortcuts."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from runrelay import AgentResponse, AsyncClient, Client, NotFoundError, StreamChunk, ValidationError
from tests.conftest import TenantKey

QUERY = {"query": "Analyze Q1 2024 revenue trends", "company": "ACME Corp"}


@pytest.fixture
def sdk(api: str, tenant: TenantKey) -> Iterator[Client]:
    with Client(tenant.key, base_url=api) as client:
        yield client


def test_invoke_returns_result_metadata_usage_and_request_id(sdk: Client) -> None:
    response = sdk.agents.invoke("credit-risk-analyst", QUERY)
    assert response.result["output"].startswith("The credit score")
    assert response.result["tool_calls"][0]["name"] == "lookup_credit_score"
    assert response.metadata["model"] == "scripted-analyst"
    assert response.metadata["duration_ms"] >= 0
    assert (
        response.usage.total_tokens
        == response.usage.prompt_tokens + response.usage.completion_tokens
        > 0
    )
    assert response.request_id.startswith("req_")
    assert response.run.status == "completed" and response.run.input == QUERY


def test_a2a_input_is_recognised_by_its_task_key(sdk: Client) -> None:
    response = sdk.agents.invoke(
        "credit-risk-analyst", {"task": {"id": "task-1", "input": {"query": "Q1"}}}
    )
    assert response.run.input == {"query": "Q1"}


def test_ainvoke_on_the_sync_client_and_invoke_on_the_async_client(
    sdk: Client, api: str, tenant: TenantKey
) -> None:
    async def both() -> tuple[str, str]:
        first = await sdk.agents.ainvoke("credit-risk-analyst", QUERY)
        async with AsyncClient(tenant.key, base_url=api) as client:
            second = await client.agents.invoke("bank credit-analyst", {"query": "Q2"})
            third = await client.agents.ainvoke("credit-risk-analyst", {"query": "Q3"})
            assert third.run.status == "completed"
        return first.result["output"], second.result["output"]

    first, second = asyncio.run(both())
    assert first == second != ""


def test_invoke_for_a_tenant_with_a_platform_key(api: str, tenant: TenantKey, store) -> None:
    platform = store.create_tenant(f"platform-sdk-{tenant.tenant_id}")
    with Client(store.create_api_key(platform.id, is_platform=True), base_url=api) as client:
        response = client.agents.invoke("credit-risk-analyst", QUERY, tenant_id=tenant.tenant_id)
    assert response.run.tenant_id == tenant.tenant_id


def _text_and_done(chunks: list[StreamChunk]) -> tuple[str, StreamChunk]:
    assert [c.type for c in chunks].count("done") == 1 and chunks[-1].type == "done"
    return "".join(c.data for c in chunks if c.type == "text"), chunks[-1]


def test_stream_chunks_with_async_for_and_with_for(
    sdk: Client, api: str, tenant: TenantKey
) -> None:
    async def collect() -> list[StreamChunk]:
        return [chunk async for chunk in sdk.agents.stream("credit-risk-analyst", QUERY)]

    chunks = asyncio.run(collect())
    text, done = _text_and_done(chunks)
    assert done.data["status"] == "completed" and done.data["output"] == text
    assert done.data["usage"]["total_tokens"] > 0
    tool = next(c for c in chunks if c.type == "tool_call")
    assert (
        tool.data["name"] == "lookup_credit_score" and tool.data["result"]["company"] == "ACME Corp"
    )
    assert any(c.type == "metadata" and c.data["type"] == "agent_resolved" for c in chunks)
    ids = [int(c.id) for c in chunks if c.id]
    assert ids == sorted(set(ids)), "each chunk once, in order"

    sync_stream = sdk.agents.stream("credit-risk-analyst", QUERY)
    sync_chunks = list(sync_stream)
    assert _text_and_done(sync_chunks)[0] == text
    assert sync_stream.last_event_id == sync_chunks[-1].id and sync_stream.run_id

    async def on_async_client() -> list[StreamChunk]:
        async with AsyncClient(tenant.key, base_url=api) as client:
            return [c async for c in client.agents.stream("bank credit-analyst", QUERY)]

    assert _text_and_done(asyncio.run(on_async_client()))[0] == text


def test_stream_resumes_from_a_last_event_id_given_back(sdk: Client) -> None:
    first = sdk.agents.stream("slow-analyst", {"query": "portfolio"})
    seen = []
    for chunk in first:
        seen.append(chunk)
        if len([c for c in seen if c.type == "text"]) == 5:
            break
    assert first.last_event_id == seen[-1].id
    rest = list(
        sdk.agents.stream(
            "slow-analyst",
            {"query": "portfolio"},
            last_event_id=first.last_event_id,
            run_id=first.run_id,
        )
    )
    assert int(rest[0].id) > int(seen[-1].id)
    text, done = _text_and_done(seen + rest)
    assert done.data["output"] == text, "nothing lost, nothing twice"


def test_stream_resumes_by_idempotency_key_without_the_run_id(sdk: Client) -> None:
    key = "faos-resume-" + QUERY["company"].replace(" ", "-")
    first = sdk.agents.stream("credit-risk-analyst", QUERY, idempotency_key=key)
    head = [chunk for _, chunk in zip(range(6), first, strict=False)]
    rest = list(
        sdk.agents.stream(
            "credit-risk-analyst", QUERY, idempotency_key=key, last_event_id=head[-1].id
        )
    )
    assert int(rest[0].id) > int(head[-1].id)
    assert rest[-1].data["run_id"] == first.run_id, "the same run, not a new one"
    text, done = _text_and_done(head + rest)
    assert done.data["output"] == text


def test_resuming_without_a_run_is_a_validation_error(sdk: Client) -> None:
    with pytest.raises(ValidationError, match="run_id"):
        sdk.agents.stream("credit-risk-analyst", QUERY, last_event_id="42")
    with pytest.raises(ValidationError, match="last_event_id"):
        sdk.agents.stream("credit-risk-analyst", QUERY, last_event_id="evt-42", run_id="run_x")


def test_shortcuts_list_and_resolve(sdk: Client) -> None:
    shortcuts = sdk.shortcuts.list(module="bank")
    by_pattern = {s.pattern: s for s in shortcuts}
    assert by_pattern["bank"].type == "module"
    analyst = by_pattern["bank credit-analyst"]
    assert analyst.type == "agent" and analyst.agent_id == "bank.credit-risk-analyst"
    assert analyst.module_key == "bank" and analyst.examples
    assert {s.module_key for s in shortcuts} == {"bank"}
    assert "bank credit-analyst" in {s.pattern for s in sdk.shortcuts.list()}

    resolution = sdk.shortcuts.resolve("bank credit-analyst")
    assert resolution.resolved and resolution.agent_id == "bank.credit-risk-analyst"
    assert resolution.agent_name == "Credit Risk Analyst"
    assert resolution.module_name == "Banking & Finance"
    assert resolution.capabilities == ["credit_analysis", "risk_assessment"]
    assert resolution.task_template == "Assess the credit risk of {company}"
    assert resolution.suggestions == []


def test_unresolved_shortcut_offers_close_matches(sdk: Client) -> None:
    typo = sdk.shortcuts.resolve("bank credit-analyts")
    assert not typo.resolved and typo.agent_id is None
    assert "bank credit-analyst" in typo.suggestions
    module_only = sdk.shortcuts.resolve("bank")
    assert not module_only.resolved and module_only.module_key == "bank"
    assert "bank credit-analyst" in module_only.suggestions
    nothing = sdk.shortcuts.resolve("zzz qqq")
    assert not nothing.resolved and nothing.suggestions == []
    with pytest.raises(NotFoundError) as error:
        sdk.shortcuts.list(module="faos-nope")
    assert error.value.code == "module_not_found" and "bank" in error.value.message


def test_shortcut_runs_its_agent(sdk: Client, api: str, tenant: TenantKey) -> None:
    response = sdk.shortcut("bank credit-analyst")
    assert isinstance(response, AgentResponse)
    assert response.content.startswith("The credit score")
    assert response.agent_id == "bank.credit-risk-analyst"
    assert response.metadata["tokens_used"] > 0

    async def on_async_client() -> AgentResponse:
        async with AsyncClient(tenant.key, base_url=api) as client:
            return await client.shortcut("bank credit-analyst", {"company": "ACME Corp"})

    assert asyncio.run(on_async_client()).content == response.content
    with pytest.raises(NotFoundError) as error:
        sdk.shortcut("bank credit-analyts")
    assert "bank credit-analyst" in str(error.value), "the 404 names the close match"
