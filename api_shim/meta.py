"""The agent registry, liveness and readiness."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from api_shim.auth import Caller
from api_shim.errors import HTTPProblem
from api_shim.state import state_of
from runrelay.agent.config import AgentNotFound, AgentSpec
from runrelay.server.revisions import AgentCatalog
from runrelay.server.store import ping
from runrelay.types import AgentInfo

log = logging.getLogger(__name__)
router = APIRouter()


def agent_info(agent: AgentSpec, tags: dict[str, tuple[str, int]] | None = None) -> AgentInfo:
    return AgentInfo(
        id=agent.id,
        name=agent.name,
        display_name=agent.title,
        description=agent.description,
        module_key=agent.module_key,
        module_name=agent.module_name,
        revision=agent.revision,
        provider=agent.provider,
        model=agent.model,
        tools=[path.rpartition(":")[2] for path in agent.tools],
        capabilities=agent.capabilities,
        task_template=agent.task_template,
        shortcuts=[f"{agent.module_key} {s}" for s in agent.shortcuts],
        tags={tag: rev for tag, (agent_id, rev) in (tags or {}).items() if agent_id == agent.id},
    )


def _newest(
    catalog: AgentCatalog, refs: list[str]
) -> tuple[list[AgentSpec], dict[str, tuple[str, int]]]:
    return [catalog.by_ref(ref) for ref in refs], catalog.tags()


@router.get("/v1/agents", tags=["agents"], summary="List agents (their newest revisions)")
async def list_agents(request: Request, _: Caller) -> dict[str, object]:
    state = state_of(request)
    catalog = state.catalog
    refs = [agent.id for agent in state.registry.agents]
    agents, tags = await asyncio.to_thread(_newest, catalog, refs)
    return {"object": "list", "data": [agent_info(a, tags) for a in agents]}


@router.get(
    "/v1/agents/{agent_ref}",
    response_model=AgentInfo,
    tags=["agents"],
    summary="Get an agent by id, name or shortcut",
)
async def get_agent(request: Request, _: Caller, agent_ref: str) -> AgentInfo:
    state = state_of(request)
    catalog = state.catalog
    try:
        agent = await asyncio.to_thread(catalog.by_ref, agent_ref)
        return agent_info(agent, await asyncio.to_thread(catalog.tags))
    except AgentNotFound as exc:
        raise HTTPProblem(404, "agent_not_found", str(exc), param="agent_id") from exc


@router.get("/healthz", tags=["health"], summary="Liveness")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", tags=["health"], summary="Readiness: Redis and the database answer")
async def readyz(request: Request) -> JSONResponse:
    state = state_of(request)
    checks: dict[str, str] = {}
    try:
        await state.redis.ping()
        checks["redis"] = "ok"
    except RedisError as exc:
        checks["redis"] = f"unavailable: {exc}"
    try:
        await asyncio.to_thread(ping, state.store.engine)
        checks["database"] = "ok"
    except SQLAlchemyError as exc:
        checks["database"] = f"unavailable: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks},
        status_code=200 if ready else 503,
    )
