"""Agent definitions: the config file (modules → agents, providers) and the registry that resolves
a name, an id or a shortcut (`"bank credit-analyst"`) to an agent.

The same file serves the service and the embedded loop. `${VAR}` and `${VAR:-default}` in string
values are replaced from the environment mapping the caller passes in.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from runrelay.agent._history import HistoryPolicy
from runrelay.agent._mcp import McpServerSpec
from runrelay.agent.run_context import Suggestion
from runrelay.errors import ConfigError as ConfigError
from runrelay.errors import RunrelayError

TAG_PATTERN = re.compile(r"^[a-z0-9][a-z0-9\-_]*$")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
NAME_PATTERN = r"^[a-z0-9][a-z0-9\-_]*$"


class AgentNotFound(RunrelayError, LookupError):
    def __init__(self, ref: str, suggestions: list[str]) -> None:
        hint = f"; did you mean {', '.join(repr(s) for s in suggestions)}?" if suggestions else ""
        super().__init__(f"no agent named {ref!r}{hint}")
        self.ref = ref
        self.suggestions = suggestions


class ScriptedToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ScriptedTurn(BaseModel):
    """One scripted model turn: some text (cut into `chunks` deltas) or tool calls."""

    model_config = ConfigDict(extra="forbid")
    text: str | None = None
    chunks: int = Field(20, ge=1)
    tool_calls: list[ScriptedToolCall] = Field(default_factory=list)


class Script(BaseModel):
    model_config = ConfigDict(extra="forbid")
    delay_ms: float = Field(0, ge=0, description="pause before each chunk")
    turns: list[ScriptedTurn] = Field(default_factory=lambda: [ScriptedTurn(text="Done.")])


class ProviderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["scripted", "openai"]
    base_url: str | None = None
    api_key: str | None = None
    timeout_s: float = Field(
        60.0, gt=0, description="connect timeout, and longest silence mid-stream"
    )
    max_retries: int = Field(2, ge=0, le=10)


class AgentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    display_name: str | None = None
    description: str = ""
    instructions: str = "You are a helpful assistant."
    provider: str = "scripted"
    model: str = "scripted"
    tools: list[str] = Field(default_factory=list, description="'module:function' import paths")
    middleware: list[str] = Field(
        default_factory=list,
        description="'module:attribute' import paths of agent, chat or function middleware",
    )
    suggestions: list[Suggestion] = Field(
        default_factory=list, max_length=6, description="follow-ups offered after each answer"
    )
    mcp_servers: list[McpServerSpec] = Field(default_factory=list)
    capabilities: list[str] = Field(default_factory=list)
    task_template: str | None = None
    shortcuts: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list, description="e.g. production; one agent per tag")
    max_turns: int = Field(8, ge=1, le=100)
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, gt=0)
    timeout_s: float | None = Field(None, gt=0)
    history: HistoryPolicy = Field(
        default_factory=HistoryPolicy, description="how much of its thread a run starts with"
    )
    script: Script | None = None
    # Filled in by the registry.
    module_key: str = ""
    module_name: str = ""
    revision: int = 1

    @field_validator("mcp_servers")
    @classmethod
    def _unique_server_names(cls, servers: list[McpServerSpec]) -> list[McpServerSpec]:
        names = [server.name for server in servers]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"MCP server name {', '.join(map(repr, twice))} is used twice")
        return servers

    @property
    def id(self) -> str:
        return f"{self.module_key}.{self.name}"

    @property
    def title(self) -> str:
        return self.display_name or self.name.replace("-", " ").title()


class ModuleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str = Field(pattern=NAME_PATTERN)
    name: str
    description: str = ""
    agents: list[AgentSpec]


class AgentsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    providers: dict[str, ProviderConfig] = Field(
        default_factory=lambda: {"scripted": ProviderConfig(type="scripted")}
    )
    modules: list[ModuleSpec]

    @model_validator(mode="after")
    def _check_references(self) -> AgentsConfig:
        seen: set[str] = set()
        tags: dict[str, str] = {}
        for module in self.modules:
            for agent in module.agents:
                if agent.name in seen:
                    raise ValueError(f"agent name {agent.name!r} is used twice")
                seen.add(agent.name)
                if agent.provider not in self.providers:
                    raise ValueError(
                        f"agent {agent.name!r} uses provider {agent.provider!r}, which is not "
                        f"under `providers` (have: {', '.join(sorted(self.providers))})"
                    )
                agent.module_key, agent.module_name = module.key, module.name
                for tag in agent.tags:
                    if not TAG_PATTERN.match(tag):
                        raise ValueError(f"tag {tag!r} of {agent.name!r} must match {NAME_PATTERN}")
                    if tag in tags:
                        raise ValueError(f"tag {tag!r} is on both {tags[tag]!r} and {agent.name!r}")
                    tags[tag] = agent.name
            _check_shortcuts(module)
        return self


def _check_shortcuts(module: ModuleSpec) -> None:
    """Within a module, every name and shortcut leads to exactly one agent."""
    owners: dict[str, str] = {agent.name: agent.name for agent in module.agents}
    for agent in module.agents:
        for shortcut in agent.shortcuts:
            owner = owners.setdefault(shortcut, agent.name)
            if owner != agent.name:
                raise ValueError(
                    f"shortcut {module.key} {shortcut!r} of {agent.name!r} "
                    f"already leads to {owner!r}"
                )


def _interpolate(value: Any, environ: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        # As in the shell: the default applies when the variable is unset *or empty*.
        return _ENV_REF.sub(lambda m: environ.get(m.group(1)) or m.group(2) or "", value)
    if isinstance(value, list):
        return [_interpolate(item, environ) for item in value]
    if isinstance(value, dict):
        return {key: _interpolate(item, environ) for key, item in value.items()}
    return value


def referenced_variables(value: Any) -> list[str]:
    """The environment variables a raw (not yet interpolated) string value reads."""
    return [m.group(1) for m in _ENV_REF.finditer(value)] if isinstance(value, str) else []


def read_config(path: Path) -> Any:
    """The parsed file as written: `${VAR}` not yet replaced, nothing validated.

    YAML needs PyYAML (in the `server` and `embedded` extras); JSON needs nothing more.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read agents config {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"agents config {path} is not UTF-8 text: {exc}") from exc
    kind = path.suffix.lstrip(".") or "YAML"
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{path} is not valid {kind}: {exc}") from exc
    try:
        import yaml
    except ImportError as exc:
        raise ConfigError(
            f"reading {path} needs PyYAML: pip install 'runrelay[embedded]' (or use a .json file)"
        ) from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid {kind}: {exc}") from exc


