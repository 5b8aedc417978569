"""The loop's extension points: middleware around run / model / tool, approvals, tool limits,
progress and suggestions, usage per model."""

from __future__ import annotations

import asyncio
import gc
import json
import time
import weakref
from typing import Annotated, Any

import pytest

from runrelay.agent._loop import AgentLoop, LoopSettings, LoopState
from runrelay.agent.middleware import (
    AgentRunContext,
    ChatContext,
    ChatMiddleware,
    ChatResponse,
    FunctionInvocationContext,
    Next,
    RunBlocked,
    agent_middleware,
    chat_middleware,
    function_middleware,
)
from runrelay.agent.run_context import report_progress, suggest
from runrelay.agent.tools import ToolError, tool, tool_from_function
from tests.runrelay.test_loop import (
    Checkpoints,
    Events,
    FakeProvider,
    add,
    call_turn,
    text_turn,
    tool_messages,
    whole_call,
)


@tool(approval_mode="always_require")
def pay(payee: str, amount: float) -> dict[str, Any]:
    """Send a payment."""
    PAID.append((payee, amount))
    return {"paid": amount, "to": payee}


PAID: list[tuple[str, float]] = []


def loop_with(
    provider: FakeProvider, tools: list[Any], middleware: list[Any] = (), **kwargs: Any
) -> tuple[AgentLoop, Events]:
    events = Events()
    loop = AgentLoop(
        provider,
        LoopSettings(model="m-1"),
        tools=tools,
        emit=events,
        middleware=middleware,
        **kwargs,
    )
    return loop, events


def test_a_function_middleware_can_block_a_tool_call_and_the_model_sees_why() -> None:
    calls: list[int] = []

    def transfer(amount: int) -> str:
        calls.append(amount)
        return "sent"

    @function_middleware
    async def limit(context: FunctionInvocationContext, next: Next[Any]) -> None:
        if context.arguments["amount"] > 100:
            context.result = "blocked: transfers above 100 need a human"
            return
        await next(context)

    provider = FakeProvider(
        [
            call_turn(
                whole_call("c1", "transfer", {"amount": 500}),
                whole_call("c2", "transfer", {"amount": 5}, index=1),
            ),
            text_turn("ok"),
        ]
    )
    loop, events = loop_with(provider, [tool_from_function(transfer)], [limit])

    asyncio.run(loop.run([{"role": "user", "content": "pay"}]))

    assert calls == [5]
    answers = [json.loads(m["content"]) for m in tool_messages(provider.requests[1])]
    assert answers == ["blocked: transfers above 100 need a human", "sent"]
    results = {e["tool_call_id"]: e["result"] for e in events.of("tool_call_result")}
    assert results == {"c1": "blocked: transfers above 100 need a human", "c2": "sent"}


def test_function_middleware_may_rewrite_arguments_and_results() -> None:
    @function_middleware
    async def double(context: FunctionInvocationContext, next: Next[Any]) -> None:
        context.arguments = {**context.arguments, "a": context.arguments["a"] * 2}
        await next(context)
        context.result = f"result={context.result}"

    provider = FakeProvider([call_turn(whole_call("c1", "add", {"a": 2, "b": 1})), text_turn("")])
    loop, _ = loop_with(provider, [tool_from_function(add)], [double])

    result = asyncio.run(loop.run([{"role": "user", "content": "x"}]))

    assert result.tool_calls[0].result == "result=5"


def test_terminate_in_a_function_middleware_ends_the_run_with_the_tool_result() -> None:
    @function_middleware
    async def stop(context: FunctionInvocationContext, next: Next[Any]) -> None:
        await next(context)
        context.terminate = True

    provider = FakeProvider([call_turn(whole_call("c1", "add", {"a": 2, "b": 1}))])
    loop, _ = loop_with(provider, [tool_from_function(add)], [stop])

    result = asyncio.run(loop.run([{"role": "user", "content": "x"}]))

    assert result.output == "3"
    assert len(provider.requests) == 1  # the model was not asked again


