"""`/v1/schedules`: cron schedules that make runs (fired by `runrelay beat`; see
`runrelay.server.schedules` for exactly-once firing and `runrelay.server.firing` for admission).

A schedule is a run request (the body of `POST /v1/runs`) plus `cron`, `timezone`, an optional
window, `overlap`, `catch_up` and `paused`. A bad cron or time zone is a 422 naming the field
with the parse error; another tenant's schedule is a 404.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request, Response
from pydantic import ValidationError

from api_shim.auth import Caller, acting_tenant
from api_shim.errors import HTTPProblem
from api_shim.runs import _resolve_agent, own_run, run_object
from api_shim.state import ShimState, state_of
from runrelay.server import cron
from runrelay.server.firing import Firer
from runrelay.server.schedules import Schedule, Schedules
from runrelay.server.store import new_id
from runrelay.server.tables import as_utc
from runrelay.types import (
    RunObject,
    ScheduleCreate,
    ScheduleList,
    ScheduleObject,
    ScheduleTiming,
)

router = APIRouter(prefix="/v1/schedules", tags=["schedules"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or invalid API key"},
    404: {"description": "no such schedule for this tenant"},
}
_TIMING = tuple(ScheduleTiming.model_fields)
# What a schedule keeps of a run request: the rest is per request, not per tick.
_NOT_IN_TEMPLATE = {"tenant_id", "idempotency_key", "task", *_TIMING}
_SCHEDULE_ID = re.compile(r"sch_[0-9a-z]{26}")


def schedule_object(row: Schedule) -> ScheduleObject:
    def when(moment: Any) -> Any:
        # In UTC whatever offset the request gave, as a later GET shows it.
        return as_utc(moment).astimezone(UTC) if moment is not None else None

    return ScheduleObject(
        id=row.id,
        tenant_id=row.tenant_id,
        cron=row.cron,
        timezone=row.timezone,
        start_at=when(row.start_at),
        end_at=when(row.end_at),
        overlap=row.overlap,
        catch_up=row.catch_up,
        paused=row.paused,
        run=row.run,
        next_run_at=when(row.next_run_at),
        last_run_at=when(row.last_run_at),
        last_run_id=row.last_run_id,
        last_status=row.last_status,
        last_detail=row.last_detail,
        created_at=as_utc(row.created_at),
        updated_at=as_utc(row.updated_at),
    )


def _check_timing(state: ShimState, body: ScheduleCreate) -> None:
    try:
        cron.validate(body.cron, body.timezone, allow_seconds=state.settings.schedule_allow_seconds)
    except cron.CronError as exc:
        raise HTTPProblem(422, "validation_error", str(exc), param=exc.field) from exc


def _template(body: ScheduleCreate) -> dict[str, Any]:
    return body.model_dump(mode="json", exclude=_NOT_IN_TEMPLATE, exclude_none=True)


async def _own(request: Request, caller: Caller, schedule_id: str) -> tuple[str, Schedule]:
    state = state_of(request)
    tenant = await acting_tenant(request, caller, None)
    found = None
    if _SCHEDULE_ID.fullmatch(schedule_id):
        schedules = Schedules(state.store.engine)
        found = await asyncio.to_thread(schedules.get, schedule_id, tenant_id=tenant)
    if found is None:
        raise HTTPProblem(
            404, "schedule_not_found", f"no schedule {schedule_id!r}", param="schedule_id"
        )
    return tenant, found


@router.post(
    "", status_code=201, response_model=ScheduleObject, responses=_ERRORS, summary="Create"
)
async def create(
    request: Request, response: Response, caller: Caller, body: ScheduleCreate
) -> ScheduleObject:
    state = state_of(request)
    _check_timing(state, body)
    tenant = await acting_tenant(request, caller, body.tenant_id)
    await asyncio.to_thread(_resolve_agent, state, body)  # 404 for an unknown agent now
    schedule = Schedule(
        id=new_id("sch"),
        tenant_id=tenant,
        cron=body.cron,
        timezone=body.timezone,
        start_at=body.start_at,
        end_at=body.end_at,
        overlap=body.overlap,
        catch_up=body.catch_up,
        paused=body.paused,
        run=_template(body),
    )
    created = await asyncio.to_thread(Schedules(state.store.engine).create, schedule)
    response.headers["Location"] = f"/v1/schedules/{created.id}"
    return schedule_object(created)


@router.get("", response_model=ScheduleList, responses=_ERRORS, summary="List schedules")
async def list_schedules(
    request: Request,
    caller: Caller,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=64, pattern=r"^[^\x00]*$")] = None,
    tenant_id: Annotated[str | None, Query(max_length=100, pattern=r"^[^\x00]*$")] = None,
) -> ScheduleList:
    state = state_of(request)
    tenant = await acting_tenant(request, caller, tenant_id)
    rows = await asyncio.to_thread(
        Schedules(state.store.engine).page, tenant, limit=limit + 1, before=cursor
    )
    page = rows[:limit]
    has_more = len(rows) > limit
    return ScheduleList(
        data=[schedule_object(r) for r in page],
        has_more=has_more,
        next_cursor=page[-1].id if has_more else None,
    )


@router.get("/{schedule_id}", response_model=ScheduleObject, responses=_ERRORS, summary="Get")
async def get(request: Request, caller: Caller, schedule_id: str) -> ScheduleObject:
    return schedule_object((await _own(request, caller, schedule_id))[1])


@router.patch("/{schedule_id}", response_model=ScheduleObject, responses=_ERRORS, summary="Change")
async def update(
    request: Request,
    caller: Caller,
    schedule_id: str,
    changes: Annotated[dict[str, Any], Body(description="any fields of the create body")],
) -> ScheduleObject:
    """The fields given replace the schedule's (a run field set to null is removed); the
    result is validated as a whole, like a create."""
    state = state_of(request)
    tenant, found = await _own(request, caller, schedule_id)
    current = {
        **found.run,
        **{name: getattr(found, name) for name in _TIMING},
    }
    merged = {k: v for k, v in {**current, **changes}.items() if v is not None}
    try:
        body = ScheduleCreate.model_validate(merged)
    except ValidationError as exc:
        error = exc.errors()[0]
        param = ".".join(str(part) for part in error["loc"]) or None
        raise HTTPProblem(422, "validation_error", error["msg"], param=param) from exc
    _check_timing(state, body)
    await asyncio.to_thread(_resolve_agent, state, body)
    values = {name: getattr(body, name) for name in _TIMING}
    updated = await asyncio.to_thread(
        Schedules(state.store.engine).update,
        found.id,
        tenant_id=tenant,
        run=_template(body),
        **values,
    )
    if updated is None:
        raise HTTPProblem(404, "schedule_not_found", f"no schedule {schedule_id!r}")
    return schedule_object(updated)


@router.delete("/{schedule_id}", status_code=204, responses=_ERRORS, summary="Delete")
async def delete(request: Request, caller: Caller, schedule_id: str) -> Response:
    """Its runs stay (still listed with `GET /v1/runs?schedule_id=`)."""
    tenant, found = await _own(request, caller, schedule_id)
    await asyncio.to_thread(
        Schedules(state_of(request).store.engine).delete, found.id, tenant_id=tenant
    )
    return Response(status_code=204)


async def _set_paused(request: Request, caller: Caller, schedule_id: str, paused: bool) -> Any:
    tenant, found = await _own(request, caller, schedule_id)
    updated = await asyncio.to_thread(
        Schedules(state_of(request).store.engine).update, found.id, tenant_id=tenant, paused=paused
    )
    assert updated is not None  # owned a moment ago; a concurrent delete is a rare 500
    return schedule_object(updated)


@router.post("/{schedule_id}/pause", response_model=ScheduleObject, responses=_ERRORS)
async def pause(request: Request, caller: Caller, schedule_id: str) -> ScheduleObject:
    """No tick fires while paused (`next_run_at` is null)."""
    result: ScheduleObject = await _set_paused(request, caller, schedule_id, True)
    return result


@router.post("/{schedule_id}/resume", response_model=ScheduleObject, responses=_ERRORS)
async def resume(request: Request, caller: Caller, schedule_id: str) -> ScheduleObject:
    """Fires again from the next tick after now (ticks missed while paused do not fire)."""
    result: ScheduleObject = await _set_paused(request, caller, schedule_id, False)
    return result


@router.post(
    "/{schedule_id}/trigger",
    status_code=202,
    response_model=RunObject,
    responses={**_ERRORS, 409: {"description": "skipped: the last run is still active"}},
    summary="Make one run now",
)
async def trigger(request: Request, caller: Caller, schedule_id: str) -> RunObject:
    """One run now, outside the cron, with the schedule's `overlap` and the tenant's quotas."""
    state = state_of(request)
    tenant, found = await _own(request, caller, schedule_id)
    schedules = Schedules(state.store.engine)
    fire = await asyncio.to_thread(
        schedules.claim_now, found.id, tenant_id=tenant, run_id=new_id("run")
    )
    if fire is None:
        raise HTTPProblem(404, "schedule_not_found", f"no schedule {schedule_id!r}")
    firer = Firer(
        settings=state.settings,
        store=state.store,
        lifecycle=state.lifecycle,
        quotas=state.quotas.backend,
        registry=state.registry,
        send=state.sender.send,
    )
    status = await firer.fire(fire)
    if status != "fired":
        current = await asyncio.to_thread(schedules.get, found.id, tenant_id=tenant)
        detail = current.last_detail if current else status
        code = {"skipped": 409, "refused": 429}.get(status, 503)
        raise HTTPProblem(code, f"trigger_{status}", f"no run made: {detail}")
    return run_object(await own_run(request, caller, fire.run_id))
