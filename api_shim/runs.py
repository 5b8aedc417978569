"""`/v1/runs`: create (background, wait, stream), read, list, cancel, and replay a run's events."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response

from api_shim import idempotency, threads
from api_shim.auth import Caller, acting_tenant
from api_shim.cancel import CANCEL_WAIT_S, request_cancel, wait_finished
from api_shim.errors import HTTPProblem, request_id_of
from api_shim.quotas import Admission, rate_headers, reserve_tokens
from api_shim.replay import opening, run_events, sse_response
from api_shim.state import ShimState, state_of
from api_shim.stream_tokens import ReadableRun, readable_run, stream_token_for
from runrelay.agent._driver import Outcome
from runrelay.agent.config import AgentNotFound, AgentSpec
from runrelay.server.approvals import PausedCalls
from runrelay.server.lifecycle import queued_run
from runrelay.server.loop_database import on_loop
from runrelay.server.revisions import RevisionNotFound
from runrelay.server.run_table import Ending
from runrelay.server.store import new_id
from runrelay.server.tables import Run, RunRef, as_utc
from runrelay.server.tenants import TenantLimits
from runrelay.types import (
    AgentRef,
    RequiredAction,
    RunCreate,
    RunError,
    RunList,
    RunObject,
    RunStatus,
    Usage,
    WaitingFor,
    WaitResponse,
    WebhookSpec,
)

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/runs", tags=["runs"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or invalid API key"},
    404: {"description": "no such run for this tenant"},
}


def run_object(run: Run) -> RunObject:
    return RunObject(
        id=run.id,
        tenant_id=run.tenant_id,
        status=run.status,
        agent=AgentRef(
            name=run.agent_name, id=run.agent_id, revision=run.agent_revision, tag=run.agent_tag
        ),
        thread_id=run.thread_id,
        input=run.input,
        message=run.message,
        metadata=run.run_metadata or {},
        model_id=run.model_id,
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
        output=run.output,
        result=run.result,
        usage=Usage(**run.usage) if run.usage else None,
        usage_by_model=_by_model(run.usage),
        error=RunError(**run.error) if run.error else None,
        required_action=_public_action(run),
        attempts=run.attempts,
        events_url=f"/v1/runs/{run.id}/events",
        schedule_id=run.schedule_id,  # schedules (issue 12)
        scheduled_for=as_utc(run.scheduled_for) if run.scheduled_for else None,
        webhook=WebhookSpec.model_validate(run.webhook) if run.webhook else None,
    )


def _public_action(run: Run) -> RequiredAction | None:
    """What a paused run waits for (its checkpoint is never part of the run object)."""
    paused = PausedCalls.of(run.required_action)
    return paused.public() if paused and run.status is RunStatus.REQUIRES_ACTION else None


def _by_model(usage: dict[str, Any] | None) -> dict[str, Usage] | None:
    by_model = (usage or {}).get("by_model")
    return {model: Usage(**u) for model, u in by_model.items()} if by_model else None


async def _resolve(
    state: ShimState, body: RunCreate, tenant_id: str
) -> tuple[AgentSpec, TenantLimits]:
    """The agent revision the run will run and its tenant's limits: the database reads of an
    admission. On the loop's database where the process attached one, in one statement when
    it can (else both at once; an unknown agent is answered before an unknown tenant); else
    in one thread hop."""
    if on_loop(state.store.engine) is None:
        return await asyncio.to_thread(_resolve_in_thread, state, body, tenant_id)
    with _agent_errors(body):
        both = await state.catalog.with_tenant_async(body, tenant_id)  # one statement
    if both is not None:
        return both[0], state.quotas.limits_of(tenant_id, both[1])
    agent, limits = await asyncio.gather(
        state.catalog.for_request_async(body),
        state.quotas.read_limits_async(tenant_id),
        return_exceptions=True,
    )
    with _agent_errors(body):
        if isinstance(agent, BaseException):
            raise agent
    if isinstance(limits, BaseException):
        raise limits
    return agent, limits


def _resolve_in_thread(
    state: ShimState, body: RunCreate, tenant_id: str
) -> tuple[AgentSpec, TenantLimits]:
    return _resolve_agent(state, body), state.quotas.read_limits(tenant_id)


def _resolve_agent(state: ShimState, body: RunCreate) -> AgentSpec:
    """The agent revision the run will run (see `runrelay.server.revisions`). Reads the database."""
    with _agent_errors(body):
        return state.catalog.for_request(body)


@contextmanager
def _agent_errors(body: RunCreate) -> Iterator[None]:
    """A revision or agent the request names that does not exist: 404, naming the field."""
    try:
        yield
    except RevisionNotFound as exc:
        raise HTTPProblem(404, "revision_not_found", str(exc), param="revision") from exc
    except AgentNotFound as exc:
        param = "tag" if body.tag else "agent_id" if body.agent_id else "agent"
        raise HTTPProblem(404, "agent_not_found", str(exc), param=param) from exc


@dataclass(frozen=True)
class Created:
    run: Run
    # None when an earlier run is returned (idempotency): nothing was admitted.
    admission: Admission | None


async def create_run(request: Request, caller: Caller, body: RunCreate) -> Created:
    """Admit a run; with an idempotency key, a repeat of the same request returns the same run."""
    state = state_of(request)
    limit = state.settings.max_run_timeout_s
    if body.timeout_s is not None and body.timeout_s > limit:
        raise HTTPProblem(
            422,
            "validation_error",
            f"timeout_s must be at most {limit:g} s, the server's maximum "
            f"(RUNRELAY_MAX_RUN_TIMEOUT_S); got {body.timeout_s:g}",
            param="timeout_s",
        )
    threads.check_strategy(body)
    tenant_id = await acting_tenant(request, caller, body.tenant_id)
    key = idempotency.idempotency_key(request, body)
    agent, limits = await _resolve(state, body, tenant_id)
    run_id = new_id("run")
    if key is not None:
        earlier = await idempotency.claim(
            state, tenant_id, key, idempotency.fingerprint(body), run_id
        )
        if earlier is not None:
            return Created(await idempotency.earlier_run(state, earlier), None)
    try:
        return await _admit(request, state, tenant_id, agent, body, run_id, limits=limits)
    except BaseException:
        if key is not None:
            await idempotency.release(state, tenant_id, key, run_id)
        raise


async def _admit(
    request: Request,
    state: ShimState,
    tenant_id: str,
    agent: AgentSpec,
    body: RunCreate,
    run_id: str,
    *,
    limits: TenantLimits,
) -> Created:
    # quotas: a 429 here has written nothing; past it the run holds a slot or a pending place.
    admission = await state.quotas.admit(
        tenant_id, run_id, reserve=reserve_tokens(body, agent, state.settings), limits=limits
    )
    run = queued_run(run_id, tenant_id, body, agent, request_id=request_id_of(request))
    queued = {"agent": agent.name, "agent_id": agent.id, "thread_id": run.thread_id}
    # quotas: else the dispatcher sends it when a slot frees
    task = state.sender.run_message(run.id, RunRef.of(run)) if admission.dispatch_now else None
    try:
        # 409 for `reject`; the row, then `run_queued` and the task in one round trip
        interrupted = await threads.insert_run(state, run, body, queued, task)
    except BaseException as exc:
        if await state.store.get_run_async(run.id) is None:
            await state.quotas.abandon(admission)  # nothing written: undo the admission
            raise
        if not isinstance(exc, Exception):
            await _enqueue_failed(state, run, "the run could not be queued")
            raise
        log.exception("run %s could not be enqueued", run.id)
        await _enqueue_failed(state, run, f"the run could not be queued: {exc}")
        raise HTTPProblem(
            503, "enqueue_failed", "the run could not be queued (broker unavailable); retry later"
        ) from exc
    for active in interrupted:  # threads: `interrupt`; the new run starts once they stop
        await request_cancel(state, active)
    return Created(run, admission)


async def _enqueue_failed(state: ShimState, run: Run, message: str) -> None:
    """The run was written but cannot be queued: it ends `failed` (`enqueue_failed`), with
    `done`, through the lifecycle (which gives back its admission and its thread)."""
    try:
        await state.lifecycle.finish(
            run, Outcome.failed("enqueue_failed", message), ending=Ending.from_(RunStatus.QUEUED)
        )
    except Exception:  # Redis or the database is down too: the sweeper's stuck-queued bound
        log.exception("run %s: could not be ended after its enqueue failed", run.id)


@router.post(
    "",
    status_code=202,
    response_model=RunObject,
    responses=_ERRORS,
    summary="Create a background run",
)
async def create(
    request: Request, response: Response, caller: Caller, body: RunCreate
) -> RunObject:
    created = await create_run(request, caller, body)
    state_of(request).recent_runs.add(created.run)  # its client may open its stream next
    response.headers["Location"] = f"/v1/runs/{created.run.id}"
    if created.admission is not None:
        response.headers.update(rate_headers(created.admission.decision))
    obj = run_object(created.run)
    obj.stream_url = (await stream_token_for(request, created.run, caller)).stream_url  # browsers
    if created.admission is not None and created.admission.dispatch_now and body.thread_id is None:
        # Just sent to Celery, on a thread of its own: nothing else to wait for.
        obj.waiting_for = WaitingFor(reason="dispatch")
    else:
        obj.waiting_for = await waiting_for(state_of(request), created.run)
    return obj


@router.post(
    "/wait",
    response_model=WaitResponse,
    responses=_ERRORS,
    summary="Create a run and wait for its result",
)
async def create_and_wait(request: Request, caller: Caller, body: RunCreate) -> WaitResponse:
    state = state_of(request)
    run = (await create_run(request, caller, body)).run
    try:
        async with asyncio.timeout(state.settings.wait_timeout_s):
            async for event in run_events(state, run.id, 0):
                if event.type == "approval_required" and await paused(state, run.id):
                    break  # answered now: the run waits for a person, not for the worker
    except TimeoutError as exc:
        raise HTTPProblem(
            504,
            "wait_timeout",
            f"run {run.id} is still running after {state.settings.wait_timeout_s:g} s; "
            f"follow it at /v1/runs/{run.id}",
        ) from exc
    finished = await state.store.get_run_async(run.id)
    assert finished is not None  # runs are never deleted
    obj = run_object(finished)
    duration_ms = None
    if finished.started_at and finished.finished_at:
        duration_ms = int((finished.finished_at - finished.started_at).total_seconds() * 1000)
    metadata = {
        "run_id": run.id,
        "status": finished.status,
        "agent": finished.agent_name,
        "agent_id": finished.agent_id,
        "agent_revision": finished.agent_revision,
        "model": finished.model_id or await _model_of(state, finished),
        "thread_id": finished.thread_id,
        "duration_ms": duration_ms,
    }
    if obj.error is not None:
        metadata["error"] = obj.error.model_dump()
    return WaitResponse(
        result=finished.result or {"output": finished.output or ""},
        metadata=metadata,
        usage=obj.usage or Usage(),
        request_id=request_id_of(request),
        run=obj,
    )


async def paused(state: ShimState, run_id: str) -> bool:
    """Whether the run is (or within a moment becomes) `requires_action`: its worker writes
    the pause right after the last `approval_required` event."""
    for _ in range(50):
        run = await state.store.get_run_async(run_id)
        if run is None or run.status is not RunStatus.RUNNING:
            return run is not None and run.status is RunStatus.REQUIRES_ACTION
        await asyncio.sleep(0.05)
    return False


async def _model_of(state: ShimState, run: Run) -> str | None:
    try:
        agent = await asyncio.to_thread(state.catalog.pinned, run.agent_id, run.agent_revision)
    except LookupError:
        return None
    return agent.model


@router.post(
    "/stream",
    responses={**_ERRORS, 200: {"content": {"text/event-stream": {}}}},
    summary="Create a run and stream its events (SSE)",
)
async def create_and_stream(
    request: Request, caller: Caller, body: RunCreate
) -> Response:
    run = (await create_run(request, caller, body)).run
    return sse_response(
        state_of(request),
        run.id,
        0,
        headers={"Content-Location": f"/v1/runs/{run.id}/events", "X-Run-ID": run.id},
        key_id=caller.key_id,
    )


_NO_NUL = r"^[^\x00]*$"


@router.get("", response_model=RunList, responses=_ERRORS, summary="List the tenant's runs")
async def list_runs(
    request: Request,
    caller: Caller,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[
        str | None,
        Query(max_length=64, pattern=_NO_NUL, description="next_cursor of the previous page"),
    ] = None,
    status: Annotated[RunStatus | None, Query(description="only runs in this status")] = None,
    agent: Annotated[str | None, Query(max_length=200, pattern=_NO_NUL)] = None,
    thread_id: Annotated[str | None, Query(max_length=200, pattern=_NO_NUL)] = None,
    tenant_id: Annotated[str | None, Query(max_length=100, pattern=_NO_NUL)] = None,
    schedule_id: Annotated[str | None, Query(max_length=40, pattern=_NO_NUL)] = None,
) -> RunList:
    state = state_of(request)
    tenant = await acting_tenant(request, caller, tenant_id)
    runs = await asyncio.to_thread(
        state.store.list_runs,
        tenant,
        limit=limit + 1,
        before=cursor,
        status=status,
        agent=agent,
        thread_id=thread_id,
        schedule_id=schedule_id,
    )
    page = runs[:limit]
    has_more = len(runs) > limit
    return RunList(
        data=[run_object(r) for r in page],
        has_more=has_more,
        next_cursor=page[-1].id if has_more else None,
    )


_RUN_ID = re.compile(r"[A-Za-z0-9_\-]{1,64}")


async def own_run(request: Request, caller: Caller, run_id: str) -> Run:
    state = state_of(request)
    tenant = await acting_tenant(request, caller, None)
    if not _RUN_ID.fullmatch(run_id):  # a NUL or other junk would reach the database
        raise HTTPProblem(404, "run_not_found", f"no run {run_id!r}", param="run_id")
    run = await state.store.get_run_async(run_id, tenant_id=tenant)
    if run is None:
        raise HTTPProblem(404, "run_not_found", f"no run {run_id!r}", param="run_id")
    return run


@router.get("/{run_id}", response_model=RunObject, responses=_ERRORS, summary="Get a run")
async def get_run(request: Request, caller: Caller, run_id: str) -> RunObject:
    run = await own_run(request, caller, run_id)
    obj = run_object(run)
    obj.waiting_for = await waiting_for(state_of(request), run)
    return obj


async def waiting_for(state: ShimState, run: Run) -> WaitingFor | None:
    """Why a queued run has not started, read from where it waits (one Redis round trip)."""
    if run.status is not RunStatus.QUEUED:
        return None
    keys = state.events.keys
    async with state.redis.pipeline(transaction=False) as pipe:
        pipe.lpos(keys.tenant_pending(run.tenant_id), run.id)
        if run.thread_id is not None:
            pipe.zrank(keys.thread_waiting(run.tenant_id, run.thread_id), run.id)
        found = await pipe.execute()
    if found[0] is not None:
        return WaitingFor(reason="concurrency_limit", position=int(found[0]) + 1)
    if len(found) > 1 and found[1] is not None:
        return WaitingFor(reason="thread", position=int(found[1]) + 1)
    return WaitingFor(reason="dispatch")


@router.post(
    "/{run_id}/cancel",
    response_model=RunObject,
    responses={
        **_ERRORS,
        202: {"description": "cancel requested; the run has not stopped yet"},
        409: {"description": "the run already finished"},
    },
    summary="Cancel a queued or running run",
)
async def cancel(request: Request, response: Response, caller: Caller, run_id: str) -> RunObject:
    """A queued run never starts; a running one stops within about a second. Both end with
    `done` status `cancelled`. 200 with the cancelled run, or 202 if it is still stopping."""
    state = state_of(request)
    run = await own_run(request, caller, run_id)
    requested = await request_cancel(state, run)
    if requested is None:
        current = await state.store.get_run_async(run.id)
        status = current.status if current else run.status
        raise HTTPProblem(
            409,
            "run_not_cancellable",
            f"run {run.id} is already {status}; only a queued, running or requires_action run "
            "can be cancelled",
            param="run_id",
        )
    final = await wait_finished(state, run.id, CANCEL_WAIT_S)
    response.status_code = 200 if final.status.is_terminal else 202
    return run_object(final)


_MAX_SEQ = 2**62  # far past any log; Redis stream ids stop at 2**64 - 1


def _cursor(value: str, source: str) -> int:
    # The length first: `int()` of a string past 4,300 digits raises (Python's int limit).
    if (
        not (value.isascii() and value.isdigit())
        or len(value) > len(str(_MAX_SEQ))
        or int(value) > _MAX_SEQ
    ):
        raise HTTPProblem(
            400,
            "invalid_cursor",
            f"{source} must be a non-negative integer event seq (got {value!r})",
            param=source,
        )
    return int(value)


@router.get(
    "/{run_id}/events",
    responses={**_ERRORS, 200: {"content": {"text/event-stream": {}}}},
    summary="Replay and tail a run's events (SSE)",
)
async def events(
    request: Request,
    readable: Annotated[ReadableRun, Depends(readable_run)],
    after: Annotated[str | None, Query(description="resume after this seq")] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> Response:
    """Events with seq above the cursor, then the live tail, closed after `done`. The cursor is
    `Last-Event-ID` when sent (a reconnecting `EventSource` sends it; it beats a stale `?after`
    in the URL), else `?after`. Nothing left after `done`: 204, which stops `EventSource`."""
    cursor = 0
    if last_event_id is not None:
        cursor = _cursor(last_event_id.strip(), "Last-Event-ID")
    elif after is not None:
        cursor = _cursor(after, "after")
    state = state_of(request)
    run = readable.run
    # Before the headers: if Redis or the database is down, the client gets a 503 rather than
    # a stream that drops.
    start = await opening(state, run.id, cursor, run)
    if readable.recent and not start.events:
        # Nothing above the cursor in a run created moments ago: it may have ended already
        # (a client reconnecting after `done` gets 204): read it, as for any other run.
        read = await state.store.get_run_async(run.id, tenant_id=run.tenant_id)
        start = await opening(state, run.id, cursor, read or run)
    if start.ended and not start.events:
        return Response(status_code=204)
    return sse_response(state, run.id, cursor, key_id=readable.key_id, start=start)
