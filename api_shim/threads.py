"""`/v1/threads`: a thread's history; and how a new run joins its thread (`multitask_strategy`).

Runs on one thread run one at a time (server/thread_gate.py). A run created while its thread
has an active run (queued, running, or paused in `requires_action`) follows its request's
`multitask_strategy`: `enqueue` (the default) waits its turn, `reject` is a 409 `thread_busy`
that creates nothing, `interrupt` asks the active runs to cancel and waits for them to stop.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from api_shim.auth import Caller, acting_tenant
from api_shim.errors import HTTPProblem
from api_shim.state import ShimState, state_of
from runrelay.server.tables import Run, ThreadMessage, as_utc
from runrelay.server.threads import ThreadBusy, Threads
from runrelay.types import RunCreate, ThreadMessageObject, ThreadObject

router = APIRouter(prefix="/v1/threads", tags=["threads"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or invalid API key"},
    404: {"description": "no such thread for this tenant"},
}
_MAX_SEQ = 2**31 - 1


def check_strategy(body: RunCreate) -> None:
    """A strategy says what to do when the thread is busy: it needs a thread to be busy."""
    if body.multitask_strategy is not None and body.thread_id is None:
        raise HTTPProblem(
            422,
            "validation_error",
            f"multitask_strategy ({body.multitask_strategy!r}) applies to a run on an existing "
            "thread: give thread_id too, or leave multitask_strategy out",
            param="multitask_strategy",
        )


async def insert_run(
    state: ShimState,
    run: Run,
    body: RunCreate,
    queued: dict[str, Any],
    task: tuple[str, str] | None,
) -> list[Run]:
    """Create the run (and its thread, if new) as its strategy says, with `run_queued`
    (`queued` its fields) and its Celery task (`task`, None: sent later); returns the runs
    it interrupts (the thread's active runs, for `interrupt`), to be cancelled once it is
    queued."""
    strategy = body.multitask_strategy or "enqueue"
    try:
        active = await state.lifecycle.create(
            run,
            queued,
            reject_if_busy=strategy == "reject",
            new_thread=body.thread_id is None,
            task=task,
        )
    except ThreadBusy as exc:
        raise HTTPProblem(409, "thread_busy", str(exc), param="thread_id") from exc
    return active if strategy == "interrupt" else []


def _message(row: ThreadMessage) -> ThreadMessageObject:
    message = row.message
    return ThreadMessageObject(
        seq=row.seq,
        run_id=row.run_id,
        role=row.role,
        content=message.get("content"),
        tool_calls=message.get("tool_calls"),
        tool_call_id=message.get("tool_call_id"),
        created_at=as_utc(row.created_at),
    )


@router.get(
    "/{thread_id:path}",
    response_model=ThreadObject,
    responses=_ERRORS,
    summary="Get a thread and its messages",
)
async def get_thread(
    request: Request,
    caller: Caller,
    thread_id: str,
    after_seq: Annotated[
        int, Query(ge=0, le=_MAX_SEQ, description="messages after this seq (next_after_seq)")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=1000, description="messages in this page")] = 100,
    tenant_id: Annotated[str | None, Query(max_length=100, pattern=r"^[^\x00]*$")] = None,
) -> ThreadObject:
    """The thread's messages in order (`seq`), a page at a time: `has_more` says whether more
    follow; pass `next_after_seq` as `after_seq` for them."""
    state = state_of(request)
    tenant = await acting_tenant(request, caller, tenant_id)
    missing = HTTPProblem(404, "thread_not_found", f"no thread {thread_id!r}", param="thread_id")
    if not 1 <= len(thread_id) <= 200 or "\x00" in thread_id:
        raise missing
    threads = Threads(state.store.engine)
    thread = await asyncio.to_thread(threads.get, tenant, thread_id)
    if thread is None:
        raise missing
    rows = await asyncio.to_thread(
        threads.messages, tenant, thread_id, after_seq=after_seq, limit=limit + 1
    )
    active = await asyncio.to_thread(threads.active_run_ids, tenant, thread_id)
    page = rows[:limit]
    has_more = len(rows) > limit
    return ThreadObject(
        id=thread.id,
        created_at=as_utc(thread.created_at),
        updated_at=as_utc(thread.updated_at),
        active_run_ids=active,
        messages=[_message(row) for row in page],
        has_more=has_more,
        next_after_seq=page[-1].seq if has_more else None,
    )
