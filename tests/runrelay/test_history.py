"""The context policy: which exchanges of a thread a new run starts with."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from runrelay.agent._history import (
    HistoryPolicy,
    estimate_tokens,
    fit_history,
    new_messages,
    short_form,
)
from runrelay.agent.config import AgentSpec

Message = dict[str, Any]


def chat(n: int, answer: str = "ok") -> list[Message]:
    return [{"role": "user", "content": f"q{n}"}, {"role": "assistant", "content": answer}]


def with_tool(n: int, result: str = "r") -> list[Message]:
    call = {"id": f"c{n}", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    return [
        {"role": "user", "content": f"q{n}"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": f"c{n}", "content": json.dumps(result)},
        {"role": "assistant", "content": f"a{n}"},
    ]


def test_token_estimate_is_json_length_over_four_rounded_up() -> None:
    message = {"role": "user", "content": "x" * 10}
    assert estimate_tokens(message) == -(-len('{"role":"user","content":"xxxxxxxxxx"}') // 4) == 10


def test_everything_is_kept_when_it_fits() -> None:
    exchanges = [chat(1), with_tool(2), chat(3)]
    assert fit_history(exchanges, HistoryPolicy()) == [m for e in exchanges for m in e]


def test_message_budget_keeps_the_latest_whole_exchanges() -> None:
    exchanges = [chat(1), chat(2), chat(3)]
    assert fit_history(exchanges, HistoryPolicy(max_messages=5)) == chat(2) + chat(3)


def test_token_budget_keeps_the_latest_whole_exchanges() -> None:
    exchanges = [chat(1), chat(2), chat(3)]
    per_exchange = sum(estimate_tokens(m) for m in chat(3))
    policy = HistoryPolicy(max_tokens=2 * per_exchange + 1)
    assert fit_history(exchanges, policy) == chat(2) + chat(3)


def test_an_exchange_too_big_whole_is_kept_short_without_its_tool_messages() -> None:
    big = with_tool(2, result="x" * 4000)
    kept = fit_history([chat(1), big], HistoryPolicy(max_tokens=500))
    assert kept == [*chat(1), big[0], big[3]]
    assert short_form(big) == [big[0], big[3]]


def test_a_tool_result_never_comes_without_its_call() -> None:
    exchanges = [with_tool(1), with_tool(2), with_tool(3)]
    for max_messages in range(13):
        kept = fit_history(exchanges, HistoryPolicy(max_messages=max_messages))
        assert len(kept) <= max_messages
        calls = {c["id"] for m in kept for c in m.get("tool_calls") or []}
        assert all(m["tool_call_id"] in calls for m in kept if m["role"] == "tool")


def test_history_stops_at_the_first_exchange_that_does_not_fit() -> None:
    """No gaps: an older small exchange is not kept past a newer one that was dropped."""
    huge = chat(2, answer="y" * 40_000)
    assert fit_history([chat(1), huge, chat(3)], HistoryPolicy(max_tokens=1000)) == chat(3)


def test_newest_exchange_bigger_than_the_budget_means_no_history() -> None:
    assert fit_history([chat(1), chat(2, answer="z" * 40_000)], HistoryPolicy()) == []


def test_zero_budgets_mean_no_history() -> None:
    assert fit_history([chat(1)], HistoryPolicy(max_messages=0)) == []
    assert fit_history([chat(1)], HistoryPolicy(max_tokens=0)) == []


def test_new_messages_skip_the_system_prompt_history_and_nudges() -> None:
    history = chat(1)
    run = [
        {"role": "user", "content": "q2"},
        {"role": "system", "content": "answer now"},
        {"role": "assistant", "content": "a2"},
    ]
    messages = [{"role": "system", "content": "prompt"}, *history, *run]
    assert new_messages(messages, len(history)) == [run[0], run[2]]


def test_agents_config_takes_a_history_policy() -> None:
    agent = AgentSpec.model_validate({"name": "a", "history": {"max_messages": 4}})
    assert agent.history == HistoryPolicy(max_messages=4, max_tokens=8000)
    assert AgentSpec(name="b").history == HistoryPolicy(max_messages=50, max_tokens=8000)
    with pytest.raises(ValidationError, match="max_tokens"):
        AgentSpec.model_validate({"name": "c", "history": {"max_tokens": -1}})
