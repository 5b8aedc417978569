"""The agent-run driver with in-memory collaborators (the scripted provider, a list of events, a
list of checkpoints): what it emits, what `Outcome` it returns, and the one failure mapping."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from runrelay.agent._driver import AgentRun, Outcome, RunHooks, RunRequest, failure
from runrelay.agent._loop import PendingEvent
from runrelay.agent._mcp import McpServerError, McpServerSpec, McpToolConflict
from runrelay.agent._state import LoopState
from runrelay.agent.config import AgentSpec, ProviderConfig
from runrelay.agent.middleware import ChatContext, Next, RunBlocked, chat_middleware
from runrelay.agent.providers.base import ProviderError, ProviderRateLimited
from runrelay.agent.tools import tool
from runrelay.client._params import ModelParams
from runrelay.types import RunStatus

SCRIPTED = ProviderConfig(type="scripted")
ADD_SCRIPT = {
    "turns": [
        {"tool_calls": [{"name": "add_numbers", "arguments": {"a": 2, "b": 3}}]},
        {"text": "The sum is 5.", "chunks": 2},
    ]
}


def add_numbers(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool(approval_mode="always_require")
def guarded_add(a: int, b: int) -> int:
    """Add two integers, once a person allows it."""
    return a + b


def agent(**overrides: Any) -> AgentSpec:
    spec: dict[str, Any] = {
        "name": "adder",
        "instructions": "You add numbers.",
        "tools": ["tests.runrelay.test_driver:add_numbers"],
        "script": ADD_SCRIPT,
    }
    return AgentSpec.model_validate(spec | overrides)


def request(**overrides: Any) -> RunRequest:
    fields: dict[str, Any] = {
        "run_id": "run_1",
        "message": "2 + 3?",
        "timeout_s": 30,
        "timeout_name": "adder's timeout_s",
    }
    return RunRequest(**(fields | overrides))


class Recorder:
    """The runtime side: events and checkpoints, in memory."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.checkpoints: list[LoopState] = []

    async def emit(self, type: str, data: dict[str, Any]) -> None:
        self.events.append((type, data))

    async def checkpoint(self, state: LoopState, event: PendingEvent | None = None) -> None:
        # As stored: a JSON copy, not the live state.
        self.checkpoints.append(LoopState.from_dict(json.loads(json.dumps(state.to_dict()))))
        if event is not None:
            await self.emit(*event)

    def hooks(self, **overrides: Any) -> RunHooks:
        return RunHooks(**({"emit": self.emit, "checkpoint": self.checkpoint} | overrides))

    @property
    def types(self) -> list[str]:
        return [type for type, _ in self.events]


def drive(spec: AgentSpec, run: RunRequest, hooks: RunHooks, **options: Any) -> Outcome:
    async def go() -> Outcome:
        async with httpx.AsyncClient() as http:
            middleware = options.pop("middleware", None)
            driver = AgentRun(spec, SCRIPTED, http, middleware=middleware)
            return await driver.drive(run, hooks, **options)

    return asyncio.run(go())


def test_a_first_attempt_announces_the_agent_and_checkpoints_its_opening_messages() -> None:
    recorder = Recorder()
    history = [{"role": "user", "content": "1 + 1?"}, {"role": "assistant", "content": "2"}]
    run = request(history=history, model_id="scripted-2", resolved={"thread_id": "t1"})

    outcome = drive(agent(), run, recorder.hooks())

    assert recorder.events[0] == (
        "agent_resolved",
        {"agent_id": ".adder", "agent_name": "adder", "thread_id": "t1", "model": "scripted-2"},
    )
    opening = recorder.checkpoints[0].messages
    assert opening == [
        {"role": "system", "content": "You add numbers."},
        *history,
        {"role": "user", "content": "2 + 3?"},
    ]
    assert recorder.types.count("tool_call_result") == 1
    assert recorder.types[-3:] == ["output_text_delta", "output_text_delta", "usage"]
    assert outcome.status is RunStatus.COMPLETED and outcome.output == "The sum is 5."
    assert outcome.error is None and outcome.exception is None
    # The thread keeps this run's messages only: not the system prompt, not the history.
    assert [m["role"] for m in outcome.thread_messages] == [
        "user",
        "assistant",
        "tool",
        "assistant",
    ]
    assert outcome.thread_messages[0] == {"role": "user", "content": "2 + 3?"}