def test_chat_middleware_sees_each_model_call_and_can_change_the_model() -> None:
    seen: list[tuple[str, int]] = []

    class Router(ChatMiddleware):
        async def process(self, context: ChatContext, next: Next[ChatContext]) -> None:
            context.model = "big-model" if context.turn == 1 else "small-model"
            context.messages.append({"role": "system", "content": "be brief"})
            await next(context)
            assert context.result is not None
            seen.append((context.model, context.result.usage.total_tokens))

    provider = FakeProvider(
        [call_turn(whole_call("c1", "add", {"a": 1, "b": 1}), usage=(10, 5)), text_turn("2")]
    )
    loop, events = loop_with(provider, [tool_from_function(add)], [Router()])

    result = asyncio.run(loop.run([{"role": "user", "content": "x"}]))

    assert [r.model for r in provider.requests] == ["big-model", "small-model"]
    assert provider.requests[0].messages[-1] == {"role": "system", "content": "be brief"}
    # The loop's own history is not changed by what a middleware sends for one call.
    assert all(m.get("content") != "be brief" for m in result.messages)
    assert seen == [("big-model", 15), ("small-model", 15)]
    assert result.usage_by_model == {
        "big-model": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        "small-model": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }
    assert events.of("usage")[0]["by_model"] == result.usage_by_model


def test_chat_middleware_can_answer_instead_of_the_model_and_the_answer_is_streamed() -> None:
    @chat_middleware
    async def canned(context: ChatContext, next: Next[Any]) -> None:
        context.result = ChatResponse(text="cached answer")

    provider = FakeProvider([])
    loop, events = loop_with(provider, [], [canned])

    result = asyncio.run(loop.run([{"role": "user", "content": "x"}]))

    assert result.output == "cached answer"
    assert provider.requests == []
    assert [e["delta"] for e in events.of("output_text_delta")] == ["cached answer"]


def test_agent_middleware_wraps_the_run_and_may_replace_its_output() -> None:
    order: list[str] = []

    @agent_middleware
    async def outer(context: AgentRunContext, next: Next[Any]) -> None:
        order.append(f"before {context.agent_name} {len(context.messages)}")
        await next(context)
        assert context.result is not None and not isinstance(context.result, str)
        order.append(f"after {context.result.output}")
        context.result.output = context.result.output.upper()

    provider = FakeProvider([text_turn("hello")])
    loop, _ = loop_with(provider, [], [outer], agent_name="greeter")

    result = asyncio.run(loop.run([{"role": "user", "content": "x"}]))

    assert order == ["before greeter 1", "after hello"]
    assert result.output == "HELLO"


def test_agent_middleware_that_answers_itself_means_no_model_call() -> None:
    @agent_middleware
    async def closed(context: AgentRunContext, next: Next[Any]) -> None:
        context.result = "We are closed today."

    provider = FakeProvider([])
    loop, _ = loop_with(provider, [], [closed])

    assert asyncio.run(loop.run([{"role": "user", "content": "x"}])).output == (
        "We are closed today."
    )
    assert provider.requests == []


def test_run_blocked_raised_by_a_middleware_propagates_to_whoever_runs_the_loop() -> None:
    @agent_middleware
    async def deny(context: AgentRunContext, next: Next[Any]) -> None:
        raise RunBlocked("this user may not run agents")

    loop, _ = loop_with(FakeProvider([]), [], [deny])

    with pytest.raises(RunBlocked, match="may not run agents"):
        asyncio.run(loop.run([{"role": "user", "content": "x"}]))


def test_a_plain_function_is_refused_as_middleware_with_a_clear_message() -> None:
    async def unmarked(context: Any, next: Any) -> None:
        await next(context)

    with pytest.raises(TypeError, match="function_middleware"):
        loop_with(FakeProvider([]), [], [unmarked])


def test_approval_pauses_before_the_call_then_runs_it_once_approved() -> None:
    PAID.clear()
    provider = FakeProvider(
        [
            call_turn(
                whole_call("c1", "pay", {"payee": "ACME", "amount": 10}),
                whole_call("c2", "add", {"a": 1, "b": 2}, index=1),
            ),
            text_turn("paid"),
        ]
    )
    events = Events()
    saved = Checkpoints(events)
    loop = AgentLoop(
        provider,
        LoopSettings(model="m"),
        [pay, tool_from_function(add)],
        emit=events,
        checkpoint=saved,
    )

    paused = asyncio.run(loop.run([{"role": "user", "content": "pay ACME 10"}]))

    assert paused.status == "requires_action"
    assert paused.required_action == [
        {"tool_call_id": "c1", "name": "pay", "arguments": {"payee": "ACME", "amount": 10}}
    ]
    assert PAID == []
    assert events.of("approval_required") == paused.required_action
    # The call that needs no approval ran while the other waits.
    assert [e["tool_call_id"] for e in events.of("tool_call_result")] == ["c2"]

    state = LoopState.from_dict(saved.saved[-1][0])
    state.approvals["c1"] = {"approved": True, "reason": None}
    resumed = AgentLoop(provider, LoopSettings(model="m"), [pay, tool_from_function(add)])
    done = asyncio.run(resumed.run([], resume=state))

    assert done.status == "completed" and done.output == "paid"
    assert PAID == [("ACME", 10)]
    answers = [json.loads(m["content"]) for m in tool_messages(provider.requests[1])]
    assert answers == [{"paid": 10, "to": "ACME"}, 3]


