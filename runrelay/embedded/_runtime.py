"""The agent loop embedded in your own process, as the Facio SDK shapes it: no Redis, Celery,
database or server.

    bot = Runrelay.from_config("agents.yaml", workspace="./workspace")
    result = await bot.run("Assess ACME Corp", session_key="sdk:acme", hooks=[audit])
    result.content, result.tools_used, result.messages, result.usage

The config file is the service's (same schema, same validation, `${VAR}` from the environment);
the loop, providers, tools, MCP servers and middleware are the worker's. Provider checks: a
hosted provider without an api_key fails in `from_config` (no network needed); a local provider
whose base URL does not answer fails the first `run`, before anything reaches the model
(`runrelay.embedded._preflight`).

A session key names a conversation: its history (`runrelay.embedded._sessions`) goes in front of the
message, and the run's messages are added to it when the run completes; a failed run adds
nothing. Runs on one key take turns; runs on different keys go concurrently. One run is
`runrelay.embedded._run`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from pydantic import ValidationError as PydanticValidationError

from runrelay.agent.config import (
    AgentNotFound,
    AgentsConfig,
    AgentSpec,
    ProviderConfig,
    Registry,
    parse_config,
    read_config,
)
from runrelay.agent.middleware import import_middleware, kind_of
from runrelay.agent.tools import Tool, import_tool
from runrelay.client._params import validate_model_params
from runrelay.embedded._preflight import check_provider, probe
from runrelay.embedded._run import Approve, EmbeddedRun, OnEvent, RunResult, ToolUse
from runrelay.embedded._sessions import DEFAULT_MAX_HISTORY_MESSAGES, SessionStore
from runrelay.errors import ConfigError, RunrelayError, ValidationError
from runrelay.types import ModelParams

__all__ = ["Approve", "OnEvent", "RunResult", "Runrelay", "ToolUse"]


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
        middleware: list[object] | None = None,
        config_path: Path | None = None,
        max_history_messages: int = DEFAULT_MAX_HISTORY_MESSAGES,
    ) -> None:
        """Low level: `from_config` builds these from a file. `tools` and `middleware` default
        to the agent's own (its import paths)."""
        self._source = config_path or Path("<config>")
        check_provider(agent.provider, provider, None, self._source)
        self.agent = agent
        self.provider = provider
        self.workspace = Path(workspace)
        self.tools = tools if tools is not None else _load(agent, "tools", self._source, "")
        self.middleware = (
            middleware if middleware is not None else _load(agent, "middleware", self._source, "")
        )
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
        name, id or shortcut; optional when the file defines one agent), check its provider and
        load its tools and middleware.

        Raises `ConfigError` naming the file and field; `MissingCredentialsError` (a
        `ConfigError`) for a hosted provider without an api_key.
        """
        path = Path(config_path)
        raw = read_config(path)
        config = parse_config(raw, os.environ if environ is None else environ, path)
        spec = _pick_agent(Registry(config), agent, path)
        provider = config.providers[spec.provider]
        check_provider(spec.provider, provider, raw, path)
        where = _field_of(config, spec)
        return cls(
            spec,
            provider,
            workspace=workspace,
            tools=_load(spec, "tools", path, where),
            middleware=_load(spec, "middleware", path, where),
            config_path=path,
            max_history_messages=max_history_messages,
        )

    async def run(
        self,
        message: str,
        *,
        session_key: str | None = None,
        hooks: Sequence[object] | None = None,
        model_id: str | None = None,
        model_params: ModelParams | Mapping[str, Any] | None = None,
        on_event: OnEvent | None = None,
        approve: Approve | None = None,
    ) -> RunResult:
        """Run the agent on `message`, continuing session `session_key` if given (without one,
        the run has no history and leaves none).

        `hooks`: agent, chat or function middleware (`runrelay.agent.middleware`), run inside the
        agent's own. `on_event(event)`: each event as the service would log it. `approve(call)`:
        decides calls to tools that need approval (without it they are rejected).

        Raises `ValidationError` for bad arguments, `ProviderUnreachableError` when a local
        provider does not answer, `ProviderError` when a model call fails, `RunTimeoutError`
        past the agent's `timeout_s`, `SessionError` for an unreadable history file,
        `RunBlocked` when a middleware stops the run, and `McpServerError` / `McpToolConflict`
        (`runrelay.agent._mcp`) when the agent's MCP servers cannot be used.
        """
        if not isinstance(message, str) or not message.strip():
            raise ValidationError("message must be a non-empty string", param="message")
        if model_id is not None and not model_id.strip():
            raise ValidationError("model_id cannot be empty", param="model_id")
        params = _model_params(model_params)
        middleware = [*self.middleware, *_checked_hooks(hooks)]
        if session_key is not None:
            self._sessions.path(session_key)  # validates the key before anything else
        http = self._client()
        if not self._reachable:
            await probe(self.agent.provider, self.provider, http, self._source)
            self._reachable = True
        run = EmbeddedRun(
            self.agent,
            self.provider,
            http,
            self.tools,
            middleware,
            model=model_id or self.agent.model,
            params=params,
            session_key=session_key,
            on_event=on_event,
            approve=approve,
        )
        if session_key is None:
            return await run.execute(message, [])
        async with self._sessions.lock(session_key):
            history = await self._sessions.load(session_key)
            result = await run.execute(message, history)
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


def _checked_hooks(hooks: Sequence[object] | None) -> list[object]:
    if hooks is None:
        return []
    if isinstance(hooks, str) or not isinstance(hooks, Sequence):
        raise ValidationError("hooks must be a list of middleware", param="hooks")
    for index, hook in enumerate(hooks):
        try:
            kind_of(hook)
        except TypeError as exc:
            raise ValidationError(f"hooks[{index}]: {exc}", param=f"hooks.{index}") from exc
    return list(hooks)


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


def _load(agent: AgentSpec, kind: str, path: Path, field: str) -> list[Any]:
    """The agent's `tools` or `middleware`, imported from their 'module:attribute' paths."""
    load = import_tool if kind == "tools" else import_middleware
    loaded = []
    for index, ref in enumerate(getattr(agent, kind)):
        try:
            loaded.append(load(ref))
        except Exception as exc:  # whatever importing the user's module raised (SyntaxError...)
            where = f"{field}.{kind}.{index}" if field else f"agent {agent.name!r} {kind}.{index}"
            raise ConfigError(
                f"{path}: {where}: cannot load {ref!r}: {type(exc).__name__}: {exc}"
            ) from exc
    return loaded
