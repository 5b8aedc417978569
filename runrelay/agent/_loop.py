"""The agent loop: model turn, tool calls, model turn … until a final answer or `max_turns`.

It takes its collaborators as arguments (a model provider, tools, middleware, an `emit` callback
for events, a `checkpoint` callback) and imports no Celery, Redis or web framework, so the worker
and the embedded SDK share it. Provider failures propagate as `ProviderError`; tool failures go
back to the model as the tool's result.

Checkpoints: after each model response and each tool result the loop hands its `LoopState` to
`checkpoint`; a loop given that state back (`run(..., resume=state)`) continues from there and
never calls a tool whose result the state holds (tool call ids are the idempotency keys).

Approvals: a call to an `always_require` tool is not made until someone decides. The loop runs
the turn's other calls, announces each call awaiting a decision (`approval_required`) and returns
a result whose `required_action` lists them; whoever holds the state records decisions in
`state.approvals` and resumes the loop from it. A rejected call is answered to the model as a
failed call with the approver's reason.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from runrelay.agent._model_turn import stream_turn
from runrelay.agent._state import LoopState, ToolCallRecord
from runrelay.agent.events import EventType
from runrelay.agent.messages import ApprovalRequest, ChatMessage, ToolCall
from runrelay.agent.middleware import (
    AgentRunContext,
    ChatContext,
    ChatResponse,
    FunctionInvocationContext,
    Pipelines,
    run_pipeline,
)
from runrelay.agent.providers.base import (
    ModelProvider,
)
from runrelay.agent.run_context import RunEvents, current_run_events
from runrelay.agent.tools import Tool, ToolError, current_tool_call_id
from runrelay.types import Usage

__all__ = [
    "FINAL_ANSWER_NUDGE",
    "AgentLoop",
    "Checkpoint",
    "Emit",
    "LoopResult",
    "LoopSettings",
    "LoopState",
    "PendingEvent",
    "ToolCallRecord",
]

Emit = Callable[[EventType, dict[str, Any]], Awaitable[None]]
PendingEvent = tuple[EventType, dict[str, Any]]
# Save the state; when an event comes with it, emit the event in the same atomic step, so that
# "the tool result was announced" and "the tool result is checkpointed" cannot come apart.
Checkpoint = Callable[[LoopState, PendingEvent | None], Awaitable[None]]

FINAL_ANSWER_NUDGE = (
    "You have used all the tool-calling turns available. Answer now with what you have, "
    "without calling tools."
)


@dataclass
class LoopResult:
    output: str
    usage: Usage
    tool_calls: list[ToolCallRecord]
    messages: list[ChatMessage]
    turns: int
    # Calls waiting for a decision: the run is paused.
    required_action: list[ApprovalRequest] | None = None
    usage_by_model: dict[str, dict[str, int]] = field(default_factory=dict)
    suggestions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def status(self) -> str:
        return "requires_action" if self.required_action else "completed"


@dataclass
class LoopSettings:
    model: str
    max_turns: int = 8
    temperature: float | None = None
    max_tokens: int | None = None
    seed: int | None = None


class AgentLoop:
    def __init__(
        self,
        provider: ModelProvider,
        settings: LoopSettings,
        tools: Sequence[Tool] = (),
        emit: Emit | None = None,
        checkpoint: Checkpoint | None = None,
        middleware: Sequence[object] = (),
        *,
        agent_name: str = "agent",
        run_id: str | None = None,
        thread_id: str | None = None,
        suggestions: Sequence[dict[str, Any]] = (),
    ) -> None:
        self.provider = provider
        self.settings = settings
        self.tools = {tool.name: tool for tool in tools}
        self.pipelines = Pipelines.of(middleware)
        self.agent_name = agent_name
        self.run_id = run_id
        self.thread_id = thread_id
        self._static_suggestions = list(suggestions)
        self._emit = emit
        self._checkpoint = checkpoint
        self._invocations: dict[str, int] = {}
        self._exceptions: dict[str, int] = {}

    async def emit(self, type: EventType, data: dict[str, Any]) -> None:
        if self._emit is not None:
            await self._emit(type, data)

    async def _save(self, state: LoopState, event: PendingEvent | None = None) -> None:
        if self._checkpoint is not None:
            # The state as of this event: a parallel call that ends while this checkpoint waits
            # to be written (for the run's writer, for Redis) is saved with its own event, not
            # in this one, where a resumed run would find its result and never announce it.
            await self._checkpoint(state.snapshot(), event)
        elif event is not None:
            await self.emit(*event)

    async def run(
        self, messages: list[ChatMessage], *, resume: LoopState | None = None
    ) -> LoopResult:
        """Run until the model answers without tool calls (or a call awaits approval);
        `messages` grows in place. With `resume`, continue from that checkpointed state instead
        (`messages` is ignored). Agent middleware wraps each call of `run`."""
        state = resume if resume is not None else LoopState(messages=messages)
        context = AgentRunContext(
            agent_name=self.agent_name,
            messages=state.messages,
            run_id=self.run_id,
            thread_id=self.thread_id,
        )

        async def final(ctx: AgentRunContext) -> None:
            ctx.result = await self._run(state)

        sink = RunEvents(self.emit, state.suggestions)
        token = current_run_events.set(sink)
        try:
            await run_pipeline(self.pipelines.agent, context, final)
        finally:
            current_run_events.reset(token)
            await sink.flush()
            sink.closed = True
        result = context.result
        if isinstance(result, LoopResult):
            return result
        # A middleware answered (a string) or stopped the run before the loop began: the
        # answer is the assistant's, as if the model had given it.
        if result:
            await self.emit("output_text_delta", {"delta": result})
            state.messages.append({"role": "assistant", "content": result})
        state.output = result or ""
        return self._result(state)

    async def _run(self, state: LoopState) -> LoopResult:
        for record in [*state.records, *state.finished.values()]:
            self._count(record)
        while state.output is None:
            if state.pending:
                waiting = await self._finish_tool_calls(state)
                if waiting:
                    return self._result(state, required_action=waiting)
                if state.output is not None:  # a function middleware ended the run
                    break
            turn_number = state.turns + 1
            final = turn_number > self.settings.max_turns
            if final:
                state.messages.append({"role": "system", "content": FINAL_ANSWER_NUDGE})
            response, stop = await self._model_turn(
                state.messages, turn_number, offer_tools=not final
            )
            state.add_usage(response.model or self.settings.model, response.usage)
            state.turns = turn_number
            # On the final turn no tools were offered; calls a model makes anyway are ignored.
            if not response.tool_calls or final or stop:
                state.messages.append({"role": "assistant", "content": response.text})
                state.output = response.text
            else:
                calls = response.tool_calls
                state.messages.append(
                    {
                        "role": "assistant",
                        "content": response.text or None,
                        "tool_calls": [
                            {
                                "id": c["id"],
                                "type": "function",
                                "function": {"name": c["name"], "arguments": c["arguments"]},
                            }
                            for c in calls
                        ],
                    }
                )
                state.pending, state.finished = calls, {}
            await self._save(state)
        suggestions = _unique_labels([*self._static_suggestions, *state.suggestions])[:6]
        if suggestions:
            await self.emit("suggestions", {"suggestions": suggestions})
        await self.emit(
            "usage",
            {
                "usage": state.usage.model_dump(),
                "model": self.settings.model,
                "by_model": state.usage_by_model,
            },
        )
        result = self._result(state)
        result.suggestions = suggestions
        return result

    def _result(
        self, state: LoopState, required_action: list[ApprovalRequest] | None = None
    ) -> LoopResult:
        return LoopResult(
            output=state.output or "",
            usage=state.usage,
            tool_calls=state.records,
            messages=state.messages,
            turns=state.turns,
            required_action=required_action,
            usage_by_model=state.usage_by_model,
        )

    def _needs_decision(self, call: ToolCall, state: LoopState) -> bool:
        tool = self.tools.get(call["name"])
        return (
            tool is not None
            and tool.approval_mode == "always_require"
            and call["id"] not in state.approvals
        )

    async def _finish_tool_calls(self, state: LoopState) -> list[ApprovalRequest]:
        """Run the pending calls that have no result yet (concurrently), checkpointing each
        result with its event; then answer every call, in call order. Returns the calls that
        wait for an approval decision (nothing is answered then)."""

        async def one(call: ToolCall) -> None:
            record = await self._call_tool(call, state)
            sink = current_run_events.get()
            if sink is not None:  # the tool's progress events come before its result
                await sink.flush()
            state.finished[record.tool_call_id] = record
            await self._save(state, ("tool_call_result", _result_event(record)))

        todo = [c for c in state.pending if c["id"] not in state.finished]
        waiting = [c for c in todo if self._needs_decision(c, state)]
        await _all_or_none([one(c) for c in todo if c not in waiting])
        if waiting and any(r.terminate for r in state.finished.values()):
            # A middleware ended the run: calls still waiting for a decision are not made.
            for call in waiting:
                record = ToolCallRecord(call["id"], call["name"], _parsed(call["arguments"]))
                record.error = "not called: the run was ended before this call was approved"
                state.finished[record.tool_call_id] = record
                await self._save(state, ("tool_call_result", _result_event(record)))
            waiting = []
        if waiting:
            announced = {c["tool_call_id"] for c in state.awaiting}
            for call in waiting:
                if call["id"] in announced:
                    continue
                request: ApprovalRequest = {
                    "tool_call_id": call["id"],
                    "name": call["name"],
                    "arguments": _parsed(call["arguments"]),
                }
                state.awaiting.append(request)
                await self._save(state, ("approval_required", dict(request)))
            return list(state.awaiting)
        for call in state.pending:
            record = state.finished[call["id"]]
            state.records.append(record)
            content = record.result if record.error is None else {"error": record.error}
            state.messages.append(
                {
                    "role": "tool",
                    "tool_call_id": record.tool_call_id,
                    "content": json.dumps(content, default=str),
                }
            )
            if record.terminate:
                state.output = _as_text(record.result if record.error is None else record.error)
        # Decisions belong to these calls only: a later call reusing an id asks again.
        state.pending, state.finished, state.awaiting, state.approvals = [], {}, [], {}
        return []

    async def _model_turn(
        self, messages: list[ChatMessage], turn_number: int, *, offer_tools: bool
    ) -> tuple[ChatResponse, bool]:
        """One model call through the chat middleware; True when a middleware ended the run."""
        context = ChatContext(
            model=self.settings.model,
            messages=list(messages),
            tools=[tool.schema() for tool in self.tools.values()] if offer_tools else [],
            params={
                "temperature": self.settings.temperature,
                "max_tokens": self.settings.max_tokens,
                "seed": self.settings.seed,
            },
            turn=turn_number,
        )
        streamed = False

        async def final(ctx: ChatContext) -> None:
            nonlocal streamed
            streamed = True
            ctx.result = await stream_turn(self.provider, ctx, self.emit)

        await run_pipeline(self.pipelines.chat, context, final)
        response = context.result or ChatResponse()
        if response.model is None:
            response.model = context.model
        if not streamed:  # a middleware answered instead of the model: show its answer too
            if response.text:
                await self.emit("output_text_delta", {"delta": response.text})
            for call in response.tool_calls:
                await self.emit(
                    "tool_call_delta",
                    {
                        "tool_call_id": call["id"],
                        "name": call["name"],
                        "arguments_delta": call["arguments"],
                    },
                )
        return response, context.terminate

    def _count(self, record: ToolCallRecord) -> None:
        if record.approved is False:
            return  # a rejected call never ran
        self._invocations[record.name] = self._invocations.get(record.name, 0) + 1
        if record.error is not None:
            self._exceptions[record.name] = self._exceptions.get(record.name, 0) + 1

    async def _call_tool(self, call: ToolCall, state: LoopState) -> ToolCallRecord:
        arguments = _parsed(call["arguments"])
        record = ToolCallRecord(tool_call_id=call["id"], name=call["name"], arguments=arguments)
        decision = state.approvals.get(record.tool_call_id)
        if decision is not None:
            record.approved = bool(decision["approved"])
            if not record.approved:
                reason = decision.get("reason")
                record.error = "the call was rejected by the approver" + (
                    f": {reason}" if reason else ""
                )
                return record
        tool = self.tools.get(record.name)
        token = current_tool_call_id.set(record.tool_call_id)
        try:
            if tool is None:
                raise ToolError(
                    f"there is no tool named {record.name!r}; available: "
                    f"{', '.join(sorted(self.tools)) or 'none'}"
                )
            self._check_limits(tool)
            self._invocations[tool.name] = self._invocations.get(tool.name, 0) + 1
            record.result, record.terminate = await self._invoke(tool, call, arguments)
        except ToolError as exc:
            record.error = str(exc)
            if tool is not None:
                self._exceptions[tool.name] = self._exceptions.get(tool.name, 0) + 1
        finally:
            current_tool_call_id.reset(token)
        return record

    def _check_limits(self, tool: Tool) -> None:
        used = self._invocations.get(tool.name, 0)
        if tool.max_invocations is not None and used >= tool.max_invocations:
            raise ToolError(f"{tool.name} may be called at most {tool.max_invocations} times")
        failed = self._exceptions.get(tool.name, 0)
        if tool.max_invocation_exceptions is not None and failed >= tool.max_invocation_exceptions:
            raise ToolError(
                f"{tool.name} failed {failed} times (its limit is "
                f"{tool.max_invocation_exceptions}); it is not called again in this run"
            )

    async def _invoke(self, tool: Tool, call: ToolCall, arguments: Any) -> tuple[Any, bool]:
        """The call through the function middleware; True when a middleware ended the run."""
        if not self.pipelines.function:
            return await tool.invoke(call["arguments"]), False
        if not isinstance(arguments, dict):
            raise ToolError(f"arguments of {tool.name} must be a JSON object")
        context = FunctionInvocationContext(function=tool, arguments=arguments, call_id=call["id"])

        async def final(ctx: FunctionInvocationContext) -> None:
            ctx.result = await tool.invoke(ctx.arguments)

        await run_pipeline(self.pipelines.function, context, final)
        return context.result, context.terminate


def _parsed(raw_arguments: str) -> Any:
    try:
        return json.loads(raw_arguments or "{}")
    except json.JSONDecodeError:
        return raw_arguments


def _unique_labels(suggestions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    labels: set[str] = set()
    unique = []
    for item in suggestions:
        if item["label"] not in labels:
            labels.add(item["label"])
            unique.append(item)
    return unique


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, default=str)


async def _all_or_none(calls: list[Coroutine[Any, Any, None]]) -> None:
    """Run `calls` concurrently; if one raises (the run is stopping: a lost lease, a blocked
    run), cancel the others before re-raising, so no tool goes on in the background."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _result_event(record: ToolCallRecord) -> dict[str, Any]:
    data: dict[str, Any] = {
        "tool_call_id": record.tool_call_id,
        "name": record.name,
        "arguments": record.arguments,
        "result": record.result,
    }
    if record.error is not None:
        data["error"] = record.error
    if record.approved is not None:
        data["approved"] = record.approved
    return data
