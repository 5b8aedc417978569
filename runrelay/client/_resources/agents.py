"""`client.agents`: FAOS invoke/ainvoke/stream and Mentiora run/run_async/stream/stream_async on
one object, in a sync flavour (on `Client`) and an async one (on `AsyncClient`).

`agents.stream` dispatches on its first argument: an `AgentRunParams` gives Mentiora typed
events (stopping after an `error` event, as that SDK does); an agent name (with an input dict or
a message) gives FAOS chunks. Either stream can be iterated with `for` (sync client) or
`async for`.
"""

from __future__ import annotations

from typing import Any, TypedDict, overload

from runrelay.client._params import AgentRunParams, invoke_body, run_body
from runrelay.client._resources.base import Event, Resource, create_request
from runrelay.client._responses import (
    AgentRunResult,
    AgentStreamEvent,
    InvokeResponse,
    StreamChunk,
    run_result,
    to_agent_event,
    to_chunk,
)
from runrelay.client._streaming import EventStream
from runrelay.client._transport import Request
from runrelay.errors import ValidationError
from runrelay.types import AgentInfo, MultitaskStrategy

_MENTIORA_STOP = frozenset({"done", "error"})
AgentInfoList = list[AgentInfo]


class ThreadArgs(TypedDict):
    thread_id: str | None
    multitask_strategy: MultitaskStrategy | None


def _stream_create(
    agent: str | AgentRunParams,
    input: dict[str, Any] | str | None,
    tenant_id: str | None,
    last_event_id: str | None,
    run_id: str | None,
    idempotency_key: str | None,
    thread: ThreadArgs,
) -> tuple[Event, int, frozenset[str]]:
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
    body = invoke_body(agent, input, tenant_id=tenant_id, **thread)
    return body, after, frozenset({"done"})


class _AgentsResource(Resource):
    """What `Agents` and `AsyncAgents` share: streams, one object for `for` and `async for`."""

    def _events_stream(
        self,
        agent: str | AgentRunParams,
        input: dict[str, Any] | str | None,
        *,
        tenant_id: str | None,
        last_event_id: str | None,
        run_id: str | None,
        idempotency_key: str | None,
        thread: ThreadArgs,
    ) -> EventStream[Any]:
        body, after, stop = _stream_create(
            agent, input, tenant_id, last_event_id, run_id, idempotency_key, thread
        )
        convert = to_agent_event if isinstance(agent, AgentRunParams) else to_chunk
        create = create_request("/v1/runs/stream", body, idempotency_key, self._options)
        return self._stream(convert, create=create, run_id=run_id, after=after, stop_types=stop)

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
        thread_id: str | None = None,
        multitask_strategy: MultitaskStrategy | None = None,
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
        thread_id: str | None = None,
        multitask_strategy: MultitaskStrategy | None = None,
    ) -> EventStream[AgentStreamEvent] | EventStream[StreamChunk]:
        """Stream a run: FAOS chunks for `stream(agent, input)`, Mentiora typed events for
        `stream(AgentRunParams(...))` (whose thread fields are in the params). Reconnects by
        itself; see `EventStream`."""
        return self._events_stream(
            agent,
            input,
            tenant_id=tenant_id,
            last_event_id=last_event_id,
            run_id=run_id,
            idempotency_key=idempotency_key,
            thread={"thread_id": thread_id, "multitask_strategy": multitask_strategy},
        )

    def stream_async(
        self, params: AgentRunParams, *, idempotency_key: str | None = None
    ) -> EventStream[AgentStreamEvent]:
        """`async for event in client.agents.stream_async(params)` (Mentiora)."""
        return self.stream(params, idempotency_key=idempotency_key)


class Agents(_AgentsResource):
    """`client.agents` of the sync `Client`."""

    def list(self) -> AgentInfoList:
        """The agents the API can run (their newest revisions), with shortcuts and tags."""
        response = self._transport.send(Request("GET", "/v1/agents"))
        return [AgentInfo.model_validate(item) for item in response.json()["data"]]

    def invoke(
        self,
        agent: str,
        input: dict[str, Any] | str | None = None,
        tenant_id: str | None = None,
        *,
        idempotency_key: str | None = None,
        thread_id: str | None = None,
        multitask_strategy: MultitaskStrategy | None = None,
    ) -> InvokeResponse:
        """Run `agent` on `input` and wait for the result (FAOS). With `thread_id` the run
        continues that conversation; `multitask_strategy` says what to do if the thread is busy:
        `enqueue` (the default: run after the active run), `reject` (`ConflictError`, code
        `thread_busy`) or `interrupt` (cancel the active run)."""
        body = invoke_body(
            agent,
            input,
            tenant_id=tenant_id,
            thread_id=thread_id,
            multitask_strategy=multitask_strategy,
        )
        response = self._transport.send(
            create_request("/v1/runs/wait", body, idempotency_key, self._options)
        )
        return InvokeResponse.model_validate(response.json())

    async def ainvoke(
        self,
        agent: str,
        input: dict[str, Any] | str | None = None,
        tenant_id: str | None = None,
        *,
        idempotency_key: str | None = None,
        thread_id: str | None = None,
        multitask_strategy: MultitaskStrategy | None = None,
    ) -> InvokeResponse:
        body = invoke_body(
            agent,
            input,
            tenant_id=tenant_id,
            thread_id=thread_id,
            multitask_strategy=multitask_strategy,
        )
        async with self._atransport() as transport:
            response = await transport.send(
                create_request("/v1/runs/wait", body, idempotency_key, self._options)
            )
        return InvokeResponse.model_validate(response.json())

    def run(self, params: AgentRunParams, *, idempotency_key: str | None = None) -> AgentRunResult:
        """Run an agent and return the complete result (Mentiora)."""
        request = create_request("/v1/runs/wait", run_body(params), idempotency_key, self._options)
        return run_result(InvokeResponse.model_validate(self._transport.send(request).json()))

    async def run_async(
        self, params: AgentRunParams, *, idempotency_key: str | None = None
    ) -> AgentRunResult:
        request = create_request("/v1/runs/wait", run_body(params), idempotency_key, self._options)
        async with self._atransport() as transport:
            response = await transport.send(request)
        return run_result(InvokeResponse.model_validate(response.json()))


class AsyncAgents(_AgentsResource):
    """`client.agents` of `AsyncClient`: the same calls, awaited."""

    async def invoke(
        self,
        agent: str,
        input: dict[str, Any] | str | None = None,
        tenant_id: str | None = None,
        *,
        idempotency_key: str | None = None,
        thread_id: str | None = None,
        multitask_strategy: MultitaskStrategy | None = None,
    ) -> InvokeResponse:
        body = invoke_body(
            agent,
            input,
            tenant_id=tenant_id,
            thread_id=thread_id,
            multitask_strategy=multitask_strategy,
        )
        async with self._atransport() as transport:
            response = await transport.send(
                create_request("/v1/runs/wait", body, idempotency_key, self._options)
            )
        return InvokeResponse.model_validate(response.json())

    ainvoke = invoke

    async def run(
        self, params: AgentRunParams, *, idempotency_key: str | None = None
    ) -> AgentRunResult:
        request = create_request("/v1/runs/wait", run_body(params), idempotency_key, self._options)
        async with self._atransport() as transport:
            response = await transport.send(request)
        return run_result(InvokeResponse.model_validate(response.json()))

    run_async = run
