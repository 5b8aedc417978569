"""The SDK's resources: `agents` (FAOS invoke/ainvoke/stream and Mentiora run/run_async/stream/
stream_async on one object), `runs` and `shortcuts`. Each comes in a sync flavour (on `Client`)
and an async one (on `AsyncClient`); both build their requests here.

`agents.stream` dispatches on its first argument: an `AgentRunParams` gives Mentiora typed
events (stopping after an `error` event, as that SDK does); an agent name (with an input dict or
message) gives FAOS chunks. Either stream can be iterated with `for` (sync client) or
`async for`.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, overload

import httpx

from runrelay.errors import ValidationError
from runrelay.params import AgentRunParams, invoke_body, run_body
from runrelay.responses import (
    AgentResponse,
    AgentRunResult,
    AgentStreamEvent,
    InvokeResponse,
    StreamChunk,
    run_result,
    to_agent_event,
    to_chunk,
)
from runrelay.streaming import EventStream
from runrelay.transport import (
    WAIT_READ_TIMEOUT_S,
    AsyncTransport,
    ClientOptions,
    Request,
    SyncTransport,
    new_idempotency_key,
)
from runrelay.types import RunList, RunObject, ShortcutDefinition, ShortcutResolution

Event = dict[str, Any]
_MENTIORA_STOP = frozenset({"done", "error"})


def _create(path: str, body: dict[str, Any], key: str | None, options: ClientOptions) -> Request:
    timeout = None
    if path.endswith("/wait"):
        timeout = httpx.Timeout(options.timeout, read=max(options.timeout, WAIT_READ_TIMEOUT_S))
    headers = {"Idempotency-Key": key or new_idempotency_key()}
    return Request("POST", path, json=body, headers=headers, timeout=timeout)


def _raw(event: Event) -> Event:
    return event


def _shortcut_response(response: InvokeResponse) -> AgentResponse:
    return AgentResponse(
        content=response.run.output or "",
        agent_id=response.run.agent.id,
        metadata={
            **response.metadata,
            "usage": response.usage.model_dump(),
            "tokens_used": response.usage.total_tokens,
            "request_id": response.request_id,
        },
    )


def _shortcut_body(
    command: str, input: dict[str, Any] | str | None, tenant_id: str | None
) -> Event:
    return invoke_body(command, input if input is not None else command, tenant_id=tenant_id)


def _stream_create(
    agent: str | AgentRunParams,
    input: dict[str, Any] | str | None,
    tenant_id: str | None,
    last_event_id: str | None,
    run_id: str | None,
    idempotency_key: str | None,
) -> tuple[Event | None, int, frozenset[str]]:
    after = 0
    if last_event_id is not None:
        if not last_event_id.isdigit():
            raise ValidationError(
                f"last_event_id must be an event id as a stream gives it, e.g. '42' "
                f"(got {last_event_id!r})",
                param="last_event_id",
            )
        if run_id is None and idempotency_key is None:
            raise ValidationError(
                "resuming with last_event_id needs the run: pass run_id=stream.run_id "
                "(or the idempotency_key of the original call)",
                param="run_id",
            )
        after = int(last_event_id)
    if isinstance(agent, AgentRunParams):
        return run_body(agent), after, _MENTIORA_STOP
    return invoke_body(agent, input, tenant_id=tenant_id), after, frozenset({"done"})


class _Resource:
    def __init__(
        self,
        options: ClientOptions,
        sync: SyncTransport | None,
        async_: AsyncTransport | None,
    ) -> None:
        self._options = options
        self._sync = sync
        self._async = async_

    @property
    def _transport(self) -> SyncTransport:
        if self._sync is None:
            raise TypeError("this resource belongs to an AsyncClient: await its methods")
        return self._sync

    @asynccontextmanager
    async def _atransport(self) -> AsyncIterator[AsyncTransport]:
        if self._async is not None:
            yield self._async
            return
        async with self._options.async_http() as http:  # async calls on a sync Client
            yield AsyncTransport(self._options, http)

    def _stream(self, convert: Any, **kwargs: Any) -> EventStream[Any]:
        return EventStream(
            self._options,
            convert,
            sync_http=self._sync.http if self._sync else None,
            async_http=self._async.http if self._async else None,
            **kwargs,
        )

    def _events_stream(
        self,
        agent: str | AgentRunParams,
        input: dict[str, Any] | str | None,
        *,
        tenant_id: str | None,
        last_event_id: str | None,
        run_id: str | None,
        idempotency_key: str | None,
    ) -> EventStream[Any]:
        body, after, stop = _stream_create(
            agent, input, tenant_id, last_event_id, run_id, idempotency_key
        )
        convert = to_agent_event if isinstance(agent, AgentRunParams) else to_chunk
        create = _create("/v1/runs/stream", body, idempotency_key, self._options) if body else None
        return self._stream(convert, create=create, run_id=run_id, after=after, stop_types=stop)


class Agents(_Resource):
    """`client.agents` of the sync `Client`."""

    def invoke(
        self,
        agent: str,
        input: dict[str, Any] | str | None = None,
        tenant_id: str | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> InvokeResponse:
        """Run `agent` on `input` and wait for the result (FAOS)."""
        body = invoke_body(agent, input, tenant_id=tenant_id)
        response = self._transport.send(
            _create("/v1/runs/wait", body, idempotency_key, self._options)
        )
        return InvokeResponse.model_validate(response.json())

    async def ainvoke(
        self,
        agent: str,
        input: dict[str, Any] | str | None = None,
        tenant_id: str | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> InvokeResponse:
        body = invoke_body(agent, input, tenant_id=tenant_id)
        async with self._atransport() as transport:
            response = await transport.send(
                _create("/v1/runs/wait", body, idempotency_key, self._options)
            )
        return InvokeResponse.model_validate(response.json())

    def run(self, params: AgentRunParams, *, idempotency_key: str | None = None) -> AgentRunResult:
        """Run an agent and return the complete result (Mentiora)."""
        request = _create("/v1/runs/wait", run_body(params), idempotency_key, self._options)
        return run_result(InvokeResponse.model_validate(self._transport.send(request).json()))

    async def run_async(
        self, params: AgentRunParams, *, idempotency_key: str | None = None
    ) -> AgentRunResult:
        request = _create("/v1/runs/wait", run_body(params), idempotency_key, self._options)
        async with self._atransport() as transport:
            response = await transport.send(request)
        return run_result(InvokeResponse.model_validate(response.json()))

    @overload
    def stream(
        self,
        agent: AgentRunParams,
        input: None = None,
        *,
        last_event_id: str | None = None,
        run_id: str | None = None,
        tenant_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> EventStream[AgentStreamEvent]: ...

    @overload
    def stream(
        self,
        agent: str,
        input: dict[str, Any] | str | None = None,
        *,
        last_event_id: str | None = None,
        run_id: str | None = None,
        tenant_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> EventStream[StreamChunk]: ...

    def stream(
        self,
        agent: str | AgentRunParams,
        input: dict[str, Any] | str | None = None,
        *,
        last_event_id: str | None = None,
        run_id: str | None = None,
        tenant_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> EventStream[AgentStreamEvent] | EventStream[StreamChunk]:
        """Stream a run: FAOS chunks for `stream(agent, input)`, Mentiora typed events for
        `stream(AgentRunParams(...))`. Reconnects by itself; see `EventStream`."""
        return self._events_stream(
            agent,
            input,
            tenant_id=tenant_id,
            last_event_id=last_event_id,
            run_id=run_id,
            idempotency_key=idempotency_key,
        )

    def stream_async(
        self, params: AgentRunParams, *, idempotency_key: str | None = None
    ) -> EventStream[AgentStreamEvent]:
        """`async for event in client.agents.stream_async(params)` (Mentiora)."""
        return self.stream(params, idempotency_key=idempotency_key)


class AsyncAgents(_Resource):
    """`client.agents` of `AsyncClient`: the same calls, awaited."""

    async def invoke(
        self,
        agent: str,
        input: dict[str, Any] | str | None = None,
        tenant_id: str | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> InvokeResponse:
        body = invoke_body(agent, input, tenant_id=tenant_id)
        async with self._atransport() as transport:
            response = await transport.send(
                _create("/v1/runs/wait", body, idempotency_key, self._options)
            )
        return InvokeResponse.model_validate(response.json())

    ainvoke = invoke

    async def run(
        self, params: AgentRunParams, *, idempotency_key: str | None = None
    ) -> AgentRunResult:
        request = _create("/v1/runs/wait", run_body(params), idempotency_key, self._options)
        async with self._atransport() as transport:
            response = await transport.send(request)
        return run_result(InvokeResponse.model_validate(response.json()))

    run_async = run

    @overload
    def stream(
        self,
        agent: AgentRunParams,
        input: None = None,
        *,
        last_event_id: str | None = None,
        run_id: str | None = None,
        tenant_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> EventStream[AgentStreamEvent]: ...

    @overload
    def stream(
        self,
        agent: str,
        input: dict[str, Any] | str | None = None,
        *,
        last_event_id: str | None = None,
        run_id: str | None = None,
        tenant_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> EventStream[StreamChunk]: ...

    def stream(
        self,
        agent: str | AgentRunParams,
        input: dict[str, Any] | str | None = None,
        *,
        last_event_id: str | None = None,
        run_id: str | None = None,
        tenant_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> EventStream[AgentStreamEvent] | EventStream[StreamChunk]:
        return self._events_stream(
            agent,
            input,
            tenant_id=tenant_id,
            last_event_id=last_event_id,
            run_id=run_id,
            idempotency_key=idempotency_key,
        )

    def stream_async(
        self, params: AgentRunParams, *, idempotency_key: str | None = None
    ) -> EventStream[AgentStreamEvent]:
        return self.stream(params, idempotency_key=idempotency_key)


def _run_create_body(agent: str | None, fields: dict[str, Any]) -> Event:
    body = {k: v for k, v in {"agent": agent, **fields}.items() if v is not None}
    if "task" in body.get("input", {}) and "task" not in body:
        body["task"] = body.pop("input")["task"]  # an A2A input given as `input`
    return body


class Runs(_Resource):
    """`client.runs`: background runs, their state and their event logs."""

    def create(
        self, agent: str | None = None, *, idempotency_key: str | None = None, **fields: Any
    ) -> RunObject:
        """`POST /v1/runs`; `fields` are the run request's (input, message, tag, ...)."""
        body = _run_create_body(agent, fields)
        response = self._transport.send(_create("/v1/runs", body, idempotency_key, self._options))
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
    ) -> RunList:
        params = {
            "limit": limit,
            "cursor": cursor,
            "status": status,
            "agent": agent,
            "thread_id": thread_id,
        }
        response = self._transport.send(Request("GET", "/v1/runs", params=params))
        return RunList.model_validate(response.json())

    def cancel(self, run_id: str) -> RunObject:
        """`POST /v1/runs/{id}/cancel`: a queued run never starts, a running one stops soon."""
        response = self._transport.send(Request("POST", f"/v1/runs/{run_id}/cancel"))
        return RunObject.model_validate(response.json())

    def events(self, run_id: str, *, last_event_id: str | None = None) -> EventStream[Event]:
        """The run's events as dicts (DESIGN §4), from after `last_event_id` to `done`."""
        after = _cursor(last_event_id)
        return self._stream(_raw, run_id=run_id, after=after)

    def stream(
        self, agent: str | None = None, *, idempotency_key: str | None = None, **fields: Any
    ) -> EventStream[Event]:
        """Create a run (`POST /v1/runs/stream`) and stream its events as dicts."""
        body = _run_create_body(agent, fields)
        create = _create("/v1/runs/stream", body, idempotency_key, self._options)
        return self._stream(_raw, create=create)


