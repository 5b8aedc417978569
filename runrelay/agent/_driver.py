"""The one agent-run driver: what the worker and the embedded runtime both call to run an agent.

It builds the loop (provider, tools, MCP servers, middleware, opening messages with history),
runs it, maps failures to error codes, and shapes the `done` event. The worker adds leases,
checkpoints, quotas and Redis around it; the embedded runtime adds sessions and an approver.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runrelay.agent._loop import LoopResult
from runrelay.types import RunStatus

CANCELLED_ERROR = {"code": "cancelled", "message": "the run was cancelled on request"}


@dataclass
class Outcome:
    """How one attempt of a run came out: `completed`, `failed`, `cancelled`, `expired`, or
    `requires_action` (paused for approval decisions)."""

    status: RunStatus
    output: str = ""
    result: LoopResult | None = None
    error: dict[str, str] | None = None
    # A completed run's messages, for its thread's history.
    thread_messages: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def failed(cls, code: str, message: str) -> Outcome:
        return cls(RunStatus.FAILED, error={"code": code, "message": message})

    @classmethod
    def cancelled(cls) -> Outcome:
        return cls(RunStatus.CANCELLED, error=CANCELLED_ERROR)

    def done_data(self, *, duration_ms: int, usage: dict[str, Any] | None = None) -> dict[str, Any]:
        """The `done` event's fields; `usage` stands in when the attempt has no loop result
        (e.g. a paused run cancelled: what it used before pausing)."""
        if self.result is not None:
            usage = self.result.usage.model_dump()
        return {
            "status": str(self.status),
            "output": self.output,
            "usage": usage,
            "error": self.error,
            "duration_ms": duration_ms,
        }
