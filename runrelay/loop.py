"""The agent loop: model turn, tool calls, model turn … until a final answer or `max_turns`.

It takes its collaborators as arguments (a model provider, tools, an `emit` callback for events,
a `checkpoint` callback) and imports no Celery, Redis or web framework, so the worker and the
embedded SDK share it. Provider failures propagate as `ProviderError`; tool failures go back to
the model as the tool's result.

Checkpoints: after each model response and each tool result the loop hands its `LoopState` to
`checkpoint`; a loop given that state back (`run(..., resume=state)`) continues from there and
never calls a tool whose result the state holds (tool call ids are the idempotency keys).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from runrelay.events import EventType
from runrelay.providers.base import (
    Finish,
    ModelProvider,
    ModelRequest,
    TextDelta,
    ToolCallFragment,
    UsageReport,
)
from runrelay.tools import Tool, ToolError, current_tool_call_id
from runrelay.types import Usage

Emit = Callable[[EventType, dict[str, Any]], Awaitable[None]]
PendingEvent = tuple[EventType, dict[str, Any]]
# Save the state; when an event comes with it, emit the event in the same atomic step, so that
# "the tool result was announced" and "the tool result is checkpointed" cannot come apart.
Checkpoint = Callable[["LoopState", PendingEvent | None], Awaitable[None]]

FINAL_ANSWER_NUDGE = (
    "You have used all the tool-calling turns available. Answer now with what you have, "
    "without calling tools."
)


@dataclass
class ToolCallRecord:
    tool_call_id: str
    name: str
    arguments: Any
    result: Any = None
    error: str | None = None


@dataclass
class LoopState:
    """Where a run stands: what a checkpoint saves and a resumed loop starts from."""

    messages: list[dict[str, Any]]
    usage: Usage = field(default_factory=Usage)
    turns: int = 0
    # Tool calls of the last assistant message not yet all answered, and those already finished.
    pending: list[dict[str, Any]] = field(default_factory=list)
    finished: dict[str, ToolCallRecord] = field(default_factory=dict)
    records: list[ToolCallRecord] = field(default_factory=list)
    output: str | None = None
    # How many of `messages` (after the system prompt) came from the thread's history.
    history_len: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "usage": self.usage.model_dump(),
            "turns": self.turns,
            "pending": self.pending,
            "finished": {key: asdict(record) for key, record in self.finished.items()},
            "records": [asdict(record) for record in self.records],
            "output": self.output,
            "history_len": self.history_len,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoopState:
        return cls(
            messages=data["messages"],
            usage=Usage(**data["usage"]),
            turns=data["turns"],
            pending=data["pending"],
            finished={k: ToolCallRecord(**v) for k, v in data["finished"].items()},
            records=[ToolCallRecord(**r) for r in data["records"]],
            output=data["output"],
            history_len=data.get("history_len", 0),
        )


@dataclass
class LoopResult:
    output: str
    usage: Usage
    tool_calls: list[ToolCallRecord]
    messages: list[dict[str, Any]]
    turns: int


@dataclass
class LoopSettings:
    model: str
    max_turns: int = 8
    temperature: float | None = None
    max_tokens: int | None = None
    seed: int | None = None


@dataclass
class _PendingCall:
    id: str
    name: str
    parts: list[str] = field(default_factory=list)

    @property
    def arguments(self) -> str:
        return "".join(self.parts)


@dataclass
class _Turn:
    text: list[str] = field(default_factory=list)
    calls: list[_PendingCall] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    finish_reason: str | None = None


class _CallAccumulator:
    """Joins streamed tool-call fragments into whole calls.

    Fragments are keyed by `index`; a fragment whose `id` differs from the open call at its index
    starts a new call, because some servers send parallel calls all with index 0.
    """

    def __init__(self, turn_number: int) -> None:
        self.calls: list[_PendingCall] = []
        self._open: dict[int, _PendingCall] = {}
        self._turn_number = turn_number

    def add(self, fragment: ToolCallFragment) -> _PendingCall:
        current = self._open.get(fragment.index)
        if current is None or (fragment.id and fragment.id != current.id):
            call_id = fragment.id or f"call_{self._turn_number}_{len(self.calls)}"
            current = _PendingCall(id=call_id, name=fragment.name or "")
            self.calls.append(current)
            self._open[fragment.index] = current
        elif fragment.name and not current.name:
            current.name = fragment.name
        current.parts.append(fragment.arguments)
        return current


class AgentLoop:
    def __init__(
        self,
        provider: ModelProvider,
        settings: LoopSettings,
        tools: Sequence[Tool] = (),
        emit: Emit | None = None,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        self.provider = provider
        self.settings = settings
        self.tools = {tool.name: tool for tool in tools}
        self._emit = emit
        self._checkpoint = checkpoint
        self._invocations: dict[str, int] = {}

    async def emit(self, type: EventType, data: dict[str, Any]) -> None:
        if self._emit is not None:
            await self._emit(type, data)

    async def _save(self, state: LoopState, event: PendingEvent | None = None) -> None:
        if self._checkpoint is not None:
            await self._checkpoint(state, event)
        elif event is not None:
            await self.emit(*event)

    async def run(
        self, messages: list[dict[str, Any]], *, resume: LoopState | None = None
    ) -> LoopResult:
        """Run until the model answers without tool calls; `messages` grows in place.

        With `resume`, continue from that checkpointed state instead (`messages` is ignored).
        """
        state = resume if resume is not None else LoopState(messages=messages)
        for record in [*state.records, *state.finished.values()]:
            self._invocations[record.name] = self._invocations.get(record.name, 0) + 1
        while state.output is None:
            if state.pending:
                await self._finish_tool_calls(state)
            turn_number = state.turns + 1
            final = turn_number > self.settings.max_turns
            if final:
                state.messages.append({"role": "system", "content": FINAL_ANSWER_NUDGE})
            turn = await self._model_turn(state.messages, turn_number, offer_tools=not final)
            state.usage = state.usage + turn.usage
            state.turns = turn_number
            text = "".join(turn.text)
            # On the final turn no tools were offered; calls a model makes anyway are ignored.
            if not turn.calls or final:
                state.messages.append({"role": "assistant", "content": text})
                state.output = text
            else:
                calls = [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in turn.calls]
                state.messages.append(
                    {
                        "role": "assistant",
                        "content": text or None,
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
        await self.emit("usage", {"usage": state.usage.model_dump(), "model": self.settings.model})
        return LoopResult(state.output, state.usage, state.records, state.messages, state.turns)

    async def _finish_tool_calls(self, state: LoopState) -> None:
        """Run the pending calls that have no result yet (concurrently), checkpointing each
        result with its event; then answer every call, in call order."""

        async def one(call: dict[str, Any]) -> None:
            record = await self._call_tool(call)
            state.finished[record.tool_call_id] = record
            await self._save(state, ("tool_call_result", _result_event(record)))

        await asyncio.gather(*(one(c) for c in state.pending if c["id"] not in state.finished))
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
        state.pending, state.finished = [], {}

    async def _model_turn(
        self, messages: list[dict[str, Any]], turn_number: int, *, offer_tools: bool
    ) -> _Turn:
        request = ModelRequest(
            model=self.settings.model,
            messages=list(messages),
            tools=[tool.schema() for tool in self.tools.values()] if offer_tools else [],
            temperature=self.settings.temperature,
            max_tokens=self.settings.max_tokens,
            seed=self.settings.seed,
        )
        turn = _Turn()
        calls = _CallAccumulator(turn_number)
        async for chunk in self.provider.stream(request):
            if isinstance(chunk, TextDelta):
                turn.text.append(chunk.text)
                await self.emit("output_text_delta", {"delta": chunk.text})
            elif isinstance(chunk, ToolCallFragment):
                call = calls.add(chunk)
                await self.emit(
                    "tool_call_delta",
                    {
                        "tool_call_id": call.id,
                        "name": call.name,
                        "arguments_delta": chunk.arguments,
                    },
                )
            elif isinstance(chunk, UsageReport):
                turn.usage = Usage(
                    prompt_tokens=chunk.prompt_tokens,
                    completion_tokens=chunk.completion_tokens,
                    total_tokens=chunk.prompt_tokens + chunk.completion_tokens,
                )
            elif isinstance(chunk, Finish):
                turn.finish_reason = chunk.reason
        turn.calls = calls.calls
        return turn

    async def _call_tool(self, call: dict[str, Any]) -> ToolCallRecord:
        raw_arguments: str = call["arguments"]
        try:
            arguments: Any = json.loads(raw_arguments or "{}")
        except json.JSONDecodeError:
            arguments = raw_arguments
        record = ToolCallRecord(tool_call_id=call["id"], name=call["name"], arguments=arguments)
        tool = self.tools.get(record.name)
        token = current_tool_call_id.set(record.tool_call_id)
        try:
            if tool is None:
                raise ToolError(
                    f"there is no tool named {record.name!r}; available: "
                    f"{', '.join(sorted(self.tools)) or 'none'}"
                )
            used = self._invocations.get(tool.name, 0)
            if tool.max_invocations is not None and used >= tool.max_invocations:
                raise ToolError(f"{tool.name} may be called at most {tool.max_invocations} times")
            self._invocations[tool.name] = used + 1
            record.result = await tool.invoke(raw_arguments)
        except ToolError as exc:
            record.error = str(exc)
        finally:
            current_tool_call_id.reset(token)
        return record


def _result_event(record: ToolCallRecord) -> dict[str, Any]:
    data: dict[str, Any] = {
        "tool_call_id": record.tool_call_id,
        "name": record.name,
        "arguments": record.arguments,
        "result": record.result,
    }
    if record.error is not None:
        data["error"] = record.error
    return data
