"""Where a run of the agent loop stands: what a checkpoint saves and a resumed loop starts from.

Plain data (JSON round-trip through `to_dict`/`from_dict`), so the worker can keep it in Redis,
the database can keep a paused run's, and the embedded loop can keep it in memory.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from typing import Any

from runrelay.agent.messages import ApprovalRequest, ChatMessage, Decision, ToolCall
from runrelay.types import Usage


@dataclass
class ToolCallRecord:
    tool_call_id: str
    name: str
    arguments: Any
    result: Any = None
    error: str | None = None
    # The approver's decision, for calls to tools that need one.
    approved: bool | None = None
    # A function middleware ended the run with this call's result.
    terminate: bool = False


@dataclass
class LoopState:
    messages: list[ChatMessage]
    usage: Usage = field(default_factory=Usage)
    turns: int = 0
    # Tool calls of the last assistant message not yet all answered, and those already finished.
    pending: list[ToolCall] = field(default_factory=list)
    finished: dict[str, ToolCallRecord] = field(default_factory=dict)
    records: list[ToolCallRecord] = field(default_factory=list)
    output: str | None = None
    # How many of `messages` (after the system prompt) came from the thread's history.
    history_len: int = 0
    # Approvals: the pending calls announced as awaiting a decision, and the decisions made
    # by call id.
    awaiting: list[ApprovalRequest] = field(default_factory=list)
    approvals: dict[str, Decision] = field(default_factory=dict)
    suggestions: list[dict[str, Any]] = field(default_factory=list)
    usage_by_model: dict[str, dict[str, int]] = field(default_factory=dict)

    def add_usage(self, model: str, usage: Usage) -> None:
        self.usage = self.usage + usage
        known = Usage(**self.usage_by_model.get(model, {}))
        self.usage_by_model[model] = (known + usage).model_dump()

    def snapshot(self) -> LoopState:
        """A copy that keeps what it holds now, for a checkpoint written a moment later: the
        parts that running tool calls change (`finished`, `suggestions`) are copied; the rest,
        which changes only between tool calls, is shared."""
        return replace(self, finished=dict(self.finished), suggestions=list(self.suggestions))

    def to_dict(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "usage": self.usage.model_dump(),
            "turns": self.turns,
            "pending": self.pending,
            "finished": {key: _record(record) for key, record in self.finished.items()},
            "records": [_record(record) for record in self.records],
            "output": self.output,
            "history_len": self.history_len,
            "awaiting": self.awaiting,
            "approvals": self.approvals,
            "suggestions": self.suggestions,
            "usage_by_model": self.usage_by_model,
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
            awaiting=data.get("awaiting", []),
            approvals=data.get("approvals", {}),
            suggestions=data.get("suggestions", []),
            usage_by_model=data.get("usage_by_model", {}),
        )


_RECORD_FIELDS = tuple(f.name for f in fields(ToolCallRecord))


def _record(record: ToolCallRecord) -> dict[str, Any]:
    """`asdict(record)` without its deep copies: the dict is encoded at once (a checkpoint),
    and a tool's arguments and result, which `asdict` copied down to each leaf at every
    checkpoint, can be large. Dataclasses inside them still become dicts, as there."""
    return {name: _plain(getattr(record, name)) for name in _RECORD_FIELDS}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, tuple):
        items = [_plain(item) for item in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return value
