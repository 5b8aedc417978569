"""AgentLoop against an in-memory fake provider: what the model is sent, what the user sees."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from runrelay.agent._loop import FINAL_ANSWER_NUDGE, AgentLoop, LoopResult, LoopSettings, LoopState
from runrelay.agent.providers.base import (
    Chunk,
    Finish,
    ModelRequest,
    ProviderRateLimited,
    TextDelta,
    ToolCallFragment,
    UsageReport,
)
from runrelay.agent.tools import Tool, current_tool_call_id, tool_from_function


class FakeProvider:
    """Plays scripted turns in order and records every request it received."""

    name = "fake"

    def __init__(self, turns: Sequence[Sequence[Chunk] | Exception]) -> None:
        self.turns = list(turns)
        self.requests: list[ModelRequest] = []

    async def stream(self, request: ModelRequest) -> AsyncIterator[Chunk]:
        self.requests.append(request)
        if not self.turns:
            raise AssertionError(f"the loop asked for turn {len(self.requests)}, none scripted")
        turn = self.turns.pop(0)
        if isinstance(turn, Exception):
            raise turn
        for chunk in turn:
            await asyncio.sleep(0)
            yield chunk


def text_turn(*pieces: str, usage: tuple[int, int] = (10, 5)) -> list[Chunk]:
    return [*(TextDelta(p) for p in pieces), UsageReport(*usage), Finish("stop")]


def call_turn(*fragments: ToolCallFragment, usage: tuple[int, int] = (10, 5)) -> list[Chunk]:
    return [*fragments, UsageReport(*usage), Finish("tool_calls")]


def whole_call(
    call_id: str, name: str, arguments: dict[str, Any], index: int = 0
) -> ToolCallFragment:
    return ToolCallFragment(index=index, id=call_id, name=name, arguments=json.dumps(arguments))


class Events:
    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, type: str, data: dict[str, Any]) -> None:
        self.items.append((type, data))

    def of(self, type: str) -> list[dict[str, Any]]:
        return [data for t, data in self.items if t == type]


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def echo(text: str) -> str:
    return text


def run_loop(
    provider: FakeProvider,
    tools: Sequence[Tool] = (),
    *,
    max_turns: int = 8,
    events: Events | None = None,
    messages: list[dict[str, Any]] | None = None,
    **settings: Any,
) -> LoopResult:
    loop = AgentLoop(
        provider,
        LoopSettings(model="m-1", max_turns=max_turns, **settings),
        tools=tools,
        emit=events,
    )
    history = messages if messages is not None else [{"role": "user", "content": "hi"}]
    return asyncio.run(loop.run(history))


def tool_messages(request: ModelRequest) -> list[dict[str, Any]]:
    return [m for m in request.messages if m["role"] == "tool"]


def test_plain_answer_streams_text_deltas_and_ends_with_usage() -> None:
    provider = FakeProvider([text_turn("Hel", "lo", usage=(12, 3))])
    events = Events()

    result = run_loop(provider, events=events)

    assert result.output == "Hello"
    assert result.turns == 1
    assert [t for t, _ in events.items] == ["output_text_delta", "output_text_delta", "usage"]
    assert [d["delta"] for d in events.of("output_text_delta")] == ["Hel", "lo"]
    assert events.of("usage") == [
        {
            "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
            "model": "m-1",
            "by_model": {"m-1": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}},
        }
    ]
    assert result.messages[-1] == {"role": "assistant", "content": "Hello"}


def test_request_carries_model_settings_and_tool_schemas() -> None:
    provider = FakeProvider([text_turn("ok")])

    run_loop(provider, [tool_from_function(add)], temperature=0.3, max_tokens=50, seed=7)

    request = provider.requests[0]
    assert (request.model, request.temperature, request.max_tokens, request.seed) == (
        "m-1",
        0.3,
        50,
        7,
    )
    assert [t["function"]["name"] for t in request.tools] == ["add"]
    assert request.tools[0]["function"]["parameters"]["required"] == ["a", "b"]
    assert request.messages == [{"role": "user", "content": "hi"}]


def test_tool_call_fragments_are_joined_before_the_tool_runs() -> None:
    provider = FakeProvider(
        [
            call_turn(
                ToolCallFragment(index=0, id="call_a", name="add", arguments=""),
                ToolCallFragment(index=0, arguments='{"a": 2'),
                ToolCallFragment(index=0, arguments=', "b": 40}'),
            ),
            text_turn("42"),
        ]
    )
    events = Events()

    result = run_loop(provider, [tool_from_function(add)], events=events)

    assert result.output == "42"
    assert [(r.name, r.arguments, r.result) for r in result.tool_calls] == [
        ("add", {"a": 2, "b": 40}, 42)
    ]
    assert tool_messages(provider.requests[1]) == [
        {"role": "tool", "tool_call_id": "call_a", "content": "42"}
    ]
    deltas = events.of("tool_call_delta")
    assert [(d["tool_call_id"], d["name"]) for d in deltas] == [("call_a", "add")] * 3
    assert "".join(d["arguments_delta"] for d in deltas) == '{"a": 2, "b": 40}'


def test_parallel_calls_sharing_index_zero_become_separate_calls() -> None:
    """Some servers (vLLM, Ollama) send every parallel call with index 0 and a new id."""
    provider = FakeProvider(
        [
            call_turn(
                ToolCallFragment(index=0, id="call_1", name="add", arguments='{"a": 1,'),
                ToolCallFragment(index=0, arguments=' "b": 2}'),
                ToolCallFragment(index=0, id="call_2", name="echo", arguments='{"text":'),
                ToolCallFragment(index=0, arguments=' "hi"}'),
            ),
            text_turn("done"),
        ]
    )

    result = run_loop(provider, [tool_from_function(add), tool_from_function(echo)])

    assert [(r.tool_call_id, r.name, r.result) for r in result.tool_calls] == [
        ("call_1", "add", 3),
        ("call_2", "echo", "hi"),
    ]
    assistant = provider.requests[1].messages[1]
    assert [c["function"] for c in assistant["tool_calls"]] == [
        {"name": "add", "arguments": '{"a": 1, "b": 2}'},
        {"name": "echo", "arguments": '{"text": "hi"}'},
    ]
    assert [m["tool_call_id"] for m in tool_messages(provider.requests[1])] == ["call_1", "call_2"]


def test_interleaved_fragments_of_parallel_calls_are_joined_by_index() -> None:
    provider = FakeProvider(
        [
            call_turn(
                ToolCallFragment(index=0, id="call_x", name="add", arguments='{"a": 5'),
                ToolCallFragment(index=1, id="call_y", name="add", arguments='{"a": 7'),
                ToolCallFragment(index=0, arguments=', "b": 1}'),
                ToolCallFragment(index=1, arguments=', "b": 3}'),
            ),
            text_turn("done"),
        ]
    )

    result = run_loop(provider, [tool_from_function(add)])

    assert [(r.tool_call_id, r.result) for r in result.tool_calls] == [
        ("call_x", 6),
        ("call_y", 10),
    ]


def test_calls_without_ids_get_distinct_ids_that_tool_messages_reference() -> None:
    provider = FakeProvider(
        [
            call_turn(
                ToolCallFragment(index=0, name="add", arguments='{"a": 1, "b": 1}'),
                ToolCallFragment(index=1, name="add", arguments='{"a": 2, "b": 2}'),
            ),
            text_turn("done"),
        ]
    )

    run_loop(provider, [tool_from_function(add)])

    assistant = provider.requests[1].messages[1]
    ids = [c["id"] for c in assistant["tool_calls"]]
    assert len(set(ids)) == 2 and all(ids)
    assert [m["tool_call_id"] for m in tool_messages(provider.requests[1])] == ids


def test_async_tools_of_one_turn_run_concurrently() -> None:
    barrier = asyncio.Barrier(2)

    async def meet(who: str) -> str:
        async with asyncio.timeout(5):  # only passes if both calls are in flight together
            await barrier.wait()
        return who

    provider = FakeProvider(
        [
            call_turn(
                whole_call("c1", "meet", {"who": "a"}, 0), whole_call("c2", "meet", {"who": "b"}, 1)
            ),
            text_turn("done"),
        ]
    )

    result = run_loop(provider, [tool_from_function(meet)])

    assert [(r.result, r.error) for r in result.tool_calls] == [("a", None), ("b", None)]


def test_sync_tools_of_one_turn_run_concurrently_in_threads() -> None:
    barrier = threading.Barrier(2, timeout=5)
    caller = threading.get_ident()

    def meet(who: str) -> bool:
        barrier.wait()
        return threading.get_ident() != caller

    provider = FakeProvider(
        [
            call_turn(
                whole_call("c1", "meet", {"who": "a"}, 0), whole_call("c2", "meet", {"who": "b"}, 1)
            ),
            text_turn("done"),
        ]
    )

    result = run_loop(provider, [tool_from_function(meet)])

    assert [(r.result, r.error) for r in result.tool_calls] == [(True, None), (True, None)]


def test_tool_messages_follow_the_order_of_the_calls_not_of_completion() -> None:
    async def slow(n: int) -> int:
        await asyncio.sleep(0.05 if n == 1 else 0)
        return n

    provider = FakeProvider(
        [
            call_turn(whole_call("c1", "slow", {"n": 1}, 0), whole_call("c2", "slow", {"n": 2}, 1)),
            text_turn("done"),
        ]
    )

    run_loop(provider, [tool_from_function(slow)])

    assert [(m["tool_call_id"], m["content"]) for m in tool_messages(provider.requests[1])] == [
        ("c1", "1"),
        ("c2", "2"),
    ]


def test_tool_exception_goes_back_to_the_model_and_the_loop_continues() -> None:
    def explode(reason: str) -> None:
        raise ValueError(reason)

    provider = FakeProvider(
        [
            call_turn(whole_call("c1", "explode", {"reason": "disk on fire"})),
            text_turn("Sorry, the tool failed."),
        ]
    )
    events = Events()

    result = run_loop(provider, [tool_from_function(explode)], events=events)

    assert result.output == "Sorry, the tool failed."
    [message] = tool_messages(provider.requests[1])
    error = json.loads(message["content"])["error"]
    assert "ValueError" in error and "disk on fire" in error
    [event] = events.of("tool_call_result")
    assert event["tool_call_id"] == "c1" and event["error"] == error and event["result"] is None


def test_unknown_tool_is_reported_to_the_model_with_the_available_names() -> None:
    provider = FakeProvider(
        [
            call_turn(whole_call("c1", "subtract", {"a": 1, "b": 2})),
            text_turn("ok"),
        ]
    )

    result = run_loop(provider, [tool_from_function(add), tool_from_function(echo)])

    error = json.loads(tool_messages(provider.requests[1])[0]["content"])["error"]
    assert "'subtract'" in error and "add, echo" in error
    assert result.tool_calls[0].error == error


def test_malformed_arguments_are_reported_to_the_model() -> None:
    provider = FakeProvider(
        [
            call_turn(ToolCallFragment(index=0, id="c1", name="add", arguments='{"a": 1, "b":')),
            call_turn(whole_call("c2", "add", {"a": "one", "b": 2})),
            text_turn("ok"),
        ]
    )

    result = run_loop(provider, [tool_from_function(add)])

    bad_json, bad_type = (r.error or "" for r in result.tool_calls)
    assert "not valid JSON" in bad_json
    assert "invalid arguments for add" in bad_type and "a:" in bad_type
    assert result.tool_calls[0].arguments == '{"a": 1, "b":'
    assert result.output == "ok"


def test_calls_beyond_max_invocations_are_refused_with_an_error() -> None:
    limited = tool_from_function(add, max_invocations=1)
    provider = FakeProvider(
        [
            call_turn(
                whole_call("c1", "add", {"a": 1, "b": 1}, 0),
                whole_call("c2", "add", {"a": 2, "b": 2}, 1),
            ),
            text_turn("ok"),
        ]
    )

    result = run_loop(provider, [limited])

    assert [(r.result, r.error) for r in result.tool_calls] == [
        (2, None),
        (None, "add may be called at most 1 times"),
    ]


def test_max_turns_ends_with_a_final_answer_made_without_tools() -> None:
    provider = FakeProvider(
        [
            call_turn(whole_call("c1", "add", {"a": 1, "b": 1})),
            call_turn(whole_call("c2", "add", {"a": 2, "b": 2})),
            text_turn("Final answer."),
        ]
    )

    result = run_loop(provider, [tool_from_function(add)], max_turns=2)

    assert result.output == "Final answer."
    assert result.turns == 3
    assert [bool(r.tools) for r in provider.requests] == [True, True, False]
    assert provider.requests[2].messages[-1] == {"role": "system", "content": FINAL_ANSWER_NUDGE}
    assert [r.result for r in result.tool_calls] == [2, 4]


def test_tool_calls_on_the_final_turn_end_the_run_instead_of_crashing() -> None:
    """Models do not always obey an empty tool list; the run must still end with an answer."""
    calls: list[int] = []

    def count(n: int) -> int:
        calls.append(n)
        return n

    provider = FakeProvider(
        [
            call_turn(whole_call("c1", "count", {"n": 1})),
            [TextDelta("Best effort."), whole_call("c2", "count", {"n": 2}), Finish("tool_calls")],
        ]
    )

    result = run_loop(provider, [tool_from_function(count)], max_turns=1)

    assert result.output == "Best effort."
    assert calls == [1]


def test_usage_adds_up_over_all_turns() -> None:
    provider = FakeProvider(
        [
            call_turn(whole_call("c1", "add", {"a": 1, "b": 1}), usage=(100, 20)),
            text_turn("ok", usage=(150, 7)),
        ]
    )
    events = Events()

    result = run_loop(provider, [tool_from_function(add)], events=events)

    expected = {"prompt_tokens": 250, "completion_tokens": 27, "total_tokens": 277}
    assert result.usage.model_dump() == expected
    assert events.of("usage") == [
        {"usage": expected, "model": "m-1", "by_model": {"m-1": expected}}
    ]


def test_provider_error_propagates_out_of_the_loop() -> None:
    provider = FakeProvider([ProviderRateLimited("slow down", retry_after=3)])

    with pytest.raises(ProviderRateLimited) as caught:
        run_loop(provider)

    assert caught.value.retry_after == 3


def test_history_grows_in_place_with_assistant_and_tool_messages() -> None:
    provider = FakeProvider(
        [
            [
                TextDelta("Let me add."),
                whole_call("c1", "add", {"a": 3, "b": 4}),
                Finish("tool_calls"),
            ],
            text_turn("7"),
        ]
    )
    history: list[dict[str, Any]] = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "3+4?"},
    ]

    result = run_loop(provider, [tool_from_function(add)], messages=history)

    assert result.messages is history
    assert history[2:] == [
        {
            "role": "assistant",
            "content": "Let me add.",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "add", "arguments": '{"a": 3, "b": 4}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "7"},
        {"role": "assistant", "content": "7"},
    ]
    assert provider.requests[1].messages == history[:4]


def test_loop_runs_without_an_event_sink() -> None:
    provider = FakeProvider([call_turn(whole_call("c1", "add", {"a": 1, "b": 2})), text_turn("3")])

    loop = AgentLoop(provider, LoopSettings(model="m"), tools=[tool_from_function(add)])
    outcome = asyncio.run(loop.run([{"role": "user", "content": "1+2"}]))

    assert outcome.output == "3"


class Checkpoints:
    """Records every checkpoint (a deep copy of the state) with the event that came with it."""

    def __init__(self, events: Events) -> None:
        self.events = events
        self.saved: list[tuple[dict[str, Any], tuple[str, dict[str, Any]] | None]] = []

    async def __call__(self, state: LoopState, event: Any) -> None:
        self.saved.append((json.loads(json.dumps(state.to_dict(), default=str)), event))
        if event is not None:
            await self.events(*event)


def test_checkpoint_after_each_model_response_and_each_tool_result() -> None:
    provider = FakeProvider(
        [
            call_turn(
                whole_call("c1", "add", {"a": 1, "b": 2}),
                whole_call("c2", "add", {"a": 3, "b": 4}, index=1),
            ),
            text_turn("done"),
        ]
    )
    events = Events()
    saved = Checkpoints(events)
    loop = AgentLoop(
        provider, LoopSettings(model="m"), [tool_from_function(add)], emit=events, checkpoint=saved
    )

    asyncio.run(loop.run([{"role": "user", "content": "hi"}]))

    kinds = [event[0] if event else "model" for _, event in saved.saved]
    assert kinds == ["model", "tool_call_result", "tool_call_result", "model"]
    first = saved.saved[0][0]
    assert [c["id"] for c in first["pending"]] == ["c1", "c2"] and first["finished"] == {}
    assert set(saved.saved[2][0]["finished"]) == {"c1", "c2"}
    assert saved.saved[-1][0]["output"] == "done"
    assert len(events.of("tool_call_result")) == 2, "each result is emitted once, with its save"


def test_resumed_loop_does_not_call_a_tool_whose_result_was_checkpointed() -> None:
    calls: list[int] = []

    def counted_add(a: int, b: int) -> int:
        calls.append(a)
        return a + b

    first_provider = FakeProvider(
        [
            call_turn(
                whole_call("c1", "counted_add", {"a": 1, "b": 2}),
                whole_call("c2", "counted_add", {"a": 3, "b": 4}, index=1),
            ),
        ]
    )
    saved = Checkpoints(Events())
    tools = [tool_from_function(counted_add)]
    crashed = AgentLoop(first_provider, LoopSettings(model="m"), tools, checkpoint=saved)
    with pytest.raises(AssertionError, match="none scripted"):  # the "crash": no turn 2
        asyncio.run(crashed.run([{"role": "user", "content": "hi"}]))
    assert sorted(calls) == [1, 3]
    # Resume from the save made after the first tool result only: c2 is still to run.
    after_c1 = next(s for s, e in saved.saved if e and e[1]["tool_call_id"] == "c1")
    state = LoopState.from_dict(after_c1)
    calls.clear()
    provider = FakeProvider([text_turn("4 and 7")])
    events = Events()

    result = asyncio.run(
        AgentLoop(provider, LoopSettings(model="m"), tools, emit=events).run([], resume=state)
    )

    assert calls == [3], "only the unfinished call ran again"
    assert [(r.tool_call_id, r.result) for r in result.tool_calls] == [("c1", 3), ("c2", 7)]
    assert [m["tool_call_id"] for m in tool_messages(provider.requests[0])] == ["c1", "c2"]
    assert [e["tool_call_id"] for e in events.of("tool_call_result")] == ["c2"]
    assert result.output == "4 and 7"
    assert result.usage.total_tokens == 30, "usage of the turns before the crash is kept"


def test_resumed_loop_with_a_final_answer_does_not_call_the_model_again() -> None:
    saved = Checkpoints(Events())
    asyncio.run(
        AgentLoop(
            FakeProvider([text_turn("answer")]), LoopSettings(model="m"), checkpoint=saved
        ).run([{"role": "user", "content": "hi"}])
    )
    state = LoopState.from_dict(saved.saved[-1][0])
    provider = FakeProvider([])

    result = asyncio.run(AgentLoop(provider, LoopSettings(model="m")).run([], resume=state))

    assert result.output == "answer" and provider.requests == []


def test_tools_see_their_tool_call_id() -> None:
    seen: list[str | None] = []

    def probe() -> str:
        seen.append(current_tool_call_id.get())
        return "ok"

    provider = FakeProvider([call_turn(whole_call("call_xyz", "probe", {})), text_turn("ok")])
    run_loop(provider, [tool_from_function(probe)])
    assert seen == ["call_xyz"]
