"""Runs on the OpenAI-compatible provider, end to end: the shim, a real worker, and a tests-side
server speaking the real streaming wire format. Failures end the run `failed` with a clear error
event, and never hang."""

from __future__ import annotations

import secrets
import time

import httpx
import pytest

from tests.fake_openai import (
    FakeOpenAI,
    Plan,
    http_error,
    malformed_chunk,
    stalled_stream,
    text_answer,
    tool_call_answer,
)
from tests.sse import assert_complete_log, read_events


def _run(client: httpx.Client, model: str) -> list[dict]:
    events = read_events(
        client,
        "POST",
        "/v1/runs/stream",
        json={
            "agent": "openai-analyst",
            "message": "Assess ACME Corp",
            "model_id": model,
            "model_params": {"temperature": 0.3, "max_tokens": 300, "seed": 7},
        },
    )
    assert_complete_log(events)
    return events


def test_tool_call_split_across_chunks_then_answer(
    client: httpx.Client, fake_openai: FakeOpenAI
) -> None:
    model = f"m-{secrets.token_hex(4)}"
    fake_openai.plan(
        tool_call_answer([("lookup_credit_score", {"company": "ACME Corp"})], split=4, model=model),
        text_answer("ACME is a low risk borrower.", chunks=5, model=model),
    )
    events = _run(client, model)
    done = events[-1]
    assert done["status"] == "completed" and done["output"] == "ACME is a low risk borrower."
    assert done["usage"] == {"prompt_tokens": 32, "completion_tokens": 16, "total_tokens": 48}
    run = client.get(f"/v1/runs/{done['run_id']}").json()
    assert run["usage_by_model"] == {model: done["usage"]}  # the request's model_id was called
    deltas = [e for e in events if e["type"] == "tool_call_delta"]
    assert "".join(d["arguments_delta"] for d in deltas) == '{"company": "ACME Corp"}'
    result = next(e for e in events if e["type"] == "tool_call_result")
    assert result["result"]["company"] == "ACME Corp" and "error" not in result
    sent = [r.body for r in fake_openai.requests if r.body.get("model") == model]
    assert sent[0]["temperature"] == 0.3 and sent[0]["max_tokens"] == 300 and sent[0]["seed"] == 7
    assert {t["function"]["name"] for t in sent[0]["tools"]} == {
        "lookup_credit_score",
        "get_financials",
    }
    tool_message = sent[1]["messages"][-1]
    assert tool_message["role"] == "tool" and "ACME Corp" in tool_message["content"]


def test_parallel_calls_reusing_index_zero_both_run(
    client: httpx.Client, fake_openai: FakeOpenAI
) -> None:
    model = f"m-{secrets.token_hex(4)}"
    fake_openai.plan(
        tool_call_answer(
            [
                ("lookup_credit_score", {"company": "A"}),
                ("get_financials", {"company": "B", "year": 2023}),
            ],
            reuse_index=True,
            model=model,
        ),
        text_answer("Both looked up.", model=model),
    )
    events = _run(client, model)
    results = {e["name"]: e for e in events if e["type"] == "tool_call_result"}
    assert results["lookup_credit_score"]["arguments"] == {"company": "A"}
    assert results["get_financials"]["result"]["year"] == 2023
    assert events[-1]["status"] == "completed"


def test_tool_errors_go_back_to_the_model(client: httpx.Client, fake_openai: FakeOpenAI) -> None:
    model = f"m-{secrets.token_hex(4)}"
    fake_openai.plan(
        tool_call_answer([("get_financials", {"company": "A", "year": 1800})], model=model),
        text_answer("Could not fetch that year.", model=model),
    )
    events = _run(client, model)
    result = next(e for e in events if e["type"] == "tool_call_result")
    assert "year" in result["error"]
    second = [r.body for r in fake_openai.requests if r.body.get("model") == model][1]
    assert "error" in second["messages"][-1]["content"]
    assert events[-1]["status"] == "completed"


@pytest.mark.parametrize(
    ("plans", "code", "words"),
    [
        ([http_error(401)], "provider_auth", "401"),
        (
            [http_error(429, retry_after=1), http_error(429, retry_after=1)],
            "provider_rate_limited",
            "429",
        ),
        ([http_error(500), http_error(500)], "provider_server_error", "500"),
        ([malformed_chunk()], "provider_protocol_error", "JSON"),
        ([stalled_stream()], "provider_timeout", ""),
    ],
)
def test_provider_failure_ends_the_run_failed_with_a_clear_error(
    client: httpx.Client, fake_openai: FakeOpenAI, plans: list[Plan], code: str, words: str
) -> None:
    model = f"m-{secrets.token_hex(4)}"
    for plan in plans:
        plan.model = model
    fake_openai.plan(*plans)
    started = time.monotonic()
    events = _run(client, model)
    assert time.monotonic() - started < 20, "a failing provider never hangs the run"
    error = next(e for e in events if e["type"] == "error")
    assert error["code"] == code and words in error["message"]
    done = events[-1]
    assert done["status"] == "failed" and done["error"]["code"] == code
    run = client.get(f"/v1/runs/{done['run_id']}").json()
    assert run["status"] == "failed" and run["error"]["code"] == code


def test_unreachable_provider_fails_the_run(
    client: httpx.Client, fake_openai: FakeOpenAI, worker
) -> None:
    """The agent's provider points at a closed port: a clear `provider_unreachable` error."""
    executor = worker.runtime.executor
    config = executor.registry.config.providers["openai"]
    original = config.base_url
    config.base_url = "http://127.0.0.1:9/v1"
    try:
        events = _run(client, "any")
    finally:
        config.base_url = original
    assert events[-1]["status"] == "failed"
    assert events[-1]["error"]["code"] == "provider_unreachable"
