"""The agent loop: model turn, tool calls, model turn … until a final answer or `max_turns`.

It takes its collaborators as arguments (a model provider, tools, an `emit` callback for events)
and imports no Celery, Redis or web framework, so the worker and the embedded SDK share it.
Provider failures propagate as `ProviderError`; tool failures go back to the model as the
tool's result.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
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
from runrelay.tools import Tool, ToolError
from runrelay.types import Usage

Emit = Callable[[EventType, dict[str, Any]], Awaitable[None]]

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
    ) -> None:
        self.provider = provider
        self.settings = settings
        self.tools = {tool.name: tool for tool in tools}
        self._emit = emit
        self._invocations: dict[str, int] = {}

    async def emit(self, type: EventType, data: dict[str, Any]) -> None:
        if self._emit is not None:
            await self._emit(type, data)

    async def run(self, messages: list[dict[str, Any]]) -> LoopResult:
        """Run until the model answers without tool calls; `messages` grows in place."""
        usage = Usage()
        records: list[ToolCallRecord] = []
        for turn_number in range(1, self.settings.max_turns + 2):
            final = turn_number > self.settings.max_turns
            if final:
                messages.append({"role": "system", "content": FINAL_ANSWER_NUDGE})
            turn = await self._model_turn(messages, turn_number, offer_tools=not final)
            usage = usage + turn.usage
            text = "".join(turn.text)
            # On the final turn no tools were offered; calls a model makes anyway are ignored.
            if not turn.calls or final:
                messages.append({"role": "assistant", "content": text})
                await self.emit(
                    "usage", {"usage": usage.model_dump(), "model": self.settings.model}
                )
                return LoopResult(text, usage, records, messages, turn_number)
            messages.append(
                {
                    "role": "assistant",
                    "content": text or None,
                    "tool_calls": [
                        {
                            "id": c.id,
                            "type": "function",
                            "function": {"name": c.name, "arguments": c.arguments},
                        }
                        for c in turn.calls
                    ],
                }
            )
            results = await asyncio.gather(*(self._call_tool(call) for call in turn.calls))
            for record in results:
                records.append(record)
                content = record.result if record.error is None else {"error": record.error}
                messages.append(
                    {
                        "role": "tool",
                        "tool_call_id": record.tool_call_id,
                        "content": json.dumps(content, default=str),
                    }
                )
        raise AssertionError("unreachable: the final turn offers no tools")

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

    async def _call_tool(self, call: _PendingCall) -> ToolCallRecord:
        try:
            arguments: Any = json.loads(call.arguments or "{}")
        except json.JSONDecodeError:
            arguments = call.arguments
        record = ToolCallRecord(tool_call_id=call.id, name=call.name, arguments=arguments)
        tool = self.tools.get(call.name)
        try:
            if tool is None:
                raise ToolError(
                    f"there is no tool named {call.name!r}; available: "
                    f"{', '.join(sorted(self.tools)) or 'none'}"
                )
            used = self._invocations.get(tool.name, 0)
            if tool.max_invocations is not None and used >= tool.max_invocations:
                raise ToolError(f"{tool.name} may be called at most {tool.max_invocations} times")
            self._invocations[tool.name] = used + 1
            record.result = await tool.invoke(call.arguments)
        except ToolError as exc:
            record.error = str(exc)
        data: dict[str, Any] = {
            "tool_call_id": record.tool_call_id,
            "name": record.name,
            "arguments": record.arguments,
            "result": record.result,
        }
        if record.error is not None:
            data["error"] = record.error
        await self.emit("tool_call_result", data)
        return record
