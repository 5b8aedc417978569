"""`/v1/batches`: upload a batch (JSONL or JSON), read and list batches, follow their progress
(SSE), download their results and errors (JSONL, streamed from the database), cancel them."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.types import Send

from api_shim.auth import Caller, acting_tenant
from api_shim.batch_feeder import stop_batch
from api_shim.batch_upload import (
    BatchOptions,
    JsonBatch,
    LineValidator,
    jsonl_lines,
    store_lines,
)
from api_shim.errors import HTTPProblem, describe, request_id_of
from api_shim.sse import PING, SseResponse, shutting_down
from api_shim.state import ShimState, state_of
from runrelay.batch_types import (
    BatchError,
    BatchList,
    BatchObject,
    BatchResult,
    BatchStatus,
    LineError,
)
from runrelay.server.batch_tables import Batch
from runrelay.server.batches import ResultRow, batch_object, parse_window
from runrelay.server.store import new_id
from runrelay.server.tables import utcnow
from runrelay.types import RunError, Usage

router = APIRouter(prefix="/v1/batches", tags=["batches"])
M = TypeVar("M", bound=BatchOptions)
JSONL_TYPES: tuple[str, ...] = (
    "application/jsonl",
    "application/x-ndjson",
    "application/jsonlines",
    "text/plain",
)
_PAGE = 500
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or invalid API key"},
    404: {"description": "no such batch for this tenant"},
}
_BATCH_ID = re.compile(r"[A-Za-z0-9_\-]{1,64}")


def _options(request: Request) -> BatchOptions:
    """The batch options of a JSONL upload, from the query string."""
    given: dict[str, Any] = dict(request.query_params)
    for name in ("metadata", "model_params"):
        if name in given:
            try:
                given[name] = json.loads(given[name])
            except ValueError as exc:
                raise HTTPProblem(
                    422, "validation_error", f"{name} must be a JSON object ({exc})", param=name
                ) from exc
    return _validated(BatchOptions, given)


def _validated(model: type[M], given: Any) -> M:
    try:
        return model.model_validate(given)
    except ValidationError as exc:
        param, message = describe(exc.errors()[0])
        raise HTTPProblem(422, "validation_error", message, param=param) from exc


@router.post(
    "",
    status_code=202,
    response_model=BatchObject,
    responses={
        **_ERRORS,
        413: {"description": "over the batch's size or line limit"},
        422: {"description": "bad lines (each named), or bad batch options"},
    },
    summary="Create a batch from a JSONL file or a {requests: [...]} body",
)
async def create_batch(
    request: Request, response: Response, caller: Caller
) -> BatchObject | JSONResponse:
    """JSONL (`Content-Type: application/jsonl`, options in the query string) is streamed to
    the database as it arrives; JSON is `{"requests": [...], <options>}`."""
    state = state_of(request)
    settings = state.settings
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in JSONL_TYPES:
        options = _options(request)
        lines: AsyncIterator[list[tuple[int, Any]]] = jsonl_lines(
            request.stream(), max_bytes=settings.batch_max_bytes, max_lines=settings.batch_max_lines
        )
    elif content_type == "application/json":
        try:
            payload = await request.json()
        except ValueError as exc:
            raise HTTPProblem(400, "invalid_json", f"the body is not valid JSON ({exc})") from exc
        options = _validated(JsonBatch, payload)
        requests = options.requests
        if len(requests) > settings.batch_max_lines:
            raise HTTPProblem(
                413, "too_many_lines", f"a batch has at most {settings.batch_max_lines} lines"
            )
        lines = _chunks(list(enumerate(requests, start=1)))
    else:
        raise HTTPProblem(
            415,
            "unsupported_media_type",
            "send the batch as application/jsonl (one run request per line) or as "
            'application/json {"requests": [...]}',
        )
    tenant_id = await acting_tenant(request, caller, options.tenant_id)
    try:
        batch = await _ingest(state, tenant_id, options, lines)
    except _LinesRefused as refused:
        return refused.response(request)
    response.headers["Location"] = f"/v1/batches/{batch.id}"
    return await _object_of(state, batch.id, tenant_id)


async def _chunks(items: list[tuple[int, Any]]) -> AsyncIterator[list[tuple[int, Any]]]:
    for start in range(0, len(items), 1000):
        yield items[start : start + 1000]


async def _ingest(
    state: ShimState,
    tenant_id: str,
    options: BatchOptions,
    lines: AsyncIterator[list[tuple[int, Any]]],
) -> Batch:
    now = utcnow()
    batch = Batch(
        id=new_id("batch"),
        tenant_id=tenant_id,
        status=BatchStatus.VALIDATING.value,
        defaults=options.defaults(),
        batch_metadata=options.metadata,
        completion_window=options.completion_window,
        webhook=options.webhook,
        on_invalid=options.on_invalid,
        created_at=now,
        expires_at=now + parse_window(options.completion_window),
    )
    store = state.batches
    await asyncio.to_thread(store.create, batch)
    validator = LineValidator(state, batch.id, options)
    try:
        await store_lines(state, validator, lines)
    except BaseException:
        await asyncio.to_thread(store.discard, batch.id)
        raise
    refused = validator.invalid and options.on_invalid == "fail"
    if refused or validator.valid == 0:
        await asyncio.to_thread(store.discard, batch.id)
        _refuse(validator)
    return await asyncio.to_thread(
        store.open,
        batch.id,
        total=validator.valid,
        invalid_lines=validator.invalid,
        errors=[e.model_dump() for e in validator.errors],
    )


def _refuse(validator: LineValidator) -> None:
    if not validator.errors:
        raise HTTPProblem(422, "empty_batch", "the batch has no lines", param="requests")
    shown = validator.errors[:20]
    more = validator.invalid - len(shown)
    message = "; ".join(e.message for e in shown) + (f"; and {more} more" if more > 0 else "")
    intro = (
        f"{validator.invalid} line(s) are invalid, so the batch was refused whole "
        "(send on_invalid=skip to run the valid ones): "
    )
    if validator.valid == 0 and validator.options.on_invalid == "skip":
        intro = "no line of the batch is valid: "
    raise _LinesRefused(intro + message, validator.errors)


class _LinesRefused(HTTPProblem):
    def __init__(self, message: str, errors: list[LineError]) -> None:
        first = errors[0]
        super().__init__(422, "invalid_lines", message, param=first.param)
        self.errors = errors

    def response(self, request: Request) -> JSONResponse:
        """The usual error body, plus `errors`: every bad line (the first 1,000)."""
        body = {
            "error": {
                "type": "invalid_request_error",
                "code": self.code,
                "message": self.message,
                "param": self.param,
                "request_id": request_id_of(request),
                "errors": [e.model_dump() for e in self.errors],
            }
        }
        return JSONResponse(body, status_code=self.status)


async def _object_of(state: ShimState, batch_id: str, tenant_id: str | None) -> BatchObject:
    snapshot = await asyncio.to_thread(state.batches.snapshot, batch_id, tenant_id=tenant_id)
    if snapshot is None:
        raise HTTPProblem(404, "batch_not_found", f"no batch {batch_id!r}", param="batch_id")
    return batch_object(snapshot)


async def _own(request: Request, caller: Caller, batch_id: str) -> BatchObject:
    tenant = await acting_tenant(request, caller, None)
    if not _BATCH_ID.fullmatch(batch_id):
        raise HTTPProblem(404, "batch_not_found", f"no batch {batch_id!r}", param="batch_id")
    return await _object_of(state_of(request), batch_id, tenant)


@router.get("", response_model=BatchList, responses=_ERRORS, summary="List the tenant's batches")
async def list_batches(
    request: Request,
    caller: Caller,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9_\-]*$")] = None,
    tenant_id: Annotated[str | None, Query(max_length=100, pattern=r"^[^\x00]*$")] = None,
) -> BatchList:
    state = state_of(request)
    tenant = await acting_tenant(request, caller, tenant_id)
    found = await asyncio.to_thread(
        state.batches.for_tenant, tenant, limit=limit + 1, before=cursor
    )
    page = found[:limit]
    has_more = len(found) > limit
    return BatchList(
        data=[batch_object(s) for s in page],
        has_more=has_more,
        next_cursor=page[-1].batch.id if has_more else None,
    )


@router.get("/{batch_id}", response_model=BatchObject, responses=_ERRORS, summary="Get a batch")
async def get_batch(request: Request, caller: Caller, batch_id: str) -> BatchObject:
    return await _own(request, caller, batch_id)


@router.post(
    "/{batch_id}/cancel",
    response_model=BatchObject,
    responses={**_ERRORS, 409: {"description": "the batch already ended"}},
    summary="Cancel a batch",
)
async def cancel_batch(request: Request, caller: Caller, batch_id: str) -> BatchObject:
    """Lines not started never start; running ones are cancelled; what finished stays in the
    results. The batch is `cancelling` until its last run stopped, then `cancelled`."""
    state = state_of(request)
    batch = await _own(request, caller, batch_id)
    if batch.status in (BatchStatus.CANCELLING, BatchStatus.CANCELLED):
        return batch
    if batch.status is BatchStatus.VALIDATING:
        raise HTTPProblem(
            409,
            "batch_not_cancellable",
            f"batch {batch.id} is still being uploaded; cancel it once the upload answered",
            param="batch_id",
        )
    stopped = await stop_batch(state, batch.id, expire=False)
    if stopped is None:
        raise HTTPProblem(
            409,
            "batch_not_cancellable",
            f"batch {batch.id} is already {batch.status}; only a batch in progress can be "
            "cancelled",
            param="batch_id",
        )
    return await _object_of(state, batch.id, None)


def _result_line(row: ResultRow) -> str:
    assert row.run_id is not None  # a completed line had a run
    usage = Usage(**{k: v for k, v in row.usage.items() if k != "by_model"}) if row.usage else None
    return BatchResult(
        custom_id=row.custom_id,
        line=row.line,
        run_id=row.run_id,
        output=row.output,
        result=row.result,
        usage=usage,
    ).model_dump_json()


def _error_line(row: ResultRow) -> str:
    if row.error:
        error = RunError(code=row.error.get("code", "error"), message=row.error.get("message", ""))
    else:
        message = row.item_error or f"the line's run ended {row.item_status}"
        error = RunError(code=row.item_status, message=message)
    return BatchError(
        custom_id=row.custom_id,
        line=row.line,
        run_id=row.run_id,
        status=row.item_status,
        error=error,
    ).model_dump_json()


def _download(state: ShimState, batch_id: str, *, errors: bool) -> StreamingResponse:
    render = _error_line if errors else _result_line

    async def lines() -> AsyncIterator[bytes]:
        after = 0
        while True:
            page = await asyncio.to_thread(
                state.batches.results_page, batch_id, errors=errors, after=after, limit=_PAGE
            )
            if not page:
                return
            yield "".join(render(row) + "\n" for row in page).encode()
            after = page[-1].line

    name = "errors" if errors else "results"
    return StreamingResponse(
        lines(),
        media_type="application/jsonl",
        headers={"Content-Disposition": f'attachment; filename="{batch_id}-{name}.jsonl"'},
    )


@router.get(
    "/{batch_id}/results",
    responses={**_ERRORS, 200: {"content": {"application/jsonl": {}}}},
    summary="The completed lines (JSONL), so far",
)
async def results(request: Request, caller: Caller, batch_id: str) -> StreamingResponse:
    batch = await _own(request, caller, batch_id)
    return _download(state_of(request), batch.id, errors=False)


@router.get(
    "/{batch_id}/errors",
    responses={**_ERRORS, 200: {"content": {"application/jsonl": {}}}},
    summary="The failed, cancelled and expired lines (JSONL), so far",
)
async def errors(request: Request, caller: Caller, batch_id: str) -> StreamingResponse:
    batch = await _own(request, caller, batch_id)
    return _download(state_of(request), batch.id, errors=True)


def _version(value: str, source: str) -> int:
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise HTTPProblem(
            400,
            "invalid_cursor",
            f"{source} must be a non-negative integer event id (got {value!r})",
            param=source,
        )
    return int(value)


class BatchProgress(SseResponse):
    """A batch's `batch.progress` events, then its `batch.done` (see `events`): its state is
    read every `batch_progress_poll_s`, and sent when its version moved."""

    def __init__(self, state: ShimState, batch_id: str, after: int) -> None:
        super().__init__({})
        self._state = state
        self._batch_id = batch_id
        self._after = after

    async def _stream(self, send: Send, gone: asyncio.Future[None]) -> bool:
        settings = self._state.settings
        seen = self._after
        retry_ms: int | None = settings.sse_retry_ms  # on the first frame only
        wrote = time.monotonic()
        while not gone.done() and not shutting_down():
            snapshot = await asyncio.to_thread(self._state.batches.snapshot, self._batch_id)
            if snapshot is None:  # an upload refused while it was followed
                return False
            version = snapshot.batch.version
            ended = BatchStatus(snapshot.batch.status).is_terminal
            if version > seen:
                kind = "batch.done" if ended else "batch.progress"
                data = batch_object(snapshot).model_dump_json()  # one line: JSON escapes \n
                retry = "" if retry_ms is None else f"retry: {retry_ms}\n"
                frame = f"id: {version}\nevent: {kind}\ndata: {data}\n{retry}\n".encode()
                await send({"type": "http.response.body", "body": frame, "more_body": not ended})
                if ended:
                    return True  # its `batch.done` ended the body
                seen, retry_ms, wrote = version, None, time.monotonic()
            elif ended:  # followed from its last version: nothing more to send
                return False
            elif settings.sse_ping_s and time.monotonic() - wrote >= settings.sse_ping_s:
                await send({"type": "http.response.body", "body": PING, "more_body": True})
                wrote = time.monotonic()
            await asyncio.wait({gone}, timeout=settings.batch_progress_poll_s)
        return False


@router.get(
    "/{batch_id}/events",
    responses={**_ERRORS, 200: {"content": {"text/event-stream": {}}}},
    summary="Follow a batch's progress (SSE)",
)
async def events(
    request: Request,
    caller: Caller,
    batch_id: str,
    after: Annotated[str | None, Query(description="resume after this event id")] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> BatchProgress:
    """`batch.progress` events, each the whole batch object, whenever it changed (the event id
    is the batch's version, which only grows), then one `batch.done` once it ended. Resuming
    with `Last-Event-ID` (or `?after=`) sends the current state if it changed since."""
    cursor = 0
    if after is not None:
        cursor = _version(after, "after")
    elif last_event_id is not None:
        cursor = _version(last_event_id.strip(), "Last-Event-ID")
    batch = await _own(request, caller, batch_id)
    return BatchProgress(state_of(request), batch.id, cursor)
