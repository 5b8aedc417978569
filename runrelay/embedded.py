"""The agent loop embedded in your own process, as the Facio SDK shapes it: no Redis, Celery,
database or server.

    bot = Runrelay.from_config("agents.yaml", workspace="./workspace")
    result = await bot.run("Assess ACME Corp", session_key="sdk:acme")
    result.content, result.tools_used, result.messages, result.usage

The config file is the service's (same schema, same validation, `${VAR}` from the environment);
the loop, providers and tools are the worker's. Provider checks: a hosted provider without an
api_key fails in `from_config` (no network needed); a local provider whose base URL does not
answer fails the first `run`, before anything reaches the model (`runrelay.preflight`).

A session key names a conversation: its history (`runrelay.sessions`) goes in front of the
message, and the run's messages are added to it when the run completes; a failed run adds
nothing. Runs on one key take turns; runs on different keys go concurrently.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from pydantic import ValidationError as PydanticValidationError

from runrelay.agents import (
    AgentNotFound,
    AgentsConfig,
    AgentSpec,
    ProviderConfig,
    Registry,
    parse_config,
    read_config,
)
from runrelay.errors import ConfigError, RunrelayError, RunTimeoutError, ValidationError
from runrelay.events import EventType, make_event
from runrelay.loop import AgentLoop, LoopResult, LoopSettings, ToolCallRecord
from runrelay.params import ModelParams, validate_model_params
from runrelay.preflight import check_provider, probe
from runrelay.providers import build_provider
from runrelay.providers.base import ProviderError
from runrelay.sessions import DEFAULT_MAX_HISTORY_MESSAGES, SessionStore
from runrelay.tools import Tool, current_run_id, import_tool
from runrelay.types import Usage

__all__ = ["OnEvent", "RunResult", "Runrelay", "ToolUse"]

# Called with each event of a run, shaped as the service's (`type`, `seq`, `run_id`, `ts`, ...).
OnEvent = Callable[[dict[str, Any]], Awaitable[None] | None]


@dataclass(frozen=True)
class ToolUse:
    """One tool call of a run: what the model asked for and what it got back."""

    name: str
    arguments: Any
    result: Any = None
    error: str | None = None
    tool_call_id: str = ""


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


class _RunEvents:
    """Numbers a run's events as the service's log does and hands them to `on_event`, one at a
    time (parallel tool calls emit concurrently)."""

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


class Runrelay:
    """One agent of an agents config, run in this process. Use `from_config`; close it with
    `await bot.aclose()` or `async with`."""

    def __init__(
        self,
        agent: AgentSpec,
        provider: ProviderConfig,
        *,
        workspace: str | os.PathLike[str],
        tools: list[Tool] | None = None,
        config_path: Path | None = None,
        max_history_messages: int = DEFAULT_MAX_HISTORY_MESSAGES,
    ) -> None:
        """Low level: `from_config` builds these from a file. `tools` default to the agent's."""
        self._source = config_path or Path("<config>")
        check_provider(agent.provider, provider, None, self._source)
        self.agent = agent
        self.provider = provider
        self.workspace = Path(workspace)
        self.tools = tools if tools is not None else _import_tools(agent, self._source, "")
        self._sessions = SessionStore(
            self.workspace / "sessions", max_messages=max_history_messages
        )
        self._http: httpx.AsyncClient | None = None
        self._closed = False
        self._reachable = False

    @classmethod
    def from_config(
        cls,
        config_path: str | os.PathLike[str],
        workspace: str | os.PathLike[str],
        *,
        agent: str | None = None,
        environ: Mapping[str, str] | None = None,
        max_history_messages: int = DEFAULT_MAX_HISTORY_MESSAGES,
    ) -> Runrelay:
        """Load the agents config (`${VAR}` from `environ`, else `os.environ`), pick `agent` (a
        name, id or shortcut; optional when the file defines one agent) and check its provider.

        Raises `ConfigError` (the file and field), `MissingCredentialsError` for a hosted
        provider without an api_key.
        """
        path = Path(config_path)
        raw = read_config(path)
        config = parse_config(raw, os.environ if environ is None else environ, path)
        spec = _pick_agent(Registry(config), agent, path)
        provider = config.providers[spec.provider]
        check_provider(spec.provider, provider, raw, path)
        return cls(
            spec,
            provider,
            workspace=workspace,
            tools=_import_tools(spec, path, _field_of(config, spec)),
            config_path=path,
            max_history_messages=max_history_messages,
        )

    async def run(
        self,
        message: str,
        *,
        session_key: str | None = None,
        hooks: list[Any] | None = None,
        model_id: str | None = None,
        model_params: ModelParams | Mapping[str, Any] | None = None,
        on_event: OnEvent | None = None,
    ) -> RunResult:
        """Run the agent on `message`, continuing session `session_key` if given (without one,
        the run has no history and leaves none).

        Raises `ValidationError` for bad arguments, `ProviderUnreachableError` when a local
        provider does not answer, `ProviderError` when a model call fails, `RunTimeoutError`
        past the agent's `timeout_s`, `SessionError` for an unreadable history file.
        """
        if not isinstance(message, str) or not message.strip():
            raise ValidationError("message must be a non-empty string", param="message")
        if model_id is not None and not model_id.strip():
            raise ValidationError("model_id cannot be empty", param="model_id")
        params = _model_params(model_params)
        if hooks:
            raise ValidationError("hooks are not supported yet", param="hooks")
        if session_key is not None:
            self._sessions.path(session_key)  # validates the key before anything else
        http = self._client()
        if not self._reachable:
            await probe(self.agent.provider, self.provider, http, self._source)
            self._reachable = True
        run = _Run(self, http, model_id or self.agent.model, params, on_event)
        if session_key is None:
            return await run.execute(message, [], session_key)
        async with self._sessions.lock(session_key):
            history = await self._sessions.load(session_key)
            result = await run.execute(message, history, session_key)
            await self._sessions.save(session_key, [*history, *result.messages])
            return result

    def _client(self) -> httpx.AsyncClient:
        if self._closed:
            raise RunrelayError("this Runrelay is closed; make a new one with from_config")
        if self._http is None:
            self._http = httpx.AsyncClient()
        return self._http

    async def aclose(self) -> None:
        """Close the HTTP connections to the model provider. Idempotent."""
        self._closed = True
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def __aenter__(self) -> Runrelay:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return (
            f"Runrelay(agent={self.agent.id!r}, provider={self.agent.provider!r}, "
            f"workspace={str(self.workspace)!r})"
        )