def test_a_resumed_attempt_goes_on_from_its_checkpoint_without_announcing_again() -> None:
    first = Recorder()
    drive(agent(), request(), first.hooks())
    after_tool = next(state for state in first.checkpoints if state.records or state.finished)

    again = Recorder()
    outcome = drive(agent(), request(), again.hooks(), resume=after_tool)

    assert "agent_resolved" not in again.types
    assert "tool_call_result" not in again.types  # the checkpoint holds the tool's result
    assert outcome.output == "The sum is 5."


def test_model_params_override_the_agents_and_unset_ones_keep_them() -> None:
    seen: list[dict[str, Any]] = []

    @chat_middleware
    async def spy(context: ChatContext, next: Next[ChatContext]) -> None:
        seen.append(dict(context.params))
        await next(context)

    spec = agent(temperature=0.2, max_tokens=100)
    drive(
        spec,
        request(params=ModelParams(max_tokens=7, seed=3)),
        Recorder().hooks(),
        middleware=[spy],
    )

    assert seen[0] == {"temperature": 0.2, "max_tokens": 7, "seed": 3}


def raising(exc: Exception) -> object:
    @chat_middleware
    async def fail(context: ChatContext, next: Next[ChatContext]) -> None:
        raise exc

    return fail


@pytest.mark.parametrize(
    ("exc", "code", "message"),
    [
        (ProviderError("the model broke"), "provider_error", "the model broke"),
        (ProviderRateLimited("slow down"), "provider_rate_limited", "slow down"),
        (RunBlocked("not today"), "blocked", "not today"),
        (RunBlocked(), "blocked", "a middleware stopped the run"),
        (McpToolConflict("two tools named add"), "mcp_tool_conflict", "two tools named add"),
        (TimeoutError("a tool's own"), "internal_error", "TimeoutError: a tool's own"),
        (KeyError("x"), "internal_error", "KeyError: 'x'"),
    ],
)
def test_each_failure_maps_to_its_code(exc: Exception, code: str, message: str) -> None:
    recorder = Recorder()

    outcome = drive(agent(), request(), recorder.hooks(), middleware=[raising(exc)])

    assert outcome.status is RunStatus.FAILED
    assert outcome.error == {"code": code, "message": message}
    assert outcome.exception is exc
    # Ending the log (error, done) is the runtime's, through the outcome: the driver emits neither.
    assert "error" not in recorder.types and "done" not in recorder.types


def test_an_mcp_server_that_cannot_start_fails_the_run_with_mcp_unavailable() -> None:
    server = {"name": "missing", "transport": "stdio", "command": "/nonexistent/mcp-server"}

    outcome = drive(agent(mcp_servers=[server]), request(), Recorder().hooks())

    assert outcome.error is not None and outcome.error["code"] == "mcp_unavailable"
    assert isinstance(outcome.exception, McpServerError)
    assert "'missing'" in outcome.error["message"]


def test_the_deadline_fails_the_run_with_run_timeout_naming_whose_deadline() -> None:
    slow = {"delay_ms": 100, "turns": [{"text": "a slow answer in many parts", "chunks": 20}]}
    interrupted: list[bool] = []

    async def after_interrupt() -> None:
        interrupted.append(True)

    run = request(timeout_s=60, time_left_s=0.2, timeout_name="the timeout_s it was given")
    outcome = drive(
        agent(script=slow, tools=[]), run, Recorder().hooks(after_interrupt=after_interrupt)
    )

    assert outcome.error == {
        "code": "run_timeout",
        "message": "the run took longer than the timeout_s it was given, 60 s",
    }
    assert interrupted == [True]


def test_a_runtime_signal_passes_through_instead_of_failing_the_run() -> None:
    class LeaseGone(Exception):
        pass

    with pytest.raises(LeaseGone):
        drive(
            agent(),
            request(),
            Recorder().hooks(propagate=(LeaseGone,)),
            middleware=[raising(LeaseGone())],
        )


def test_without_an_approver_a_call_that_needs_approval_ends_the_attempt_requires_action() -> None:
    recorder = Recorder()
    spec = agent(tools=["tests.runrelay.test_driver:guarded_add"], script=GUARDED_SCRIPT)

    outcome = drive(spec, request(), recorder.hooks())

    assert outcome.status is RunStatus.REQUIRES_ACTION
    assert outcome.result is not None
    [call] = outcome.result.required_action or []
    assert (call["name"], call["arguments"]) == ("guarded_add", {"a": 1, "b": 2})
    assert recorder.types[-1] == "approval_required"