def parse_config(raw: Any, environ: Mapping[str, str], path: Path) -> AgentsConfig:
    """Validate what `read_config` returned, after replacing `${VAR}` from `environ`."""
    try:
        return AgentsConfig.model_validate(_interpolate(raw, environ))
    except ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def load_config(path: Path, environ: Mapping[str, str]) -> AgentsConfig:
    return parse_config(read_config(path), environ, path)


class Registry:
    """Agents by name, id and shortcut."""

    def __init__(self, config: AgentsConfig) -> None:
        self.config = config
        self._by_ref: dict[str, AgentSpec] = {}
        self._by_tag: dict[str, AgentSpec] = {}
        for module in config.modules:
            for agent in module.agents:
                self._by_ref[agent.name] = agent
                self._by_ref[agent.id] = agent
                self._by_ref[f"{module.key} {agent.name}"] = agent
                for shortcut in agent.shortcuts:
                    self._by_ref[f"{module.key} {shortcut}"] = agent
                for tag in agent.tags:
                    self._by_tag[tag] = agent

    @classmethod
    def from_file(cls, path: Path, environ: Mapping[str, str]) -> Registry:
        return cls(load_config(path, environ))

    @property
    def agents(self) -> list[AgentSpec]:
        return [agent for module in self.config.modules for agent in module.agents]

    def provider(self, agent: AgentSpec) -> ProviderConfig:
        return self.config.providers[agent.provider]

    def resolve(self, ref: str) -> AgentSpec:
        normalized = " ".join(ref.split())
        agent = self._by_ref.get(normalized)
        if agent is None:
            raise AgentNotFound(ref, self.suggest(normalized))
        return agent

    def by_tag(self, tag: str) -> AgentSpec:
        agent = self._by_tag.get(tag)
        if agent is None:
            raise AgentNotFound(f"tag:{tag}", [f"tag:{t}" for t in sorted(self._by_tag)])
        return agent

    def suggest(self, ref: str, n: int = 3) -> list[str]:
        shortcuts = [key for key in self._by_ref if " " in key]
        names = [agent.name for agent in self.agents]
        pool = shortcuts if " " in ref else names + shortcuts
        return difflib.get_close_matches(ref, pool, n=n, cutoff=0.5)
