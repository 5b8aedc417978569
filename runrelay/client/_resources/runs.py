"""`client.runs`: background runs, their state, their event logs and their webhook deliveries."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from runrelay.client._resources.base import Event, Resource, create_request, raw
from runrelay.client._streaming import EventStream
from runrelay.client._transport import Request
from runrelay.errors import ValidationError
from runrelay.types import RunList, RunObject, WebhookDeliveryList, WebhookDeliveryObject


def _run_create_body(agent: str | None, fields: dict[str, Any]) -> Event:
    body = {k: v for k, v in {"agent": agent, **fields}.items() if v is not None}
    given = body.get("input")
    if isinstance(given, dict) and isinstance(given.get("task"), dict) and "task" not in body:
        body["task"] = body.pop("input")["task"]  # an A2A input given as `input`
    return body


class _RunsResource(Resource):
    """What `Runs` and `AsyncRuns` share: streams, one object for `for` and `async for`."""

    def events(self, run_id: str, *, last_event_id: str | None = None) -> EventStream[Event]:
        """The run's events as dicts (DESIGN §4), from after `last_event_id` to `done`."""
        after = _cursor(last_event_id)
        return self._stream(raw, run_id=run_id, after=after)

    def stream(
        self, agent: str | None = None, *, idempotency_key: str | None = None, **fields: Any
    ) -> EventStream[Event]:
        """Create a run (`POST /v1/runs/stream`) and stream its events as dicts."""
        body = _run_create_body(agent, fields)
        create = create_request("/v1/runs/stream", body, idempotency_key, self._options)
        return self._stream(raw, create=create)


class Runs(_RunsResource):
    """`client.runs`: background runs, their state and their event logs."""

    def create(
        self, agent: str | None = None, *, idempotency_key: str | None = None, **fields: Any
    ) -> RunObject:
        """`POST /v1/runs`; `fields` are the run request's (input, message, tag, ...)."""
        body = _run_create_body(agent, fields)
        response = self._transport.send(
            create_request("/v1/runs", body, idempotency_key, self._options)
        )
        return RunObject.model_validate(response.json())

    def get(self, run_id: str) -> RunObject:
        return RunObject.model_validate(
            self._transport.send(Request("GET", f"/v1/runs/{run_id}")).json()
        )

    def list(
        self,
        *,
        limit: int = 20,
        cursor: str | None = None,
        status: str | None = None,
        agent: str | None = None,
        thread_id: str | None = None,
        schedule_id: str | None = None,
    ) -> RunList:
        request = _list_request(limit, cursor, status, agent, thread_id, schedule_id)
        response = self._transport.send(request)
        return RunList.model_validate(response.json())

    def cancel(self, run_id: str) -> RunObject:
        """`POST /v1/runs/{id}/cancel`: a queued run never starts, a running one stops soon."""
        response = self._transport.send(Request("POST", f"/v1/runs/{run_id}/cancel"))
        return RunObject.model_validate(response.json())

    def approve(self, run_id: str, call_id: str, *, reason: str | None = None) -> RunObject:
        """Approve a tool call a `requires_action` run waits on; once all its calls are
        decided, the run resumes."""
        return self.decide(run_id, call_id, approved=True, reason=reason)

    def reject(self, run_id: str, call_id: str, *, reason: str | None = None) -> RunObject:
        """Reject a tool call; the model is told it was rejected, with `reason`."""
        return self.decide(run_id, call_id, approved=False, reason=reason)

    def decide(
        self, run_id: str, call_id: str, *, approved: bool, reason: str | None = None
    ) -> RunObject:
        """`POST /v1/runs/{id}/approvals`."""
        response = self._transport.send(_decision_request(run_id, call_id, approved, reason))
        return RunObject.model_validate(response.json())

    def webhooks(self, run_id: str) -> WebhookDeliveryList:
        """`GET /v1/runs/{id}/webhooks`: the run's webhook deliveries with every attempt (status
        code or error) and, while one is pending, its next retry."""
        response = self._transport.send(Request("GET", _webhooks_path(run_id)))
        return WebhookDeliveryList.model_validate(response.json())

    def redeliver_webhook(self, run_id: str, delivery_id: str) -> WebhookDeliveryObject:
        """Send a delivery again now, with the same `webhook-id` (receivers can deduplicate)."""
        response = self._transport.send(Request("POST", _webhooks_path(run_id, delivery_id)))
        return WebhookDeliveryObject.model_validate(response.json())