def test_a_rejected_call_is_reported_to_the_model_with_the_reason() -> None:
    PAID.clear()
    provider = FakeProvider(
        [call_turn(whole_call("c1", "pay", {"payee": "X", "amount": 1e6})), text_turn("ok")]
    )
    saved = Checkpoints(Events())
    loop = AgentLoop(provider, LoopSettings(model="m"), [pay], checkpoint=saved)
    asyncio.run(loop.run([{"role": "user", "content": "pay"}]))

    state = LoopState.from_dict(saved.saved[-1][0])
    state.approvals["c1"] = {"approved": False, "reason": "amount too large"}
    events = Events()
    resumed = AgentLoop(provider, LoopSettings(model="m"), [pay], emit=events)
    done = asyncio.run(resumed.run([], resume=state))

    assert PAID == []
    assert done.output == "ok"
    answer = json.loads(tool_messages(provider.requests[1])[0]["content"])
    assert answer == {"error": "the call was rejected by the approver: amount too large"}
    assert events.of("tool_call_result")[0]["approved"] is False


def test_a_tool_is_not_called_again_after_max_invocation_exceptions() -> None:
    attempts: list[int] = []

    @tool(max_invocation_exceptions=2)
    def flaky(n: int) -> int:
        attempts.append(n)
        raise RuntimeError("backend down")

    provider = FakeProvider(
        [
            call_turn(whole_call("c1", "flaky", {"n": 1})),
            call_turn(whole_call("c2", "flaky", {"n": 2})),
            call_turn(whole_call("c3", "flaky", {"n": 3})),
            text_turn("gave up"),
        ]
    )
    loop, _ = loop_with(provider, [flaky])

    result = asyncio.run(loop.run([{"role": "user", "content": "x"}]))

    assert attempts == [1, 2]
    assert "failed 2 times" in (result.tool_calls[2].error or "")


def test_tool_limits_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="max_invocation_exceptions must be at least 1"):
        tool_from_function(add, max_invocation_exceptions=0)


def test_a_bare_string_in_annotated_describes_the_parameter() -> None:
    def weather(city: Annotated[str, "The city to look up"]) -> str:
        return city

    schema = tool_from_function(weather).schema()["function"]["parameters"]
    assert schema["properties"]["city"]["description"] == "The city to look up"


