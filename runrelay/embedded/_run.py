"""One run of the embedded runtime: the agent-run driver (`runrelay.agent._driver`, the worker's
too) with this run's events handed to `on_event`, approval decisions asked of the host, and the
outcome as a `RunResult` (or the exception that failed it).

Events are shaped as the service's log (`type`, `seq` from 1 without gaps, `run_id`, `ts`):
`agent_resolved`, then the loop's (`output_text_delta`, `tool_call_delta`, `tool_call_result`,
`approval_required`, `custom`, `suggestions`, `usage`), then `done`; a failed run sends `error`
before `done`.

Approvals: a call to an `always_require` tool waits for `approve(call)` (True or False, sync or
async). Without an approver the call is rejected, and the model is told why.

The agent's MCP servers (`mcp_servers`) are opened for the run and closed after it, as a worker
does for each attempt; their tools join the agent's Python tools.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import httpx

from runrelay.agent._driver import AgentRun, Outcome, RunHooks, RunRequest, elapsed_ms
from runrelay.agent._state import ToolCallRecord
from runrelay.agent.config import AgentSpec, ProviderConfig
from runrelay.agent.events import EventType, make_event
from runrelay.agent.messages import ApprovalRequest, ChatMessage, Decision
from runrelay.agent.tools import Tool
from runrelay.errors import RunTimeoutError, ValidationError
from runrelay.types import ModelParams, Usage

__all__ = ["Approve", "EmbeddedRun", "OnEvent", "RunResult", "ToolUse"]

# Called with each event of a run; may be a plain function or a coroutine function.
OnEvent = Callable[[dict[str, Any]], Awaitable[None] | None]
# Decides a call awaiting approval, given `{"tool_call_id", "name", "arguments"}` (a copy).
Approve = Callable[[ApprovalRequest], Awaitable[bool] | bool]

NO_APPROVER = "nobody can approve it here: the embedded run was given no approve= callback"


@dataclass(frozen=True)
class ToolUse:
    """One tool call of a run: what the model asked for and what it got back. `approved` is
    the decision for a tool that needs approval (None for the others)."""

    name: str
    arguments: Any
    result: Any = None
    error: str | None = None
    tool_call_id: str = ""
    approved: bool | None = None


@dataclass(frozen=True)
class RunResult:
    """What `Runrelay.run` returns. `messages` are the chat messages this run added (the user
    message, then assistant and tool messages), without the system prompt and the history."""

    content: str
    tools_used: list[ToolUse]
    messages: list[ChatMessage]
    usage: Usage
    run_id: str
    agent_id: str
    model: str
    turns: int
    session_key: str | None = None
    suggestions: list[dict[str, Any]] = field(default_factory=list)


class _Events:
    """Numbers a run's events and hands them to `on_event` one at a time (parallel tool calls
    emit concurrently)."""

    def __init__(self, run_id: str, on_event: OnEvent | None) -> None:
        self.run_id = run_id
        self._on_event = on_event
        self._seq = 0
        self._lock = asyncio.Lock()

    async def emit(self, type: EventType, data: dict[str, Any]) -> None:
        if self._on_event is None:
            return
        async with self._lock:
            self._seq += 1
            outcome = self._on_event(make_event(self.run_id, self._seq, type, data))
            if inspect.isawaitable(outcome):
                await outcome


@dataclass
class EmbeddedRun:
    """Everything one run needs; `execute` runs it through the agent-run driver."""

    agent: AgentSpec
    provider: ProviderConfig
    http: httpx.AsyncClient
    tools: Sequence[Tool]
    middleware: Sequence[object]
    model: str
    params: ModelParams
    session_key: str | None = None
    on_event: OnEvent | None = None
    approve: Approve | None = None
    run_id: str = field(default_factory=lambda: f"run_{secrets.token_hex(12)}")

    def __post_init__(self) -> None:
        self.events = _Events(self.run_id, self.on_event)

    async def execute(self, message: str, history: list[ChatMessage]) -> RunResult:
        agent = self.agent
        request = RunRequest(
            run_id=self.run_id,
            message=message,
            timeout_s=agent.timeout_s,
            timeout_name=f"{agent.name}'s timeout_s",
            model_id=self.model,
            params=self.params,
            thread_id=self.session_key,
            history=history,
            resolved={"session_key": self.session_key},
        )
        run = AgentRun(
            agent, self.provider, self.http, tools=self.tools, middleware=self.middleware
        )
        started = time.monotonic()
        outcome = await run.drive(request, RunHooks(emit=self.events.emit, decide=self._decide))
        failed = outcome.exception
        if failed is None:
            await self._end_log(outcome, started)
            return self._result(outcome)
        # What failed the run may be on_event itself: the log still ends if it can, and the
        # caller gets the run's own failure.
        with contextlib.suppress(Exception):
            await self._end_log(outcome, started)
        if outcome.error is not None and outcome.error["code"] == "run_timeout":
            raise RunTimeoutError(outcome.error["message"]) from failed
        raise failed

    async def _end_log(self, outcome: Outcome, started: float) -> None:
        if outcome.error is not None:
            await self.events.emit("error", outcome.error)
        await self.events.emit("done", outcome.done_data(duration_ms=elapsed_ms(started)))

    async def _decide(self, call: ApprovalRequest) -> Decision:
        if self.approve is None:
            return {"approved": False, "reason": NO_APPROVER}
        decision = self.approve(call.copy())
        if inspect.isawaitable(decision):
            decision = await decision
        if not isinstance(decision, bool):
            raise ValidationError(
                f"approve() must return True or False for {call['name']} "
                f"(got {type(decision).__name__})"
            )
        return {"approved": decision, "reason": None}

    def _result(self, outcome: Outcome) -> RunResult:
        result = outcome.result
        assert result is not None  # a run that did not fail has its loop's result
        return RunResult(
            content=result.output,
            tools_used=[_tool_use(record) for record in result.tool_calls],
            messages=cast(list[ChatMessage], outcome.thread_messages),
            usage=result.usage,
            run_id=self.run_id,
            agent_id=self.agent.id,
            model=self.model,
            turns=result.turns,
            session_key=self.session_key,
            suggestions=result.suggestions,
        )


def _tool_use(record: ToolCallRecord) -> ToolUse:
    return ToolUse(
        name=record.name,
        arguments=record.arguments,
        result=record.result,
        error=record.error,
        tool_call_id=record.tool_call_id,
        approved=record.approved,
    )
