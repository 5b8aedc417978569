"""The offline scripted provider: deterministic turns, text chunking, latency, and the real loop."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from runrelay.agent._loop import AgentLoop, LoopSettings
from runrelay.agent.config import Registry, Script, ScriptedToolCall, ScriptedTurn
from runrelay.agent.providers.base import (
    Chunk,
    Finish,
    ModelRequest,
    TextDelta,
    ToolCallFragment,
    UsageReport,
)
from runrelay.agent.providers.scripted import ScriptedProvider, split_text
from runrelay.agent.tools import import_tool
from runrelay.server.settings import DEMO_AGENTS_CONFIG

LOOKUP_TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {}}}


def collect(
    provider: ScriptedProvider,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
) -> list[Chunk]:
    request = ModelRequest(
        model="scripted", messages=messages, tools=[LOOKUP_TOOL] if tools is None else tools
    )

    async def drain() -> list[Chunk]:
        return [chunk async for chunk in provider.stream(request)]

    return asyncio.run(drain())


def text_of(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks if isinstance(c, TextDelta))


TOOL_THEN_TEXT = Script(
    turns=[
        ScriptedTurn(tool_calls=[ScriptedToolCall(name="lookup", arguments={"company": "ACME"})]),
        ScriptedTurn(text="first answer", chunks=2),
        ScriptedTurn(text="last answer", chunks=1),
    ]
)


@pytest.mark.parametrize(
    ("text", "chunks"),
    [
        ("one two three four five six seven", 3),
        ("a b", 5),
        ("word", 1),
        ("x  y   z", 2),
        ("no-spaces-at-all-here", 4),
        ("", 3),
        (" leading and trailing ", 2),
    ],
)
def test_split_text_pieces_join_back_to_the_text(text: str, chunks: int) -> None:
    pieces = split_text(text, chunks)

    assert "".join(pieces) == text
    assert len(pieces) <= chunks


def test_split_text_cuts_at_word_boundaries_into_the_asked_number_of_pieces() -> None:
    assert split_text("the quick brown fox jumps", 2) == ["the quick brown", " fox jumps"]
    assert len(split_text(" ".join(["w"] * 50), 24)) == 24


def test_split_text_cuts_short_text_into_characters() -> None:
    assert split_text("hello", 3) == ["he", "ll", "o"]


def test_first_turn_streams_tool_call_fragments_then_usage_and_finish() -> None:
    chunks = collect(ScriptedProvider(TOOL_THEN_TEXT), [{"role": "user", "content": "go"}])

    fragments = [c for c in chunks if isinstance(c, ToolCallFragment)]
    assert [f.index for f in fragments] == [0, 0]
    assert fragments[0].id and fragments[0].name == "lookup"
    assert (fragments[1].id, fragments[1].name) == (None, None)
    assert json.loads("".join(f.arguments for f in fragments)) == {"company": "ACME"}
    assert isinstance(chunks[-2], UsageReport) and chunks[-2].completion_tokens > 0
    assert chunks[-1] == Finish("tool_calls")


def test_turns_follow_the_assistant_messages_since_the_last_user_message() -> None:
    provider = ScriptedProvider(TOOL_THEN_TEXT)
    user = {"role": "user", "content": "go"}
    assistant = {"role": "assistant", "content": "x"}
    tool_msg = {"role": "tool", "tool_call_id": "c", "content": "{}"}

    second = collect(provider, [user, assistant, tool_msg])
    third = collect(provider, [user, assistant, tool_msg, assistant, tool_msg])
    beyond = collect(provider, [user, *[assistant] * 6])
    new_user_turn = collect(provider, [user, assistant, assistant, user])

    assert [text_of(c) for c in (second, third, beyond)] == [
        "first answer",
        "last answer",
        "last answer",
    ]
    assert [c.text for c in second if isinstance(c, TextDelta)] == ["first", " answer"]
    assert second[-1] == Finish("stop")
    assert any(isinstance(c, ToolCallFragment) for c in new_user_turn)


def test_without_tools_offered_tool_call_turns_are_skipped() -> None:
    messages = [{"role": "user", "content": "go"}]
    chunks = collect(ScriptedProvider(TOOL_THEN_TEXT), messages, tools=[])

    assert not any(isinstance(c, ToolCallFragment) for c in chunks)
    assert text_of(chunks) == "first answer"
    assert chunks[-1] == Finish("stop")


def test_a_script_of_only_tool_calls_still_gives_a_final_answer_without_tools() -> None:
    script = Script(turns=[ScriptedTurn(tool_calls=[ScriptedToolCall(name="lookup")])])

    chunks = collect(ScriptedProvider(script), [{"role": "user", "content": "go"}], tools=[])

    assert text_of(chunks) == "Done."


def test_tool_call_ids_are_unique_across_turns() -> None:
    script = Script(
        turns=[
            ScriptedTurn(
                tool_calls=[ScriptedToolCall(name="lookup"), ScriptedToolCall(name="lookup")]
            )
        ]
    )
    user = {"role": "user", "content": "go"}
    first = collect(ScriptedProvider(script), [user])
    second = collect(ScriptedProvider(script), [user, {"role": "assistant", "content": None}])

    ids = [c.id for c in first + second if isinstance(c, ToolCallFragment) and c.id]
    assert len(ids) == 4 and len(set(ids)) == 4


def test_delay_ms_paces_every_chunk() -> None:
    script = Script(delay_ms=30, turns=[ScriptedTurn(text="a b c d", chunks=4)])

    started = time.monotonic()
    chunks = collect(ScriptedProvider(script), [{"role": "user", "content": "go"}])

    assert time.monotonic() - started >= 4 * 0.03
    assert len([c for c in chunks if isinstance(c, TextDelta)]) == 4


def test_demo_credit_analyst_runs_through_the_loop_with_its_tools() -> None:
    registry = Registry.from_file(DEMO_AGENTS_CONFIG, {})
    agent = registry.resolve("bank credit-analyst")
    assert agent.script is not None
    script = agent.script.model_copy(update={"delay_ms": 0})
    tools = [import_tool(path) for path in agent.tools]
    events: list[tuple[str, dict[str, Any]]] = []

    async def emit(type: str, data: dict[str, Any]) -> None:
        events.append((type, data))

    loop = AgentLoop(
        ScriptedProvider(script),
        LoopSettings(model=agent.model, max_turns=agent.max_turns),
        tools=tools,
        emit=emit,
    )
    result = asyncio.run(
        loop.run(
            [
                {"role": "system", "content": agent.instructions},
                {"role": "user", "content": "Assess ACME Corp"},
            ]
        )
    )

    assert result.output == script.turns[1].text
    assert [(r.name, r.error) for r in result.tool_calls] == [("lookup_credit_score", None)]
    assert result.tool_calls[0].result["company"] == "ACME Corp"
    deltas = [d["delta"] for t, d in events if t == "output_text_delta"]
    assert len(deltas) == 24 and "".join(deltas) == result.output
    assert events[-1][0] == "usage" and result.usage.total_tokens > 0
