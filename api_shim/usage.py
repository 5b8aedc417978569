"""`GET /v1/usage` (the tenant's limits and current usage) and `GET /metrics` (Prometheus)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api_shim.auth import Caller, acting_tenant
from api_shim.state import state_of

router = APIRouter()


@router.get("/v1/usage", tags=["usage"], summary="The tenant's limits and current usage")
async def usage(
    request: Request,
    caller: Caller,
    tenant_id: Annotated[str | None, Query(max_length=100)] = None,
) -> dict[str, Any]:
    state = state_of(request)
    tenant = await acting_tenant(request, caller, tenant_id)
    return await state.quotas.usage(tenant)


@router.get("/metrics", tags=["health"], summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    state = state_of(request)
    await state.quotas.observe_queues(state.settings.task_queue)
    return Response(generate_latest(state.quotas.metrics.registry), media_type=CONTENT_TYPE_LATEST)
