"""OpenAIProvider against the fake OpenAI-compatible server, over real HTTP."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from runrelay.agent.config import ProviderConfig
from runrelay.agent.providers.base import (
    Chunk,
    Finish,
    ModelRequest,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderConnectionError,
    ProviderError,
    ProviderProtocolError,
    ProviderRateLimited,
    ProviderServerError,
    ProviderTimeout,
    TextDelta,
    ToolCallFragment,
    UsageReport,
)
from runrelay.agent.providers.openai import OpenAIProvider, _retry_wait
from tests.fake_openai import (
    FakeOpenAI,
    Plan,
    http_error,
    malformed_chunk,
    serve_fake_openai,
    stalled_stream,
    text_answer,
    tool_call_answer,
    truncated_stream,
)

KEY = "sk-test-key"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with serve_fake_openai(api_key=KEY) as fake:
        yield fake


def config_for(server: FakeOpenAI, **overrides: object) -> ProviderConfig:
    values: dict[str, object] = {
        "type": "openai",
        "base_url": server.base_url,
        "api_key": KEY,
        "timeout_s": 5.0,
        "max_retries": 0,
    }
    values.update(overrides)
    return ProviderConfig.model_validate(values)


def ask(text: str = "Hi") -> ModelRequest:
    return ModelRequest(model="fake-model", messages=[{"role": "user", "content": text}])


def stream_all(config: ProviderConfig, request: ModelRequest) -> list[Chunk]:
    chunks, error = stream_until_error(config, request)
    if error is not None:
        raise error
    return chunks


def stream_until_error(
    config: ProviderConfig, request: ModelRequest
) -> tuple[list[Chunk], ProviderError | None]:
    """The chunks received, and the ProviderError that ended the stream, if any."""

    async def run() -> tuple[list[Chunk], ProviderError | None]:
        chunks: list[Chunk] = []
        async with httpx.AsyncClient(trust_env=False) as client:
            try:
                async for chunk in OpenAIProvider(config, client).stream(request):
                    chunks.append(chunk)
            except ProviderError as exc:
                return chunks, exc
        return chunks, None

    return asyncio.run(run())


def expect_error(config: ProviderConfig, request: ModelRequest) -> ProviderError:
    _, error = stream_until_error(config, request)
    assert error is not None, "the stream should have failed"
    return error


def text_of(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks if isinstance(c, TextDelta))


def fragments_of(chunks: list[Chunk]) -> list[ToolCallFragment]:
    return [c for c in chunks if isinstance(c, ToolCallFragment)]


def test_text_answer_arrives_as_several_deltas_with_usage_and_finish(server: FakeOpenAI) -> None:
    server.plan(
        text_answer("The answer is forty-two.", chunks=4, prompt_tokens=11, completion_tokens=6)
    )

    chunks = stream_all(config_for(server), ask())

    deltas = [c for c in chunks if isinstance(c, TextDelta)]
    assert len(deltas) == 4
    assert text_of(chunks) == "The answer is forty-two."
    assert UsageReport(prompt_tokens=11, completion_tokens=6) in chunks
    assert Finish("stop") in chunks


def test_sse_comment_lines_are_ignored(server: FakeOpenAI) -> None:
    server.plan(text_answer("Fine.", comment="OPENROUTER PROCESSING"))

    assert text_of(stream_all(config_for(server), ask())) == "Fine."


def test_split_tool_call_arguments_concatenate_to_valid_json(server: FakeOpenAI) -> None:
    calls = [
        ("get_weather", {"city": "Paris", "unit": "celsius"}),
        ("get_time", {"timezone": "Europe/Paris"}),
    ]
    server.plan(tool_call_answer(calls, split=4))

    chunks = stream_all(config_for(server), ask())

    fragments = fragments_of(chunks)
    assert len(fragments) > len(calls), "arguments should arrive in several fragments"
    for index, (name, arguments) in enumerate(calls):
        mine = [f for f in fragments if f.index == index]
        assert [f.name for f in mine if f.name] == [name]
        assert [f.id for f in mine if f.id] == [f"call_fake{index}"]
        assert json.loads("".join(f.arguments for f in mine)) == arguments
    assert Finish("tool_calls") in chunks


def test_parallel_calls_that_all_reuse_index_zero_keep_distinct_ids(server: FakeOpenAI) -> None:
    calls = [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Oslo"})]
    server.plan(tool_call_answer(calls, split=3, reuse_index=True))

    fragments = fragments_of(stream_all(config_for(server), ask()))

    assert {f.index for f in fragments} == {0}
    assert [f.id for f in fragments if f.id] == ["call_fake0", "call_fake1"]
    # A new id starts a new call, as the agent loop joins them.
    joined: list[str] = []
    for fragment in fragments:
        if fragment.id:
            joined.append("")
        joined[-1] += fragment.arguments
    assert [json.loads(args) for args in joined] == [args for _, args in calls]


def test_request_carries_model_messages_tools_sampling_and_bearer_key(
    server: FakeOpenAI,
) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    request = ModelRequest(
        model="gpt-test",
        messages=messages,
        tools=[WEATHER_TOOL],
        temperature=0.2,
        max_tokens=128,
        seed=7,
    )

    stream_all(config_for(server), request)

    [sent] = server.requests
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.body == {
        "model": "gpt-test",
        "messages": messages,
        "tools": [WEATHER_TOOL],
        "temperature": 0.2,
        "max_tokens": 128,
        "seed": 7,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_unset_options_and_empty_tools_are_left_out_of_the_request() -> None:
    with serve_fake_openai() as server:
        config = config_for(server, api_key=None, base_url=server.base_url + "/")

        stream_all(config, ask())

    [sent] = server.requests
    assert sent.path == "/v1/chat/completions"
    assert "authorization" not in sent.headers
    assert set(sent.body) == {"model", "messages", "stream", "stream_options"}


def test_wrong_key_raises_auth_error_at_once(server: FakeOpenAI) -> None:
    started = time.monotonic()

    error = expect_error(config_for(server, api_key="sk-wrong", max_retries=3), ask())

    assert isinstance(error, ProviderAuthError)
    assert error.status_code == 401
    assert "401" in error.message and "Incorrect API key provided" in error.message
    assert len(server.requests) == 1, "a 401 must not be retried"
    assert time.monotonic() - started < 2


def test_rate_limit_is_retried_after_retry_after_then_raised(server: FakeOpenAI) -> None:
    server.plan(http_error(429, retry_after=1), http_error(429, retry_after=1))
    started = time.monotonic()

    error = expect_error(config_for(server, max_retries=1), ask())

    assert isinstance(error, ProviderRateLimited)
    assert error.retry_after == 1.0
    assert "429" in error.message and "Rate limit reached" in error.message
    assert len(server.requests) == 2
    assert time.monotonic() - started >= 0.9, "the retry should wait for Retry-After"


def test_rate_limit_followed_by_success_returns_the_answer(server: FakeOpenAI) -> None:
    server.plan(http_error(429, retry_after=1), text_answer("Made it."))

    chunks = stream_all(config_for(server, max_retries=1), ask())

    assert text_of(chunks) == "Made it."
    assert len(server.requests) == 2


def test_server_error_is_retried_then_raised(server: FakeOpenAI) -> None:
    server.plan(http_error(500, "The engine is overloaded."), http_error(500))

    error = expect_error(config_for(server, max_retries=1), ask())

    assert isinstance(error, ProviderServerError)
    assert error.status_code == 500
    assert "500" in error.message
    assert len(server.requests) == 2


def test_other_client_errors_are_bad_requests_and_not_retried(server: FakeOpenAI) -> None:
    server.plan(http_error(400, "'messages' must not be empty.", error_type="invalid_request"))

    error = expect_error(config_for(server, max_retries=2), ask())

    assert isinstance(error, ProviderBadRequest)
    assert "400" in error.message and "'messages' must not be empty." in error.message
    assert len(server.requests) == 1


def test_chunk_that_is_not_json_raises_protocol_error_quoting_it(server: FakeOpenAI) -> None:
    server.plan(malformed_chunk())

    chunks, error = stream_until_error(config_for(server, max_retries=2), ask())

    assert isinstance(error, ProviderProtocolError)
    assert "not valid JSON" in error.message and "{not json" in error.message
    assert text_of(chunks) == "Hi", "chunks before the bad one are delivered"
    assert len(server.requests) == 1


def test_chunk_with_wrong_structure_raises_protocol_error_naming_the_field(
    server: FakeOpenAI,
) -> None:
    server.plan(Plan(chunks=['{"object": "chat.completion.chunk", "choices": "none"}']))

    error = expect_error(config_for(server), ask())

    assert isinstance(error, ProviderProtocolError)
    assert "choices" in error.message


def test_error_object_sent_mid_stream_raises_server_error(server: FakeOpenAI) -> None:
    server.plan(Plan(chunks=['{"error": {"message": "model overloaded", "code": 503}}']))

    error = expect_error(config_for(server), ask())

    assert isinstance(error, ProviderServerError)
    assert "model overloaded" in error.message


def test_stream_ending_without_done_or_finish_raises_protocol_error(server: FakeOpenAI) -> None:
    server.plan(truncated_stream())

    chunks, error = stream_until_error(config_for(server), ask())

    assert isinstance(error, ProviderProtocolError)
    assert "[DONE]" in error.message
    assert text_of(chunks) == "Half an answ"


def test_stream_without_done_but_with_finish_reason_is_complete(server: FakeOpenAI) -> None:
    answer = text_answer("All there.")
    answer.done = False
    server.plan(answer)

    chunks = stream_all(config_for(server), ask())

    assert text_of(chunks) == "All there."
    assert Finish("stop") in chunks


def test_stalled_stream_times_out_after_timeout_s(server: FakeOpenAI) -> None:
    server.plan(stalled_stream())
    started = time.monotonic()

    chunks, error = stream_until_error(config_for(server, timeout_s=0.5, max_retries=2), ask())

    elapsed = time.monotonic() - started
    assert isinstance(error, ProviderTimeout)
    assert "0.5 s" in error.message
    assert text_of(chunks) == "Let me think..."
    assert 0.4 <= elapsed < 2.0
    assert len(server.requests) == 1, "a stream that already yielded chunks is not retried"


def test_unreachable_server_raises_connection_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}/v1"
    config = ProviderConfig(type="openai", base_url=base_url, timeout_s=2.0)

    error = expect_error(config, ask())

    assert isinstance(error, ProviderConnectionError)
    assert f"cannot reach {base_url}" in error.message


def test_retry_waits_honour_retry_after_up_to_30_s_else_back_off_with_jitter() -> None:
    assert _retry_wait(2.5, attempt=0) == 2.5
    assert _retry_wait(600, attempt=0) == 30
    first = {_retry_wait(None, attempt=0) for _ in range(50)}
    third = [_retry_wait(None, attempt=2) for _ in range(50)]
    assert len(first) > 1, "backoff should be jittered"
    assert max(first) <= 0.5
    assert min(third) >= 1.0 and max(third) <= 2.0