def test_with_an_approver_the_run_waits_for_the_decision_and_goes_on() -> None:
    asked: list[dict[str, Any]] = []

    async def decide(call: dict[str, Any]) -> dict[str, Any]:
        asked.append(call)
        return {"approved": False, "reason": "not now"}

    recorder = Recorder()
    spec = agent(tools=["tests.runrelay.test_driver:guarded_add"], script=GUARDED_SCRIPT)

    outcome = drive(spec, request(), recorder.hooks(decide=decide))

    assert [call["name"] for call in asked] == ["guarded_add"]
    assert outcome.status is RunStatus.COMPLETED
    assert outcome.result is not None
    assert outcome.result.tool_calls[0].error == "the call was rejected by the approver: not now"


def test_done_data_is_the_one_shape_of_done() -> None:
    assert Outcome.failed("blocked", "no").done_data(duration_ms=5) == {
        "status": "failed",
        "output": "",
        "usage": None,
        "error": {"code": "blocked", "message": "no"},
        "duration_ms": 5,
    }
    cancelled = Outcome.cancelled().done_data(duration_ms=1, usage={"total_tokens": 3})
    assert cancelled["status"] == "cancelled" and cancelled["usage"] == {"total_tokens": 3}


def test_failure_names_an_expired_deadline_only() -> None:
    run = request(timeout_s=2.5, timeout_name="RUNRELAY_RUN_TIMEOUT_S")
    assert failure(TimeoutError(), run, expired=True) == (
        "run_timeout",
        "the run took longer than RUNRELAY_RUN_TIMEOUT_S, 2.5 s",
    )
    assert failure(TimeoutError(), run, expired=False)[0] == "internal_error"
    assert failure(McpServerError(_server(), "gone"), run, expired=False)[0] == "mcp_unavailable"


def _server() -> McpServerSpec:
    return McpServerSpec(name="calc", transport="stdio", command="calc")


GUARDED_SCRIPT = {
    "turns": [
        {"tool_calls": [{"name": "guarded_add", "arguments": {"a": 1, "b": 2}}]},
        {"text": "Done.", "chunks": 1},
    ]
}


async def fast_step() -> str:
    """Return at once."""
    return "fast"


async def slow_step() -> str:
    """Return a moment later."""
    await asyncio.sleep(0.05)
    return "slow"


def test_a_checkpoint_holds_only_tool_results_announced_with_it_or_before() -> None:
    """Two parallel calls: the fast one's checkpoint waits (as the worker's does for the run's
    writer and Redis) while the slow one finishes. That checkpoint must not hold the slow
    result: a worker killed before the slow one's own checkpoint would resume with a result
    whose `tool_call_result` event never reached the log."""
    events: list[tuple[str, dict[str, Any]]] = []
    lock = asyncio.Lock()
    unannounced: list[set[str]] = []

    async def emit(type: str, data: dict[str, Any]) -> None:
        events.append((type, data))

    async def checkpoint(state: LoopState, event: PendingEvent | None = None) -> None:
        async with lock:  # one at a time, in order, as the run's writer saves them
            if event is not None and event[1].get("name") == "fast_step":
                await asyncio.sleep(0.2)  # a slow round trip; the slow call ends meanwhile
            saved = LoopState.from_dict(json.loads(json.dumps(state.to_dict())))
            if event is not None:
                await emit(*event)
            announced = {d["tool_call_id"] for t, d in events if t == "tool_call_result"}
            unannounced.append(set(saved.finished) - announced)

    spec = agent(
        tools=["tests.runrelay.test_driver:fast_step", "tests.runrelay.test_driver:slow_step"],
        script={
            "turns": [
                {"tool_calls": [{"name": "fast_step", "arguments": {}},
                                {"name": "slow_step", "arguments": {}}]},
                {"text": "Both done.", "chunks": 1},
            ]
        },
    )
    outcome = drive(spec, request(), RunHooks(emit=emit, checkpoint=checkpoint))

    assert outcome.output == "Both done."
    results = [d["name"] for t, d in events if t == "tool_call_result"]
    assert results == ["fast_step", "slow_step"]
    assert all(not ids for ids in unannounced), f"saved before announced: {unannounced}"
