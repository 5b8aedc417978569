"""What a run paused for approval holds, as typed data.

A run whose model calls an `always_require` tool is paused by its worker (`Lifecycle.pause`):
status `requires_action`, no lease, no worker, and `runs.required_action` holding a
`PausedCalls`: the calls awaiting a decision (the public `RequiredAction` part, each call with
its decision once made), when the run paused, and the loop's checkpoint (internal: never part of
the public run object). Decisions are recorded by `Lifecycle.decide`; the last one moves the run
back to `queued`.

Stored as JSON, flat (the layout paused runs written before this module already have)::

    {"type": "approve_tool_calls",
     "tool_calls": [{"tool_call_id", "name", "arguments", "approved": bool | None, "reason"}],
     "paused_at": ISO time, "checkpoint": {"next_seq": int, "state": LoopState dict}}
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

from runrelay.agent.messages import Decision as LoopDecision
from runrelay.server.tables import as_utc, utcnow
from runrelay.types import RequiredAction, ToolApproval


class SavedCheckpoint(BaseModel):
    """The loop's checkpoint at the pause: the next event seq and the `LoopState` as a dict."""

    next_seq: int
    state: dict[str, Any]


class PausedCalls(BaseModel):
    """`runs.required_action` as stored: the public part plus the internal checkpoint."""

    type: Literal["approve_tool_calls"] = "approve_tool_calls"
    tool_calls: list[ToolApproval]
    paused_at: datetime
    checkpoint: SavedCheckpoint

    @classmethod
    def of(cls, stored: dict[str, Any] | None) -> PausedCalls | None:
        return None if not stored else cls.model_validate(stored)

    def stored(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def public(self) -> RequiredAction:
        """What clients see (the checkpoint stays inside)."""
        return RequiredAction(type=self.type, tool_calls=self.tool_calls)

    def call(self, call_id: str) -> ToolApproval | None:
        return next((c for c in self.tool_calls if c.tool_call_id == call_id), None)

    @property
    def all_decided(self) -> bool:
        return all(call.approved is not None for call in self.tool_calls)

    @property
    def waited_s(self) -> float:
        return (utcnow() - as_utc(self.paused_at)).total_seconds()

    @property
    def used_tokens(self) -> int:
        """Tokens the run used before it paused (the checkpoint's usage)."""
        usage = self.checkpoint.state.get("usage") or {}
        return int(usage.get("total_tokens", 0))

    @property
    def usage(self) -> dict[str, Any] | None:
        usage: dict[str, Any] | None = self.checkpoint.state.get("usage")
        return usage


@dataclass(frozen=True)
class Decision:
    """One approver's answer on one call."""

    call_id: str
    approved: bool
    reason: str | None = None


def decisions(paused: PausedCalls | None) -> dict[str, LoopDecision]:
    """The decisions made, as the loop's `LoopState.approvals` takes them."""
    if paused is None:
        return {}
    return {
        call.tool_call_id: LoopDecision(approved=call.approved, reason=call.reason)
        for call in paused.tool_calls
        if call.approved is not None
    }
