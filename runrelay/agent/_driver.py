"""The one agent-run driver: what the worker and the embedded runtime both call to run an agent.

`AgentRun.drive` builds the loop (provider, Python tools, the MCP servers' tools opened for this
attempt, middleware, suggestions), the opening messages (system prompt, history, user message),
runs it under the run's deadline, and maps every failure to an error code in one place
(`failure`). It returns an `Outcome`, whose `done_data` is the one shape of the `done` event.

The runtimes add only what is theirs, through `RunHooks`: the worker its event log, checkpoints,
token metering and lease (its lease errors pass through, `propagate`); the embedded runtime its
`on_event` and approver (`decide`). Without `decide`, a call that needs approval ends the attempt
with `requires_action` (the worker parks the run); with it, the run waits for the decisions —
time the deadline does not count — and goes on.

Failure codes: a `ProviderError` its own code; `RunBlocked` `blocked`; `McpServerError`
`mcp_unavailable`; `McpToolConflict` `mcp_tool_conflict`; the deadline `run_timeout`; anything
else `internal_error`. Cancellation (`asyncio.CancelledError`) is not a failure: it passes
through to the runtime that asked for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import httpx

from runrelay.agent._history import new_messages
from runrelay.agent._loop import AgentLoop, Checkpoint, Emit, LoopResult, LoopSettings
from runrelay.agent._mcp import McpServerError, McpToolConflict, open_mcp_tools
from runrelay.agent._state import LoopState
from runrelay.agent.config import AgentSpec, ProviderConfig
from runrelay.agent.messages import ApprovalRequest, ChatMessage, Decision
from runrelay.agent.middleware import RunBlocked, import_middleware
from runrelay.agent.providers import build_provider
from runrelay.agent.providers.base import ModelProvider, ProviderError
from runrelay.agent.tools import Tool, current_run_id, import_tool
from runrelay.types import ModelParams, RunStatus

__all__ = [
    "CANCELLED_ERROR",
    "AgentRun",
    "Decide",
    "Outcome",
    "RunHooks",
    "RunRequest",
    "failure",
]

log = logging.getLogger(__name__)

CANCELLED_ERROR = {"code": "cancelled", "message": "the run was cancelled on request"}

# Decides one call awaiting approval.
Decide = Callable[[ApprovalRequest], Awaitable[Decision]]


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
    # What failed the run, for a runtime that raises it to its caller (the embedded one).
    exception: Exception | None = field(default=None, repr=False, compare=False)

    @classmethod
    def failed(cls, code: str, message: str, exception: Exception | None = None) -> Outcome:
        return cls(RunStatus.FAILED, error={"code": code, "message": message}, exception=exception)

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


@dataclass
class RunRequest:
    """What one run asks for. `timeout_s` is the run's whole deadline (None: none), `time_left_s`
    what is left of it for this attempt (a resumed run has used some); `timeout_name` says whose
    deadline it is in the `run_timeout` message. `resolved` adds fields to `agent_resolved`."""

    run_id: str
    message: str
    timeout_s: float | None
    timeout_name: str
    model_id: str | None = None
    params: ModelParams = field(default_factory=ModelParams)
    thread_id: str | None = None
    history: list[ChatMessage] = field(default_factory=list)
    time_left_s: float | None = None
    resolved: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunHooks:
    """The runtime's collaborators. `wrap_provider` wraps the model provider (the worker's token
    metering); `after_interrupt` runs when the deadline cut the loop short, possibly mid-event
    (the worker re-reads its log's last seq); exceptions in `propagate` are not failures of the
    run but the runtime's own signals (the worker's lost lease)."""

    emit: Emit
    checkpoint: Checkpoint | None = None
    decide: Decide | None = None
    wrap_provider: Callable[[ModelProvider], ModelProvider] | None = None
    after_interrupt: Callable[[], Awaitable[None]] | None = None
    propagate: tuple[type[Exception], ...] = ()


class AgentRun:
    """One agent and how to reach its model. `tools` and `middleware` default to the agent's own
    (imported from its config's paths, for each attempt)."""

    def __init__(
        self,
        agent: AgentSpec,
        provider: ProviderConfig,
        http: httpx.AsyncClient,
        *,
        tools: Sequence[Tool] | None = None,
        middleware: Sequence[object] | None = None,
    ) -> None:
        self.agent = agent
        self.provider = provider
        self.http = http
        self.tools = tools
        self.middleware = middleware

    def model(self, request: RunRequest) -> str:
        return request.model_id or self.agent.model

    async def drive(
        self, request: RunRequest, hooks: RunHooks, *, resume: LoopState | None = None
    ) -> Outcome:
        """Run the agent for `request` (or continue from the checkpointed `resume`)."""
        time_left = request.timeout_s if request.time_left_s is None else request.time_left_s
        deadline = asyncio.timeout(None if time_left is None else max(time_left, 0))
        token = current_run_id.set(request.run_id)
        try:
            state = resume if resume is not None else await self._opening(request, hooks)
            async with deadline:
                result = await self._run(request, hooks, state, deadline)
        except hooks.propagate:
            raise
        except Exception as exc:
            if isinstance(exc, TimeoutError) and hooks.after_interrupt is not None:
                await hooks.after_interrupt()
            code, message = failure(exc, request, expired=deadline.expired())
            if code == "internal_error":  # a bug or a broken tool import: visible in the logs
                log.exception("run %s failed", request.run_id)
            return Outcome.failed(code, message, exc)
        finally:
            current_run_id.reset(token)
        # completed, or requires_action (paused for approval decisions)
        # Leaving the agent core: a thread stores the messages as the JSON objects they are.
        messages = cast(list[dict[str, Any]], new_messages(state.messages, state.history_len))
        return Outcome(RunStatus(result.status), result.output, result, thread_messages=messages)

    async def _opening(self, request: RunRequest, hooks: RunHooks) -> LoopState:
        """A run's first attempt: announce the agent, checkpoint the opening messages."""
        agent = self.agent
        await hooks.emit(
            "agent_resolved",
            {
                "agent_id": agent.id,
                "agent_name": agent.name,
                **request.resolved,
                "model": self.model(request),
            },
        )
        state = LoopState(
            messages=[
                {"role": "system", "content": agent.instructions},
                *request.history,
                {"role": "user", "content": request.message},
            ],
            history_len=len(request.history),
        )
        if hooks.checkpoint is not None:
            await hooks.checkpoint(state, None)
        return state

    async def _run(
        self, request: RunRequest, hooks: RunHooks, state: LoopState, deadline: asyncio.Timeout
    ) -> LoopResult:
        """The loop, with the tools of the agent's MCP servers open for this attempt; with a
        `decide`, again after each round of decisions (a fresh loop, as a resumed worker builds:
        it counts tool invocations from the state)."""
        provider = build_provider(self.agent, self.provider, self.http)
        if hooks.wrap_provider is not None:
            provider = hooks.wrap_provider(provider)
        tools = list(self.tools) if self.tools is not None else _imported(self.agent.tools)
        middleware = (
            list(self.middleware)
            if self.middleware is not None
            else [import_middleware(path) for path in self.agent.middleware]
        )
        reserved = [tool.name for tool in tools]
        async with open_mcp_tools(self.agent.mcp_servers, reserved=reserved) as mcp_tools:
            tools += mcp_tools

            def loop() -> AgentLoop:
                return self._loop(request, hooks, provider, tools, middleware)

            result = await loop().run(state.messages, resume=state)
            while result.required_action and hooks.decide is not None:
                for call in result.required_action:
                    decision = await _paused(deadline, hooks.decide(call))
                    state.approvals[call["tool_call_id"]] = decision
                result = await loop().run(state.messages, resume=state)
        return result

    def _loop(
        self,
        request: RunRequest,
        hooks: RunHooks,
        provider: ModelProvider,
        tools: list[Tool],
        middleware: list[object],
    ) -> AgentLoop:
        agent, params = self.agent, request.params
        settings = LoopSettings(
            model=self.model(request),
            max_turns=agent.max_turns,
            temperature=agent.temperature if params.temperature is None else params.temperature,
            max_tokens=agent.max_tokens if params.max_tokens is None else params.max_tokens,
            seed=params.seed,
        )
        return AgentLoop(
            provider,
            settings,
            tools,
            emit=hooks.emit,
            checkpoint=hooks.checkpoint,
            middleware=middleware,
            agent_name=agent.name,
            run_id=request.run_id,
            thread_id=request.thread_id,
            suggestions=[s.model_dump() for s in agent.suggestions],
        )


def failure(exc: Exception, request: RunRequest, *, expired: bool) -> tuple[str, str]:
    """The error code and message of an exception that fails a run; `expired`: the run's
    deadline has passed (a `TimeoutError` from elsewhere is an internal error)."""
    match exc:
        case ProviderError():
            return exc.code, exc.message
        case RunBlocked():
            return "blocked", str(exc) or "a middleware stopped the run"
        case McpServerError():
            return "mcp_unavailable", str(exc)
        case McpToolConflict():
            return "mcp_tool_conflict", str(exc)
        case TimeoutError() if expired:
            return (
                "run_timeout",
                f"the run took longer than {request.timeout_name}, {request.timeout_s or 0:g} s",
            )
    return "internal_error", f"{type(exc).__name__}: {exc}"


async def _paused(deadline: asyncio.Timeout, waiting: Awaitable[Decision]) -> Decision:
    """Await a person's decision with the deadline stopped: waiting is not run time, so the
    deadline moves on by as long as it took."""
    when = deadline.when()
    clock = asyncio.get_running_loop().time
    asked = clock()
    deadline.reschedule(None)
    try:
        return await waiting
    finally:
        if when is not None:
            deadline.reschedule(when + clock() - asked)


def _imported(paths: Sequence[str]) -> list[Tool]:
    return [import_tool(path) for path in paths]


def elapsed_ms(started: float) -> int:
    """Milliseconds since `started` (a `time.monotonic()` reading), for `done`'s duration."""
    return int((time.monotonic() - started) * 1000)