class AsyncRuns(_Resource):
    """`client.runs` of `AsyncClient`."""

    async def create(
        self, agent: str | None = None, *, idempotency_key: str | None = None, **fields: Any
    ) -> RunObject:
        body = _run_create_body(agent, fields)
        async with self._atransport() as transport:
            response = await transport.send(
                _create("/v1/runs", body, idempotency_key, self._options)
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
    ) -> RunList:
        params = {
            "limit": limit,
            "cursor": cursor,
            "status": status,
            "agent": agent,
            "thread_id": thread_id,
        }
        async with self._atransport() as transport:
            response = await transport.send(Request("GET", "/v1/runs", params=params))
        return RunList.model_validate(response.json())

    async def cancel(self, run_id: str) -> RunObject:
        async with self._atransport() as transport:
            response = await transport.send(Request("POST", f"/v1/runs/{run_id}/cancel"))
        return RunObject.model_validate(response.json())

    def events(self, run_id: str, *, last_event_id: str | None = None) -> EventStream[Event]:
        return self._stream(_raw, run_id=run_id, after=_cursor(last_event_id))

    def stream(
        self, agent: str | None = None, *, idempotency_key: str | None = None, **fields: Any
    ) -> EventStream[Event]:
        body = _run_create_body(agent, fields)
        create = _create("/v1/runs/stream", body, idempotency_key, self._options)
        return self._stream(_raw, create=create)