class AsyncRuns(_RunsResource):
    """`client.runs` of `AsyncClient`."""

    async def create(
        self, agent: str | None = None, *, idempotency_key: str | None = None, **fields: Any
    ) -> RunObject:
        body = _run_create_body(agent, fields)
        async with self._atransport() as transport:
            response = await transport.send(
                create_request("/v1/runs", body, idempotency_key, self._options)
            )
        return RunObject.model_validate(response.json())

    async def get(self, run_id: str) -> RunObject:
        async with self._atransport() as transport:
            response = await transport.send(Request("GET", f"/v1/runs/{run_id}"))
        return RunObject.model_validate(response.json())

    async def list(
        self,
        *,
        limit: int = 20,
        cursor: str | None = None,
        status: str | None = None,
        agent: str | None = None,
        thread_id: str | None = None,
        schedule_id: str | None = None,
    ) -> RunList:
        request = _list_request(limit, cursor, status, agent, thread_id, schedule_id)
        async with self._atransport() as transport:
            response = await transport.send(request)
        return RunList.model_validate(response.json())

    async def cancel(self, run_id: str) -> RunObject:
        async with self._atransport() as transport:
            response = await transport.send(Request("POST", f"/v1/runs/{run_id}/cancel"))
        return RunObject.model_validate(response.json())

    async def approve(self, run_id: str, call_id: str, *, reason: str | None = None) -> RunObject:
        return await self.decide(run_id, call_id, approved=True, reason=reason)

    async def reject(self, run_id: str, call_id: str, *, reason: str | None = None) -> RunObject:
        return await self.decide(run_id, call_id, approved=False, reason=reason)

    async def decide(
        self, run_id: str, call_id: str, *, approved: bool, reason: str | None = None
    ) -> RunObject:
        async with self._atransport() as transport:
            response = await transport.send(_decision_request(run_id, call_id, approved, reason))
        return RunObject.model_validate(response.json())

    async def webhooks(self, run_id: str) -> WebhookDeliveryList:
        async with self._atransport() as transport:
            response = await transport.send(Request("GET", _webhooks_path(run_id)))
        return WebhookDeliveryList.model_validate(response.json())

    async def redeliver_webhook(self, run_id: str, delivery_id: str) -> WebhookDeliveryObject:
        async with self._atransport() as transport:
            response = await transport.send(Request("POST", _webhooks_path(run_id, delivery_id)))
        return WebhookDeliveryObject.model_validate(response.json())


def _decision_request(run_id: str, call_id: str, approved: bool, reason: str | None) -> Request:
    body = {"call_id": call_id, "approved": approved, "reason": reason}
    return Request("POST", f"/v1/runs/{run_id}/approvals", json=body)


def _list_request(
    limit: int,
    cursor: str | None,
    status: str | None,
    agent: str | None,
    thread_id: str | None,
    schedule_id: str | None,
) -> Request:
    params = {
        "limit": limit,
        "cursor": cursor,
        "status": status,
        "agent": agent,
        "thread_id": thread_id,
        "schedule_id": schedule_id,
    }
    return Request("GET", "/v1/runs", params=params)


def _webhooks_path(run_id: str, delivery_id: str | None = None) -> str:
    for name, value in (("run_id", run_id), ("delivery_id", delivery_id)):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ValidationError(f"{name} must be a non-empty string", param=name)
    path = f"/v1/runs/{quote(run_id, safe='')}/webhooks"
    return path if delivery_id is None else f"{path}/{quote(delivery_id, safe='')}/redeliver"


def _cursor(last_event_id: str | None) -> int:
    if last_event_id is None:
        return 0
    if not str(last_event_id).isdigit():
        raise ValidationError(
            f"last_event_id must be a non-negative integer event id (got {last_event_id!r})",
            param="last_event_id",
        )
    return int(last_event_id)
