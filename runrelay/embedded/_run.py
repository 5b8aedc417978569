"""One run of the embedded loop: the shared `AgentLoop` with this run's model settings, hooks and
events, approval decisions asked of the host, and the outcome as a `RunResult`.

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
from typing import Any

from runrelay.agent._loop import AgentLoop, LoopResult, LoopSettings, LoopState, ToolCallRecord
from runrelay.agent._mcp import McpServerError, McpToolConflict, open_mcp_tools
from runrelay.agent.config import AgentSpec
from runrelay.agent.events import EventType, make_event
from runrelay.agent.middleware import RunBlocked
from runrelay.agent.providers.base import ModelProvider, ProviderError
from runrelay.agent.tools import Tool, current_run_id
from runrelay.errors import RunTimeoutError, ValidationError
from runrelay.types import ModelParams, Usage

__all__ = ["Approve", "EmbeddedRun", "OnEvent", "RunResult", "ToolUse"]

# Called with each event of a run; may be a plain function or a coroutine function.
OnEvent = Callable[[dict[str, Any]], Awaitable[None] | None]
# Decides a call awaiting approval, given `{"tool_call_id", "name", "arguments"}`.
Approve = Callable[[dict[str, Any]], Awaitable[bool] | bool]

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
    messages: list[dict[str, Any]]
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
    """Everything one run needs; `execute` runs it."""

    agent: AgentSpec
    provider: ModelProvider
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
        self._tools = list(self.tools)  # with the MCP servers' once they are open
        self._deadline: asyncio.Timeout | None = None

    async def execute(self, message: str, history: list[dict[str, Any]]) -> RunResult:
        agent = self.agent
        await self.events.emit(
            "agent_resolved",
            {
                "agent_id": agent.id,
                "agent_name": agent.name,
                "session_key": self.session_key,
                "model": self.model,
            },
        )
        opening = {"role": "user", "content": message}
        state = LoopState(
            messages=[{"role": "system", "content": agent.instructions}, *history, opening],
            history_len=len(history),
        )
        started = time.monotonic()
        deadline = self._deadline = asyncio.timeout(agent.timeout_s)
        token = current_run_id.set(self.run_id)
        reserved = [tool.name for tool in self.tools]
        try:
            async with deadline, open_mcp_tools(agent.mcp_servers, reserved=reserved) as mcp:
                self._tools = [*self.tools, *mcp]
                result = await self._until_decided(state)
        except (ProviderError, RunBlocked, McpServerError, McpToolConflict) as exc:
            await self._failed(*_failure(exc), started)
            raise
        except TimeoutError as exc:
            if not deadline.expired():
                await self._failed("internal_error", f"TimeoutError: {exc}", started)
                raise
            error = RunTimeoutError(
                f"the run took longer than {agent.name}'s timeout_s, {agent.timeout_s:g} s"
            )
            await self._failed("run_timeout", str(error), started)
            raise error from exc
        except Exception as exc:  # an approver, a hook or on_event raised: still end the log
            with contextlib.suppress(Exception):  # (on_event itself may be what raised)
                await self._failed("internal_error", f"{type(exc).__name__}: {exc}", started)
            raise
        finally:
            current_run_id.reset(token)
        await self._done("completed", result, None, started)
        return self._result(result, opening, len(history))

    def _loop(self) -> AgentLoop:
        """A loop for one leg of the run (a fresh one after each round of decisions, as the
        worker builds one per resume: it counts tool invocations from the state)."""
        settings = LoopSettings(
            model=self.model,
            max_turns=self.agent.max_turns,
            temperature=_given(self.params.temperature, self.agent.temperature),
            max_tokens=_given(self.params.max_tokens, self.agent.max_tokens),
            seed=self.params.seed,
        )
        return AgentLoop(
            self.provider,
            settings,
            self._tools,
            emit=self.events.emit,
            middleware=self.middleware,
            agent_name=self.agent.name,
            run_id=self.run_id,
            thread_id=self.session_key,
            suggestions=[s.model_dump() for s in self.agent.suggestions],
        )

    async def _until_decided(self, state: LoopState) -> LoopResult:
        result = await self._loop().run(state.messages, resume=state)
        while result.required_action:
            for call in result.required_action:
                state.approvals[call["tool_call_id"]] = await self._decide(call)
            result = await self._loop().run(state.messages, resume=state)
        return result

    async def _decide(self, call: dict[str, Any]) -> dict[str, Any]:
        if self.approve is None:
            return {"approved": False, "reason": NO_APPROVER}
        # As in the service, time spent waiting for a person is not run time: the deadline
        # stops while the approver decides and moves on by that long.
        deadline = self._deadline
        when = deadline.when() if deadline is not None else None
        asked = asyncio.get_running_loop().time()
        if deadline is not None:
            deadline.reschedule(None)
        try:
            decision = self.approve(dict(call))
            if inspect.isawaitable(decision):
                decision = await decision
        finally:
            if deadline is not None and when is not None:
                deadline.reschedule(when + asyncio.get_running_loop().time() - asked)
        if not isinstance(decision, bool):
            raise ValidationError(
                f"approve() must return True or False for {call['name']} "
                f"(got {type(decision).__name__})"
            )
        return {"approved": decision, "reason": None}

    def _result(self, result: LoopResult, opening: dict[str, Any], history_len: int) -> RunResult:
        # This run's messages start at its user message (found by identity, in case an agent
        # middleware put something in front of it).
        start = next((i for i, m in enumerate(result.messages) if m is opening), 1 + history_len)
        return RunResult(
            content=result.output,
            tools_used=[_tool_use(record) for record in result.tool_calls],
            messages=result.messages[start:],
            usage=result.usage,
            run_id=self.run_id,
            agent_id=self.agent.id,
            model=self.model,
            turns=result.turns,
            session_key=self.session_key,
            suggestions=result.suggestions,
        )

    async def _failed(self, code: str, message: str, started: float) -> None:
        error = {"code": code, "message": message}
        await self.events.emit("error", error)
        await self._done("failed", None, error, started)

    async def _done(
        self, status: str, result: LoopResult | None, error: dict[str, str] | None, started: float
    ) -> None:
        await self.events.emit(
            "done",
            {
                "status": status,
                "output": result.output if result else "",
                "usage": result.usage.model_dump() if result else None,
                "error": error,
                "duration_ms": int((time.monotonic() - started) * 1000),
            },
        )


def _failure(exc: Exception) -> tuple[str, str]:
    """The `error` event's code and message for an exception that fails a run, as the worker
    reports them."""
    if isinstance(exc, ProviderError):
        return exc.code, exc.message
    if isinstance(exc, RunBlocked):
        return "blocked", str(exc) or "a middleware stopped the run"
    if isinstance(exc, McpServerError):
        return "mcp_unavailable", str(exc)
    return "mcp_tool_conflict", str(exc)


def _given(override: Any, default: Any) -> Any:
    return default if override is None else override


def _tool_use(record: ToolCallRecord) -> ToolUse:
    return ToolUse(
        name=record.name,
        arguments=record.arguments,
        result=record.result,
        error=record.error,
        tool_call_id=record.tool_call_id,
        approved=record.approved,
    )
