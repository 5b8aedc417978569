"""`client.schedules`: cron schedules that make runs (fired by `runrelay beat`).

    schedule = client.schedules.create(
        "credit-risk-analyst", cron="0 9 * * 1-5", timezone="Europe/Berlin", message="Daily report"
    )

`create` and `trigger` are not idempotent on the server, so they are retried only when the
server refused them outright (429): a retry after a lost answer could make a second schedule or
a second run.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from urllib.parse import quote

from runrelay.client._resources.base import Resource
from runrelay.client._transport import Request
from runrelay.errors import ValidationError
from runrelay.types import RunObject, ScheduleList, ScheduleObject

Overlap = Literal["skip", "enqueue", "cancel_previous"]
CatchUp = Literal["none", "latest"]


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _path(schedule_id: str, action: str = "") -> str:
    if not isinstance(schedule_id, str) or not schedule_id.strip():
        raise ValidationError("schedule_id must be a non-empty string", param="schedule_id")
    return f"/v1/schedules/{quote(schedule_id, safe='')}{action}"


def _create_request(agent: str | None, cron: str, timing: dict[str, Any], fields: Any) -> Request:
    given = {"agent": agent, "cron": cron, **timing, **fields}
    body = {k: _jsonable(v) for k, v in given.items() if v is not None}
    return Request("POST", "/v1/schedules", json=body, retry_refusals_only=True)


def _update_request(schedule_id: str, changes: dict[str, Any]) -> Request:
    if not changes:
        raise ValidationError("give at least one field to change", param="changes")
    # None is sent as null: it removes a run field (e.g. webhook) or restores a timing default.
    body = {k: _jsonable(v) for k, v in changes.items()}
    return Request("PATCH", _path(schedule_id), json=body)


def _list_request(limit: int, cursor: str | None) -> Request:
    return Request("GET", "/v1/schedules", params={"limit": limit, "cursor": cursor})


def _trigger_request(schedule_id: str) -> Request:
    return Request("POST", _path(schedule_id, "/trigger"), retry_refusals_only=True)


class Schedules(Resource):
    """`client.schedules` of the sync `Client`. An unknown schedule (or another tenant's)
    raises `NotFoundError`; a bad cron or time zone `UnprocessableEntityError` whose `param`
    names the field."""

    def create(
        self,
        agent: str | None = None,
        *,
        cron: str,
        timezone: str | None = None,
        start_at: datetime | str | None = None,
        end_at: datetime | str | None = None,
        overlap: Overlap | None = None,
        catch_up: CatchUp | None = None,
        paused: bool | None = None,
        **fields: Any,
    ) -> ScheduleObject:
        """`POST /v1/schedules`: `cron` (5 fields or `@hourly`-style) in `timezone` (IANA,
        default UTC); `fields` are the run request's (message, input, metadata, webhook, ...)."""
        timing = {
            "timezone": timezone,
            "start_at": start_at,
            "end_at": end_at,
            "overlap": overlap,
            "catch_up": catch_up,
            "paused": paused,
        }
        response = self._transport.send(_create_request(agent, cron, timing, fields))
        return ScheduleObject.model_validate(response.json())

    def list(self, *, limit: int = 20, cursor: str | None = None) -> ScheduleList:
        """Newest first; when `has_more`, pass `cursor=page.next_cursor` for the next page."""
        response = self._transport.send(_list_request(limit, cursor))
        return ScheduleList.model_validate(response.json())

    def get(self, schedule_id: str) -> ScheduleObject:
        response = self._transport.send(Request("GET", _path(schedule_id)))
        return ScheduleObject.model_validate(response.json())

    def update(self, schedule_id: str, **changes: Any) -> ScheduleObject:
        """`PATCH`: any field of the create body (cron, timezone, message, ...); a field given
        as None is removed. The result is validated as a whole, like a create."""
        response = self._transport.send(_update_request(schedule_id, changes))
        return ScheduleObject.model_validate(response.json())

    def delete(self, schedule_id: str) -> None:
        """The schedule stops; its runs stay (`client.runs.list(schedule_id=...)`)."""
        self._transport.send(Request("DELETE", _path(schedule_id)))

    def pause(self, schedule_id: str) -> ScheduleObject:
        """No tick fires while paused (`next_run_at` is None)."""
        response = self._transport.send(Request("POST", _path(schedule_id, "/pause")))
        return ScheduleObject.model_validate(response.json())

    def resume(self, schedule_id: str) -> ScheduleObject:
        """Fires again from the next tick after now; ticks missed while paused do not fire."""
        response = self._transport.send(Request("POST", _path(schedule_id, "/resume")))
        return ScheduleObject.model_validate(response.json())

    def trigger(self, schedule_id: str) -> RunObject:
        """One run now, outside the cron. With `overlap="skip"` and the last run still active,
        raises `ConflictError` (code `trigger_skipped`)."""
        response = self._transport.send(_trigger_request(schedule_id))
        return RunObject.model_validate(response.json())


class AsyncSchedules(Resource):
    """`client.schedules` of `AsyncClient`."""

    async def create(
        self,
        agent: str | None = None,
        *,
        cron: str,
        timezone: str | None = None,
        start_at: datetime | str | None = None,
        end_at: datetime | str | None = None,
        overlap: Overlap | None = None,
        catch_up: CatchUp | None = None,
        paused: bool | None = None,
        **fields: Any,
    ) -> ScheduleObject:
        timing = {
            "timezone": timezone,
            "start_at": start_at,
            "end_at": end_at,
            "overlap": overlap,
            "catch_up": catch_up,
            "paused": paused,
        }
        request = _create_request(agent, cron, timing, fields)
        return ScheduleObject.model_validate(await self._send(request))

    async def list(self, *, limit: int = 20, cursor: str | None = None) -> ScheduleList:
        return ScheduleList.model_validate(await self._send(_list_request(limit, cursor)))

    async def get(self, schedule_id: str) -> ScheduleObject:
        return ScheduleObject.model_validate(await self._send(Request("GET", _path(schedule_id))))

    async def update(self, schedule_id: str, **changes: Any) -> ScheduleObject:
        request = _update_request(schedule_id, changes)
        return ScheduleObject.model_validate(await self._send(request))

    async def delete(self, schedule_id: str) -> None:
        await self._send(Request("DELETE", _path(schedule_id)), body=False)

    async def pause(self, schedule_id: str) -> ScheduleObject:
        request = Request("POST", _path(schedule_id, "/pause"))
        return ScheduleObject.model_validate(await self._send(request))

    async def resume(self, schedule_id: str) -> ScheduleObject:
        request = Request("POST", _path(schedule_id, "/resume"))
        return ScheduleObject.model_validate(await self._send(request))

    async def trigger(self, schedule_id: str) -> RunObject:
        return RunObject.model_validate(await self._send(_trigger_request(schedule_id)))

    async def _send(self, request: Request, *, body: bool = True) -> Any:
        async with self._atransport() as transport:
            response = await transport.send(request)
        return response.json() if body else None