def test_tools_report_progress_as_custom_events_before_their_result() -> None:
    @tool
    def crunch(rows: int) -> int:
        for done in (0, rows // 2):
            report_progress(f"{done}/{rows}", progress=done, total=rows)
        return rows

    @tool
    async def acrunch(rows: int) -> int:
        report_progress("async step", progress=1, total=1)
        return rows

    provider = FakeProvider(
        [
            call_turn(
                whole_call("c1", "crunch", {"rows": 10}),
                whole_call("c2", "acrunch", {"rows": 3}, index=1),
            ),
            text_turn("done"),
        ]
    )
    loop, events = loop_with(provider, [crunch, acrunch])

    asyncio.run(loop.run([{"role": "user", "content": "x"}]))

    custom = events.of("custom")
    assert {
        "event": "progress",
        "data": {"message": "0/10", "progress": 0, "total": 10},
        "tool_call_id": "c1",
    } in custom
    assert len(custom) == 3
    kinds = [t for t, d in events.items if t in ("custom", "tool_call_result")]
    positions = {
        d.get("tool_call_id"): i for i, (t, d) in enumerate(events.items) if t == "tool_call_result"
    }
    for index, (kind, data) in enumerate(events.items):
        if kind == "custom":
            assert index < positions[data["tool_call_id"]]
    assert kinds.count("tool_call_result") == 2


def test_suggestions_are_sent_once_after_the_answer_at_most_six() -> None:
    @tool
    def plan() -> str:
        for n in range(8):
            suggest(f"Option {n}", f"Tell me about option {n}")
        return "planned"

    provider = FakeProvider([call_turn(whole_call("c1", "plan", {})), text_turn("here")])
    loop, events = loop_with(
        provider, [plan], suggestions=[{"label": "Start over", "message": "Start over"}]
    )

    result = asyncio.run(loop.run([{"role": "user", "content": "x"}]))

    sent = events.of("suggestions")
    assert len(sent) == 1
    labels = [s["label"] for s in sent[0]["suggestions"]]
    assert labels == ["Start over", "Option 0", "Option 1", "Option 2", "Option 3", "Option 4"]
    assert result.suggestions == sent[0]["suggestions"]
    assert [t for t, _ in events.items][-2:] == ["suggestions", "usage"]


def test_a_suggestion_label_over_40_characters_is_a_tool_error() -> None:
    @tool
    def chatty() -> str:
        suggest("x" * 41, "too long")
        return "ok"

    provider = FakeProvider([call_turn(whole_call("c1", "chatty", {})), text_turn("")])
    loop, _ = loop_with(provider, [chatty])

    result = asyncio.run(loop.run([{"role": "user", "content": "x"}]))

    assert "at most 40 characters" in (result.tool_calls[0].error or "")


def test_concurrent_tool_calls_with_middleware_still_overlap() -> None:
    @tool
    async def slow(n: int) -> int:
        await asyncio.sleep(0.3)
        return n

    @function_middleware
    async def passthrough(context: FunctionInvocationContext, next: Next[Any]) -> None:
        await next(context)

    provider = FakeProvider(
        [
            call_turn(*(whole_call(f"c{i}", "slow", {"n": i}, index=i) for i in range(5))),
            text_turn("ok"),
        ]
    )
    loop, _ = loop_with(provider, [slow], [passthrough])
    started = time.monotonic()
    result = asyncio.run(loop.run([{"role": "user", "content": "x"}]))

    assert time.monotonic() - started < 1.0  # five 0.3 s calls, not 1.5 s in a row
    assert [r.result for r in result.tool_calls] == [0, 1, 2, 3, 4]


def test_tool_error_raised_inside_a_middleware_goes_to_the_model() -> None:
    @function_middleware
    async def deny(context: FunctionInvocationContext, next: Next[Any]) -> None:
        raise ToolError("denied by policy")

    provider = FakeProvider([call_turn(whole_call("c1", "add", {"a": 1, "b": 1})), text_turn("")])
    loop, _ = loop_with(provider, [tool_from_function(add)], [deny])

    result = asyncio.run(loop.run([{"role": "user", "content": "x"}]))

    assert result.tool_calls[0].error == "denied by policy"


class Audit(ChatMiddleware):
    async def process(self, context: ChatContext, next: Next[ChatContext]) -> None:
        await next(context)


@function_middleware
async def audit_calls(context: FunctionInvocationContext, next: Next[Any]) -> None:
    await next(context)


def test_agent_configs_name_middleware_by_import_path() -> None:
    from runrelay.agent.middleware import import_middleware, kind_of

    assert kind_of(import_middleware(f"{__name__}:audit_calls")) == "function"
    assert isinstance(import_middleware(f"{__name__}:Audit"), Audit)  # a class is instantiated
    with pytest.raises(TypeError, match="not a middleware"):
        import_middleware(f"{__name__}:loop_with")
    with pytest.raises(ValueError, match="module:attribute"):
        import_middleware("no_colon_here")


def test_a_run_ended_by_a_middleware_does_not_make_calls_still_awaiting_approval() -> None:
    PAID.clear()

    @function_middleware
    async def stop(context: FunctionInvocationContext, next: Next[Any]) -> None:
        await next(context)
        context.terminate = True

    provider = FakeProvider(
        [
            call_turn(
                whole_call("c1", "add", {"a": 1, "b": 2}),
                whole_call("c2", "pay", {"payee": "X", "amount": 5}, index=1),
            )
        ]
    )
    loop, events = loop_with(provider, [tool_from_function(add), pay], [stop])

    result = asyncio.run(loop.run([{"role": "user", "content": "x"}]))

    assert result.status == "completed" and result.output == "3"
    assert PAID == [] and events.of("approval_required") == []
    [skipped] = [e for e in events.of("tool_call_result") if e["tool_call_id"] == "c2"]
    assert "not called" in skipped["error"]


def test_an_answer_from_agent_middleware_joins_the_history_and_the_stream() -> None:
    @agent_middleware
    async def closed(context: AgentRunContext, next: Next[Any]) -> None:
        context.result = "We are closed today."

    loop, events = loop_with(FakeProvider([]), [], [closed])
    history = [{"role": "user", "content": "x"}]

    result = asyncio.run(loop.run(history))

    assert result.messages[-1] == {"role": "assistant", "content": "We are closed today."}
    assert [e["delta"] for e in events.of("output_text_delta")] == ["We are closed today."]


def test_terminating_without_a_result_ends_with_empty_output_not_null() -> None:
    @function_middleware
    async def stop_silently(context: FunctionInvocationContext, next: Next[Any]) -> None:
        context.terminate = True

    provider = FakeProvider([call_turn(whole_call("c1", "add", {"a": 1, "b": 2}))])
    loop, _ = loop_with(provider, [tool_from_function(add)], [stop_silently])

    assert asyncio.run(loop.run([{"role": "user", "content": "x"}])).output == ""


def test_when_one_call_stops_the_run_its_sibling_calls_are_cancelled() -> None:
    finished: list[str] = []

    @tool
    async def slow(n: int) -> int:
        await asyncio.sleep(0.5)
        finished.append("slow")
        return n

    @function_middleware
    async def block_add(context: FunctionInvocationContext, next: Next[Any]) -> None:
        if context.function.name == "add":
            raise RunBlocked("add is not allowed for this user")
        await next(context)

    provider = FakeProvider(
        [
            call_turn(
                whole_call("c1", "slow", {"n": 1}),
                whole_call("c2", "add", {"a": 1, "b": 2}, index=1),
            )
        ]
    )
    loop, events = loop_with(provider, [slow, tool_from_function(add)], [block_add])

    async def scenario() -> None:
        with pytest.raises(RunBlocked):
            await loop.run([{"role": "user", "content": "x"}])
        await asyncio.sleep(0.7)  # the slow tool would have finished by now

    asyncio.run(scenario())

    assert finished == [] and events.of("tool_call_result") == []


def test_the_same_suggestion_offered_twice_is_sent_once() -> None:
    @tool
    def plan() -> str:
        suggest("Show totals", "Show the totals")
        return "ok"

    provider = FakeProvider(
        [
            call_turn(whole_call("c1", "plan", {}), whole_call("c2", "plan", {}, index=1)),
            text_turn("done"),
        ]
    )
    loop, events = loop_with(
        provider, [plan], suggestions=[{"label": "Show totals", "message": "x"}]
    )

    asyncio.run(loop.run([{"role": "user", "content": "x"}]))

    assert [s["label"] for s in events.of("suggestions")[0]["suggestions"]] == ["Show totals"]


def test_an_approval_does_not_carry_over_to_a_later_call_reusing_its_id() -> None:
    PAID.clear()
    provider = FakeProvider(
        [
            call_turn(whole_call("c1", "pay", {"payee": "A", "amount": 1})),
            call_turn(whole_call("c1", "pay", {"payee": "B", "amount": 2})),
            text_turn("done"),
        ]
    )
    saved = Checkpoints(Events())
    loop = AgentLoop(provider, LoopSettings(model="m"), [pay], checkpoint=saved)
    asyncio.run(loop.run([{"role": "user", "content": "pay"}]))
    state = LoopState.from_dict(saved.saved[-1][0])
    state.approvals["c1"] = {"approved": True, "reason": None}

    again = AgentLoop(provider, LoopSettings(model="m"), [pay], checkpoint=saved)
    second = asyncio.run(again.run([], resume=state))

    assert PAID == [("A", 1)]
    assert second.status == "requires_action"
    assert second.required_action is not None
    assert second.required_action[0]["arguments"] == {"payee": "B", "amount": 2}


def test_a_finished_run_is_freed_without_the_garbage_collector() -> None:
    """A run's objects (the loop, its provider, what middleware saw) go by reference counting
    when it ends: a worker holds thousands of runs, and what only a full collection frees
    would both stay in memory and lengthen the pause of that collection for every run."""

    @agent_middleware
    async def around_run(context: AgentRunContext, next: Next[Any]) -> None:
        await next(context)

    @chat_middleware
    async def around_model(context: ChatContext, next: Next[Any]) -> None:
        await next(context)

    @function_middleware
    async def around_tool(context: FunctionInvocationContext, next: Next[Any]) -> None:
        await next(context)

    def finished_run() -> weakref.ref[AgentLoop]:
        calls = call_turn(whole_call("c1", "add", {"a": 1, "b": 2}))
        provider = FakeProvider([calls, text_turn("3")])
        middleware = [around_run, around_model, around_tool]
        loop, _ = loop_with(provider, [tool_from_function(add)], middleware)
        result = asyncio.run(loop.run([{"role": "user", "content": "1+2?"}]))
        assert result.output == "3"
        return weakref.ref(loop)

    gc.disable()
    try:
        freed = finished_run()
        assert freed() is None, "the finished run's loop is held in a reference cycle"
    finally:
        gc.enable()
