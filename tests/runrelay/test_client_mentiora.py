"""The Mentiora surface of the SDK against the real shim and worker: run, run_async, stream,
stream_async, the validation rules (checked before any request) and the typed events."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator

import pytest

from runrelay import (
    AgentErrorEvent,
    AgentResolvedEvent,
    AgentRunParams,
    AgentStreamEvent,
    AsyncClient,
    ChatCompletedEvent,
    Client,
    CustomEvent,
    ModelParams,
    NotFoundError,
    OutputTextDeltaEvent,
    SuggestionsEvent,
    ToolCallDeltaEvent,
    ToolCallResultEvent,
    ValidationError,
)
from runrelay.client._responses import to_agent_event
from tests.conftest import TenantKey
from tests.fake_openai import FakeOpenAI, http_error
from tests.tcp_proxy import tcp_proxy


@pytest.fixture
def sdk(api: str, tenant: TenantKey) -> Iterator[Client]:
    with Client(tenant.key, base_url=api) as client:
        yield client


def test_run_by_tag_returns_the_complete_result(sdk: Client) -> None:
    result = sdk.agents.run(
        AgentRunParams(
            tag="production",
            message="What is the weather today?",
            metadata={"source": "test"},
            end_user_id="u-1",
        )
    )
    assert result.status == "completed"
    assert result.output.startswith("The credit score")
    assert result.agent_id == "bank.credit-risk-analyst" and result.agent_revision == 1
    assert result.agent_tag == "production"
    assert result.thread_id.startswith("thr_") and result.trace_id and result.run_id
    assert [c.name for c in result.tool_calls] == ["lookup_credit_score"]
    assert result.tool_calls[0].result["company"] == "ACME Corp"
    assert (
        result.usage is not None and result.usage.prompt_tokens and result.usage.completion_tokens
    )


def test_run_async_by_agent_id_and_revision_on_both_clients(
    sdk: Client, api: str, tenant: TenantKey
) -> None:
    params = AgentRunParams(
        agent_id="bank.credit-risk-analyst",
        revision=1,
        message="Assess ACME",
        model_params=ModelParams(temperature=0.2, max_tokens=100, seed=1),
    )

    async def both() -> tuple[str, str]:
        first = await sdk.agents.run_async(params)
        async with AsyncClient(tenant.key, base_url=api) as client:
            second = await client.agents.run(params)
        return first.output, second.output

    first, second = asyncio.run(both())
    assert first == second != ""
    with pytest.raises(NotFoundError) as error:
        sdk.agents.run(
            AgentRunParams(agent_id="bank.credit-risk-analyst", revision=99, message="x")
        )
    assert error.value.code == "revision_not_found"


def test_stream_yields_typed_events_sync_and_async(sdk: Client) -> None:
    params = AgentRunParams(tag="production", message="Write a poem about Python.")
    events = list(sdk.agents.stream(params))
    kinds = [type(e) for e in events]
    assert (
        AgentResolvedEvent in kinds and ToolCallDeltaEvent in kinds and ToolCallResultEvent in kinds
    )
    resolved = next(e for e in events if isinstance(e, AgentResolvedEvent))
    assert resolved.agent_id == "bank.credit-risk-analyst" and resolved.agent_tag == "production"
    completed = next(e for e in events if isinstance(e, ChatCompletedEvent))
    text = "".join(e.delta for e in events if isinstance(e, OutputTextDeltaEvent))
    assert completed.status == "completed" and completed.output == text != ""
    assert completed.thread_id == resolved.thread_id
    custom = {e.event for e in events if isinstance(e, CustomEvent)}
    assert {"run_queued", "run_started", "usage", "done"} <= custom, "unknown names pass through"

    async def collect() -> list[AgentStreamEvent]:
        return [e async for e in sdk.agents.stream_async(params)]

    again = asyncio.run(collect())
    assert "".join(e.delta for e in again if isinstance(e, OutputTextDeltaEvent)) == text


def test_stream_stops_after_an_error_event(sdk: Client, fake_openai: FakeOpenAI) -> None:
    model = f"m-{secrets.token_hex(4)}"
    fake_openai.plan(http_error(401, model=model))
    events = list(
        sdk.agents.stream(
            AgentRunParams(agent_id="bank.openai-analyst", message="hi", model_id=model)
        )
    )
    assert isinstance(events[-1], AgentErrorEvent)
    assert events[-1].code == "provider_auth" and events[-1].message


@pytest.mark.parametrize(
    ("params", "param", "words"),
    [
        (AgentRunParams(tag="production"), "message", "required"),
        (AgentRunParams(tag="production", message="   "), "message", "empty"),
        (AgentRunParams(message="hi"), "tag", "either tag or agent_id"),
        (
            AgentRunParams(tag="production", agent_id="bank.credit-risk-analyst", message="hi"),
            "tag",
            "not both",
        ),
        (AgentRunParams(tag="Production", message="hi"), "tag", "^[a-z0-9][a-z0-9\\-_]*$"),
        (AgentRunParams(tag="-prod", message="hi"), "tag", "must match"),
        (AgentRunParams(tag="production", revision=2, message="hi"), "revision", "agent_id"),
        (
            AgentRunParams(
                tag="production", message="hi", model_params=ModelParams(temperature=2.5)
            ),
            "model_params.temperature",
            "between 0 and 2",
        ),
        (
            AgentRunParams(
                tag="production", message="hi", model_params=ModelParams(temperature=-0.1)
            ),
            "model_params.temperature",
            "between 0 and 2",
        ),
        (
            AgentRunParams(tag="production", message="hi", model_params=ModelParams(max_tokens=0)),
            "model_params.max_tokens",
            "positive",
        ),
    ],
)
def test_invalid_params_raise_before_any_request(
    api: str, tenant: TenantKey, params: AgentRunParams, param: str, words: str
) -> None:
    with tcp_proxy(api) as proxy, Client(tenant.key, base_url=proxy.base_url) as client:
        for call in (
            client.agents.run,
            lambda p: list(client.agents.stream(p)),
            lambda p: asyncio.run(client.agents.run_async(p)),
        ):
            with pytest.raises(ValidationError) as error:
                call(params)
            assert error.value.param == param and words in str(error.value)
        assert proxy.connections == 0, "nothing was sent"


def test_boundary_params_are_valid(sdk: Client) -> None:
    for temperature in (0, 2):
        result = sdk.agents.run(
            AgentRunParams(
                tag="production",
                message="hi",
                model_params=ModelParams(temperature=temperature, max_tokens=1),
            )
        )
        assert result.status == "completed"


def test_suggestions_keep_at_most_six_valid_items() -> None:
    raw = [{"label": f"Option {i}", "message": f"Tell me about {i}"} for i in range(5)]
    raw.insert(1, {"label": "x" * 41, "message": "too long a label"})
    raw.insert(2, {"label": "no message"})
    raw.insert(3, "not an object")
    raw += [{"label": "Sixth", "message": "6"}, {"label": "Seventh", "message": "7"}]
    event = to_agent_event({"type": "suggestions", "seq": 9, "suggestions": raw})
    assert isinstance(event, SuggestionsEvent) and event.id == "9"
    assert [s.label for s in event.suggestions] == [f"Option {i}" for i in range(5)] + ["Sixth"]
    forty = to_agent_event(
        {"type": "suggestions", "suggestions": [{"label": "y" * 40, "message": "m"}]}
    )
    assert isinstance(forty, SuggestionsEvent) and len(forty.suggestions) == 1


def test_unknown_and_custom_events_pass_through_as_custom() -> None:
    unknown = to_agent_event({"type": "approval_required", "seq": 4, "tool": "pay"})
    assert isinstance(unknown, CustomEvent) and unknown.event == "approval_required"
    assert unknown.data["tool"] == "pay"
    custom = to_agent_event({"type": "custom", "seq": 5, "event": "chart", "data": {"x": 1}})
    assert isinstance(custom, CustomEvent) and custom.event == "chart" and custom.data == {"x": 1}
