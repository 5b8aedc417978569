"""One model call: stream the provider's chunks as events and join them into a `ChatResponse`
(text, whole tool calls, usage)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from runrelay.agent.middleware import ChatContext, ChatResponse
from runrelay.agent.providers.base import (
    ModelProvider,
    ModelRequest,
    TextDelta,
    ToolCallFragment,
    UsageReport,
)
from runrelay.types import Usage

Emit = Callable[[Any, dict[str, Any]], Awaitable[None]]


@dataclass
class _PendingCall:
    id: str
    name: str
    parts: list[str] = field(default_factory=list)

    @property
    def arguments(self) -> str:
        return "".join(self.parts)


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


async def stream_turn(provider: ModelProvider, context: ChatContext, emit: Emit) -> ChatResponse:
    """Call the model once and stream its answer as events; the whole answer."""
    request = ModelRequest(
        model=context.model,
        messages=list(context.messages),
        tools=list(context.tools),
        temperature=context.params.get("temperature"),
        max_tokens=context.params.get("max_tokens"),
        seed=context.params.get("seed"),
    )
    response = ChatResponse(model=context.model)
    text: list[str] = []
    calls = _CallAccumulator(context.turn)
    async for chunk in provider.stream(request):
        if isinstance(chunk, TextDelta):
            text.append(chunk.text)
            await emit("output_text_delta", {"delta": chunk.text})
        elif isinstance(chunk, ToolCallFragment):
            call = calls.add(chunk)
            await emit(
                "tool_call_delta",
                {
                    "tool_call_id": call.id,
                    "name": call.name,
                    "arguments_delta": chunk.arguments,
                },
            )
        elif isinstance(chunk, UsageReport):
            response.usage = Usage(
                prompt_tokens=chunk.prompt_tokens,
                completion_tokens=chunk.completion_tokens,
                total_tokens=chunk.prompt_tokens + chunk.completion_tokens,
            )
    response.text = "".join(text)
    response.tool_calls = [
        {"id": c.id, "name": c.name, "arguments": c.arguments} for c in calls.calls
    ]
    return response