def _cursor(last_event_id: str | None) -> int:
    if last_event_id is None:
        return 0
    if not str(last_event_id).isdigit():
        raise ValidationError(
            f"last_event_id must be a non-negative integer event id (got {last_event_id!r})",
            param="last_event_id",
        )
    return int(last_event_id)


class Shortcuts(_Resource):
    """`client.shortcuts` (FAOS): list and resolve shortcut commands."""

    def list(self, module: str | None = None) -> builtins.list[ShortcutDefinition]:
        response = self._transport.send(Request("GET", "/v1/shortcuts", params={"module": module}))
        return [ShortcutDefinition.model_validate(item) for item in response.json()["data"]]

    def resolve(self, command: str) -> ShortcutResolution:
        response = self._transport.send(
            Request("POST", "/v1/shortcuts/resolve", json={"command": command})
        )
        return ShortcutResolution.model_validate(response.json())


class AsyncShortcuts(_Resource):
    async def list(self, module: str | None = None) -> builtins.list[ShortcutDefinition]:
        async with self._atransport() as transport:
            response = await transport.send(
                Request("GET", "/v1/shortcuts", params={"module": module})
            )
        return [ShortcutDefinition.model_validate(item) for item in response.json()["data"]]

    async def resolve(self, command: str) -> ShortcutResolution:
        async with self._atransport() as transport:
            response = await transport.send(
                Request("POST", "/v1/shortcuts/resolve", json={"command": command})
            )
        return ShortcutResolution.model_validate(response.json())


def shortcut_request(
    command: str, input: dict[str, Any] | str | None, tenant_id: str | None, options: ClientOptions
) -> Request:
    return _create("/v1/runs/wait", _shortcut_body(command, input, tenant_id), None, options)


def shortcut_response(response: httpx.Response) -> AgentResponse:
    return _shortcut_response(InvokeResponse.model_validate(response.json()))
