"""`/v1/shortcuts` (FAOS): the shortcut commands of the agent registry, and their resolution.

A module key (`bank`) is a `module` shortcut; `bank <agent name>` and `bank <shortcut>` are
`agent` shortcuts. A command that leads nowhere resolves to `resolved: false` with close matches.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from api_shim.auth import Caller
from api_shim.errors import HTTPProblem
from api_shim.state import state_of
from runrelay.agent.config import AgentNotFound, AgentSpec, ModuleSpec, Registry
from runrelay.types import ShortcutDefinition, ShortcutResolution, ShortcutResolveRequest

router = APIRouter(prefix="/v1/shortcuts", tags=["shortcuts"])


def _agent_shortcuts(module: ModuleSpec, agent: AgentSpec) -> list[ShortcutDefinition]:
    # An agent whose shortcut is its own name is listed once.
    patterns = list(
        dict.fromkeys(f"{module.key} {name}" for name in (*agent.shortcuts, agent.name))
    )
    return [
        ShortcutDefinition(
            pattern=pattern,
            type="agent",
            description=agent.description or agent.title,
            module_key=module.key,
            agent_id=agent.id,
            examples=[pattern, *([agent.task_template] if agent.task_template else [])],
        )
        for pattern in patterns
    ]


def definitions(registry: Registry, module_key: str | None) -> list[ShortcutDefinition]:
    found: list[ShortcutDefinition] = []
    for module in registry.config.modules:
        if module_key is not None and module.key != module_key:
            continue
        found.append(
            ShortcutDefinition(
                pattern=module.key,
                type="module",
                description=module.description or module.name,
                module_key=module.key,
                examples=[
                    f"{module.key} {a.shortcuts[0] if a.shortcuts else a.name}"
                    for a in module.agents
                ],
            )
        )
        for agent in module.agents:
            found.extend(_agent_shortcuts(module, agent))
    return found


def resolve(registry: Registry, command: str) -> ShortcutResolution:
    normalized = " ".join(command.split())
    modules = {module.key: module for module in registry.config.modules}
    if normalized in modules:  # a module alone leads to no single agent: offer its agents
        module = modules[normalized]
        return ShortcutResolution(
            resolved=False,
            module_key=module.key,
            module_name=module.name,
            suggestions=[
                f"{module.key} {a.shortcuts[0] if a.shortcuts else a.name}" for a in module.agents
            ],
        )
    try:
        agent = registry.resolve(normalized)
    except AgentNotFound as exc:
        return ShortcutResolution(resolved=False, suggestions=exc.suggestions)
    return ShortcutResolution(
        resolved=True,
        agent_id=agent.id,
        module_key=agent.module_key,
        module_name=agent.module_name,
        agent_name=agent.title,
        task_template=agent.task_template,
        capabilities=agent.capabilities,
    )


@router.get("", summary="List shortcuts")
async def list_shortcuts(
    request: Request,
    _: Caller,
    module: Annotated[str | None, Query(max_length=100, description="a module key")] = None,
) -> dict[str, object]:
    registry = state_of(request).registry
    if module is not None and module not in {m.key for m in registry.config.modules}:
        known = ", ".join(m.key for m in registry.config.modules)
        raise HTTPProblem(
            404, "module_not_found", f"no module {module!r} (have: {known})", param="module"
        )
    return {"object": "list", "data": definitions(registry, module)}


@router.post("/resolve", response_model=ShortcutResolution, summary="Resolve a shortcut command")
async def resolve_shortcut(
    request: Request, _: Caller, body: ShortcutResolveRequest
) -> ShortcutResolution:
    return resolve(state_of(request).registry, body.command)
