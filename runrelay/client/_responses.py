"""What the SDK hands back: FAOS responses and stream chunks, Mentiora results and typed stream
events, and the conversions from the service's run events (DESIGN §4) to each.

Every stream item keeps the event's SSE id (`id`, the event's seq as a string), so a caller can
resume from any item.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from runrelay.types import MAX_SUGGESTIONS, RequiredAction, Usage, WaitResponse

InvokeResponse = WaitResponse
"""FAOS `invoke` response: `result`, `metadata` (model, duration_ms, ...), `usage`, `request_id`,
and the finished `run`."""


class AgentResponse(BaseModel):
    """Response of `client.shortcut(...)` (FAOS)."""

    content: str
    agent_id: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class StreamChunk(BaseModel):
    """One FAOS stream chunk. `data` is the text for `text`; the tool call for `tool_call`; the
    event for `metadata`; `{code, message}` for `error`; `{status, output, usage, ...}` for
    `done`. `event` is the run event it came from."""

    type: Literal["text", "tool_call", "metadata", "error", "done"]
    data: Any
    id: str | None = None
    event: dict[str, Any] = Field(default_factory=dict, repr=False)


# Mentiora ------------------------------------------------------------------------------------


class UsageInfo(BaseModel):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None


class AgentToolCall(BaseModel):
    tool_call_id: str
    name: str
    arguments: Any = None
    result: Any | None = None


class AgentRunResult(BaseModel):
    thread_id: str
    trace_id: str | None = None
    agent_id: str
    agent_revision: int
    agent_tag: str | None = None
    output: str
    tool_calls: list[AgentToolCall] = Field(default_factory=list)
    status: Literal["completed", "failed", "cancelled", "expired", "requires_action"]
    usage: UsageInfo | None = None
    run_id: str = ""
    # Set when the run paused for approval: decide with `client.runs.approve/reject`.
    required_action: RequiredAction | None = None


class _StreamEvent(BaseModel):
    id: str | None = Field(None, description="the SSE id: the run event's seq")


class AgentResolvedEvent(_StreamEvent):
    type: Literal["agent_resolved"] = "agent_resolved"
    agent_id: str
    agent_revision: int
    agent_tag: str | None = None
    thread_id: str


class OutputTextDeltaEvent(_StreamEvent):
    type: Literal["output_text_delta"] = "output_text_delta"
    delta: str


class ToolCallDeltaEvent(_StreamEvent):
    type: Literal["tool_call_delta"] = "tool_call_delta"
    tool_call_id: str
    name: str
    arguments_delta: str


class ToolCallResultEvent(_StreamEvent):
    type: Literal["tool_call_result"] = "tool_call_result"
    tool_call_id: str
    name: str
    arguments: Any = None
    result: Any = None


class SuggestionItem(BaseModel):
    label: Annotated[str, Field(min_length=1, max_length=40)]
    message: Annotated[str, Field(min_length=1)]


class SuggestionsEvent(_StreamEvent):
    type: Literal["suggestions"] = "suggestions"
    suggestions: list[SuggestionItem]


class ChatCompletedEvent(_StreamEvent):
    type: Literal["chat_completed"] = "chat_completed"
    thread_id: str
    status: Literal["completed", "failed"]
    output: str


class AgentErrorEvent(_StreamEvent):
    type: Literal["error"] = "error"
    code: str
    message: str


class CustomEvent(_StreamEvent):
    """Any other event, passed through: `event` is its name, `data` the whole event."""

    type: Literal["custom"] = "custom"
    event: str
    data: Any = None


AgentStreamEvent = (
    AgentResolvedEvent
    | OutputTextDeltaEvent
    | ToolCallDeltaEvent
    | ToolCallResultEvent
    | SuggestionsEvent
    | ChatCompletedEvent
    | AgentErrorEvent
    | CustomEvent
)

_SUGGESTION = TypeAdapter(SuggestionItem)
_TYPED: dict[str, type[_StreamEvent]] = {
    "agent_resolved": AgentResolvedEvent,
    "output_text_delta": OutputTextDeltaEvent,
    "tool_call_delta": ToolCallDeltaEvent,
    "tool_call_result": ToolCallResultEvent,
    "chat_completed": ChatCompletedEvent,
    "error": AgentErrorEvent,
}


def valid_suggestions(raw: Any) -> list[SuggestionItem]:
    """At most six suggestions with a label of at most 40 characters; invalid ones are dropped."""
    items: list[SuggestionItem] = []
    for entry in raw if isinstance(raw, list) else []:
        try:
            items.append(_SUGGESTION.validate_python(entry))
        except PydanticValidationError:
            continue
        if len(items) == MAX_SUGGESTIONS:
            break
    return items


def to_agent_event(event: dict[str, Any]) -> AgentStreamEvent:
    """A run event as a Mentiora typed event; names the SDK does not know become `custom`."""
    kind = str(event.get("type", ""))
    event_id = str(event["seq"]) if "seq" in event else None
    if kind == "suggestions":
        return SuggestionsEvent(
            id=event_id, suggestions=valid_suggestions(event.get("suggestions"))
        )
    if kind == "custom" and "event" in event:
        return CustomEvent(id=event_id, event=str(event["event"]), data=event.get("data"))
    model = _TYPED.get(kind)
    if model is not None:
        try:
            fields = {k: v for k, v in event.items() if k in model.model_fields and k != "type"}
            typed: AgentStreamEvent = model.model_validate({**fields, "id": event_id})  # type: ignore[assignment]  # _TYPED holds only members of the union
            return typed
        except PydanticValidationError:
            pass  # a malformed known event is still delivered, as a custom one
    return CustomEvent(id=event_id, event=kind, data=event)


_METADATA_SKIP = frozenset({"tool_call_delta", "chat_completed", "output_text_delta"})


def to_chunk(event: dict[str, Any]) -> StreamChunk | None:
    """A run event as a FAOS chunk, or None for events FAOS has no chunk for (argument deltas,
    `chat_completed`, which `done` repeats)."""
    kind = event.get("type")
    event_id = str(event["seq"]) if "seq" in event else None
    data: Any
    chunk_type: Literal["text", "tool_call", "metadata", "error", "done"]
    if kind == "output_text_delta":
        chunk_type, data = "text", event.get("delta", "")
    elif kind == "tool_call_result":
        chunk_type = "tool_call"
        data = {k: event.get(k) for k in ("tool_call_id", "name", "arguments", "result", "error")}
    elif kind == "error":
        chunk_type, data = "error", {"code": event.get("code"), "message": event.get("message")}
    elif kind == "done":
        chunk_type = "done"
        data = {
            k: event.get(k) for k in ("status", "output", "usage", "error", "duration_ms", "run_id")
        }
    elif kind in _METADATA_SKIP:
        return None
    else:
        chunk_type = "metadata"
        data = {k: v for k, v in event.items() if k not in ("seq", "ts")}
    return StreamChunk(type=chunk_type, data=data, id=event_id, event=event)


def run_result(response: WaitResponse) -> AgentRunResult:
    run = response.run
    calls = (run.result or {}).get("tool_calls") or []
    usage: Usage | None = run.usage
    return AgentRunResult(
        thread_id=run.thread_id or "",
        trace_id=response.request_id or None,
        agent_id=run.agent.id,
        agent_revision=run.agent.revision,
        agent_tag=run.agent.tag,
        output=run.output or "",
        tool_calls=[AgentToolCall.model_validate(call) for call in calls if isinstance(call, dict)],
        status=run.status if run.status in _REPORTED_STATUSES else "failed",
        usage=UsageInfo(**usage.model_dump()) if usage else None,
        run_id=run.id,
        required_action=run.required_action,
    )


_REPORTED_STATUSES = frozenset({"completed", "cancelled", "expired", "requires_action"})
