"""The agent loop's data as typed models: chat messages, the model's tool calls, calls awaiting
approval and the decisions on them.

They are `TypedDict`s, so they are plain JSON objects at run time: checkpoints (Redis, a paused
run's row), a thread's history (the database) and embedded session files keep exactly the JSON
they had, an existing one still loads, and middleware that reads or writes
`context.messages` / `ChatResponse.tool_calls` as dicts keeps working. The types are what mypy
checks across the loop, the model turn, middleware, history and the driver.
"""

from __future__ import annotations

from typing import Any, Literal, Required, TypedDict

__all__ = [
    "ApprovalRequest",
    "ChatMessage",
    "ChatToolCall",
    "Decision",
    "ToolCall",
    "ToolCallFunction",
]


class ToolCall(TypedDict):
    """One whole tool call as the model made it; `arguments` is the JSON text it sent."""

    id: str
    name: str
    arguments: str


class ToolCallFunction(TypedDict):
    name: str
    arguments: str


class ChatToolCall(TypedDict):
    """A tool call inside an assistant message, in the chat-completions wire shape."""

    id: str
    type: Literal["function"]
    function: ToolCallFunction


class ChatMessage(TypedDict, total=False):
    """One chat message: `system`, `user`, `assistant` (text and/or `tool_calls`) or `tool`
    (`tool_call_id` and the result as JSON text in `content`)."""

    role: Required[str]
    content: str | None
    tool_calls: list[ChatToolCall]
    tool_call_id: str
    name: str


class ApprovalRequest(TypedDict):
    """A call waiting for a person's decision; `arguments` are parsed (JSON, or the raw text)."""

    tool_call_id: str
    name: str
    arguments: Any


class Decision(TypedDict):
    """What the approver decided for one call; `reason` goes to the model for a rejection."""

    approved: bool
    reason: str | None
