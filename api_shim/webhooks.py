"""`/v1/runs/{id}/webhooks`: a run's webhook delivery log, and sending a delivery again."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request

from api_shim.auth import Caller
from api_shim.errors import HTTPProblem
from api_shim.runs import own_run
from api_shim.state import state_of
from runrelay.server import webhooks
from runrelay.server.tables import as_utc
from runrelay.types import WebhookAttempt, WebhookDeliveryList, WebhookDeliveryObject

router = APIRouter(prefix="/v1/runs", tags=["webhooks"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or invalid API key"},
    404: {"description": "no such run (or delivery) for this tenant"},
}


def delivery_object(row: webhooks.WebhookDelivery) -> WebhookDeliveryObject:
    return WebhookDeliveryObject(
        id=row.id,
        run_id=row.run_id,
        event_type=row.event_type,
        url=row.url,
        status=row.status,
        attempts=[WebhookAttempt.model_validate(a) for a in row.attempts],
        next_attempt_at=(
            as_utc(row.next_attempt_at) if row.next_attempt_at and row.status == "pending" else None
        ),
        created_at=as_utc(row.created_at),
        delivered_at=as_utc(row.delivered_at) if row.delivered_at else None,
    )


@router.get(
    "/{run_id}/webhooks",
    response_model=WebhookDeliveryList,
    responses=_ERRORS,
    summary="A run's webhook deliveries: attempts, status codes, next retry",
)
async def list_deliveries(request: Request, caller: Caller, run_id: str) -> WebhookDeliveryList:
    run = await own_run(request, caller, run_id)
    rows = await asyncio.to_thread(webhooks.deliveries, state_of(request).store.engine, run.id)
    return WebhookDeliveryList(data=[delivery_object(row) for row in rows])


@router.post(
    "/{run_id}/webhooks/{delivery_id}/redeliver",
    response_model=WebhookDeliveryObject,
    status_code=202,
    responses=_ERRORS,
    summary="Send a delivery again (same webhook-id), now",
)
async def redeliver(
    request: Request, caller: Caller, run_id: str, delivery_id: str
) -> WebhookDeliveryObject:
    state = state_of(request)
    run = await own_run(request, caller, run_id)
    found = await asyncio.to_thread(webhooks.get_delivery, state.store.engine, delivery_id)
    if found is None or found.run_id != run.id:
        raise HTTPProblem(
            404,
            "delivery_not_found",
            f"run {run.id} has no webhook delivery {delivery_id!r}",
            param="delivery_id",
        )
    row = await asyncio.to_thread(webhooks.redeliver, state.store.engine, delivery_id)
    assert row is not None  # deliveries are never deleted
    await asyncio.to_thread(state.sender.send_delivery, delivery_id)
    return delivery_object(row)