class _Run:
    """One run: the loop with this run's settings, its events, and the outcome."""

    def __init__(
        self,
        bot: Runrelay,
        http: httpx.AsyncClient,
        model: str,
        params: ModelParams,
        on_event: OnEvent | None,
    ) -> None:
        self.bot = bot
        self.model = model
        self.events = _RunEvents(f"run_{secrets.token_hex(12)}", on_event)
        agent = bot.agent
        settings = LoopSettings(
            model=model,
            max_turns=agent.max_turns,
            temperature=agent.temperature if params.temperature is None else params.temperature,
            max_tokens=agent.max_tokens if params.max_tokens is None else params.max_tokens,
            seed=params.seed,
        )
        provider = build_provider(agent, bot.provider, http)
        self.loop = AgentLoop(provider, settings, bot.tools, emit=self.events.emit)

    async def execute(
        self, message: str, history: list[dict[str, Any]], session_key: str | None
    ) -> RunResult:
        agent, run_id = self.bot.agent, self.events.run_id
        await self.events.emit(
            "agent_resolved",
            {
                "agent_id": agent.id,
                "agent_name": agent.name,
                "session_key": session_key,
                "model": self.model,
            },
        )
        messages = [
            {"role": "system", "content": agent.instructions},
            *history,
            {"role": "user", "content": message},
        ]
        started = time.monotonic()
        deadline = asyncio.timeout(agent.timeout_s)
        token = current_run_id.set(run_id)
        try:
            async with deadline:
                result = await self.loop.run(messages)
        except ProviderError as exc:
            await self._failed(exc.code, exc.message, started)
            raise
        except TimeoutError as exc:
            if not deadline.expired():
                raise
            error = RunTimeoutError(
                f"the run took longer than {agent.name}'s timeout_s, {agent.timeout_s:g} s"
            )
            await self._failed("run_timeout", str(error), started)
            raise error from exc
        finally:
            current_run_id.reset(token)
        await self._done("completed", result, None, started)
        return RunResult(
            content=result.output,
            tools_used=[_tool_use(record) for record in result.tool_calls],
            messages=result.messages[1 + len(history) :],
            usage=result.usage,
            run_id=run_id,
            agent_id=agent.id,
            model=self.model,
            turns=result.turns,
            session_key=session_key,
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


def _tool_use(record: ToolCallRecord) -> ToolUse:
    return ToolUse(
        name=record.name,
        arguments=record.arguments,
        result=record.result,
        error=record.error,
        tool_call_id=record.tool_call_id,
    )


def _model_params(given: ModelParams | Mapping[str, Any] | None) -> ModelParams:
    if given is None:
        return ModelParams()
    if isinstance(given, ModelParams):
        params = given
    else:
        try:
            params = ModelParams.model_validate(dict(given))
        except PydanticValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise ValidationError(
                f"model_params.{where}: {first['msg']}", param=f"model_params.{where}"
            ) from exc
    validate_model_params(params)
    return params


def _pick_agent(registry: Registry, ref: str | None, path: Path) -> AgentSpec:
    names = ", ".join(agent.name for agent in registry.agents)
    if ref is not None:
        try:
            return registry.resolve(ref)
        except AgentNotFound as exc:
            raise ConfigError(f"{path}: {exc} (its agents: {names})") from exc
    if len(registry.agents) == 1:
        return registry.agents[0]
    raise ConfigError(
        f"{path} defines {len(registry.agents)} agents; choose one with "
        f"Runrelay.from_config(..., agent=NAME): {names}"
    )


def _field_of(config: AgentsConfig, spec: AgentSpec) -> str:
    """Where an agent sits in the file, as validation errors name fields: `modules.0.agents.1`."""
    for m, module in enumerate(config.modules):
        for a, agent in enumerate(module.agents):
            if agent is spec:
                return f"modules.{m}.agents.{a}"
    return spec.name


def _import_tools(agent: AgentSpec, path: Path, field: str) -> list[Tool]:
    tools = []
    for index, ref in enumerate(agent.tools):
        try:
            tools.append(import_tool(ref))
        except (ImportError, AttributeError, ValueError, TypeError) as exc:
            where = f"{field}.tools.{index}" if field else f"agent {agent.name!r} tools.{index}"
            raise ConfigError(
                f"{path}: {where}: cannot load tool {ref!r}: {type(exc).__name__}: {exc}"
            ) from exc
    return tools
