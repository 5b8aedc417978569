"""Replaying a run's events to one client: history, then the live tail, then close after `done`.

A finished run is replayed from the database archive. A live one is read from Redis with XRANGE
above the client's cursor, then followed through the hub from the last seq seen (never from
`$`), so there is no gap and no duplicate between history and tail. While waiting, the run's row
is re-read now and then: if it ended and its stream is gone, the rest comes from the archive.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from sse_starlette import EventSourceResponse, ServerSentEvent

from api_shim.state import KEY_CHECK_S, ShimState
from runrelay.server.eventlog import LoggedEvent
from runrelay.server.tables import Run

_ARCHIVE_CHECK_S = 5.0
# How often an open stream checks that its API key was not revoked meanwhile.


async def _archived(state: ShimState, run_id: str, after: int) -> list[LoggedEvent]:
    rows = await asyncio.to_thread(state.store.archived_events, run_id, after=after)
    events = []
    for data in rows:
        parsed = json.loads(data)
        events.append(LoggedEvent(seq=parsed["seq"], type=parsed["type"], data=data))
    return events


async def run_events(
    state: ShimState, run_id: str, after: int, key_id: str | None = None
) -> AsyncIterator[LoggedEvent]:
    """Every event of the run with seq > `after`, in order, ending with `done`; it stops early
    (within `KEY_CHECK_S`) once the API key `key_id` is revoked."""
    async def key_revoked() -> bool:
        return key_id is not None and not await state.live_keys.active(key_id)

    run = await asyncio.to_thread(state.store.get_run, run_id)
    if run is not None and run.status.is_terminal:
        for event in await _archived(state, run_id, after):
            yield event
        return
    last = after
    for event in await state.events.read(run_id, after=after):
        yield event
        last = event.seq
        if event.type == "done":
            return
    async for event in _tail(state, run_id, last, key_revoked):
        yield event


async def _tail(
    state: ShimState, run_id: str, last: int, key_revoked: Callable[[], Awaitable[bool]]
) -> AsyncIterator[LoggedEvent]:
    """The live part: events above `last` through the hub, to `done` (or the archive's)."""
    sub = await state.hub.subscribe(run_id, last)
    idle_s = 0.0
    try:
        while True:
            if await key_revoked():
                return
            try:
                event = await asyncio.wait_for(sub.queue.get(), timeout=KEY_CHECK_S)
                idle_s = 0.0
            except TimeoutError:
                idle_s += KEY_CHECK_S
                if idle_s < _ARCHIVE_CHECK_S:
                    continue
                idle_s = 0.0
                # Finished in the database (which is written before `done` reaches the
                # stream) but no `done` came: the rest, `done` included, is in the archive.
                run = await asyncio.to_thread(state.store.get_run, run_id)
                if run is not None and run.status.is_terminal:
                    for archived in await _archived(state, run_id, last):
                        yield archived
                    return
                continue
            if event.seq <= last:
                continue
            yield event
            last = event.seq
            if event.type == "done":
                return
    finally:
        state.hub.unsubscribe(sub)


async def nothing_after(state: ShimState, run: Run, after: int) -> bool:
    """Whether the run ended and its log has no event above `after` (a reconnect after `done`)."""
    if not run.status.is_terminal:
        return False
    return not await _archived(state, run.id, after)


def sse_response(
    state: ShimState,
    run_id: str,
    after: int,
    headers: dict[str, str] | None = None,
    *,
    key_id: str | None = None,
) -> EventSourceResponse:
    async def frames() -> AsyncIterator[ServerSentEvent]:
        retry: int | None = state.settings.sse_retry_ms
        async for event in run_events(state, run_id, after, key_id):
            yield ServerSentEvent(data=event.data, event=event.type, id=str(event.seq), retry=retry)
            retry = None

    all_headers: dict[str, Any] = {
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
        **(headers or {}),
    }
    return EventSourceResponse(
        frames(),
        headers=all_headers,
        ping=state.settings.sse_ping_s,
        sep="\n",
        ping_message_factory=lambda: ServerSentEvent(comment="ping"),
    )
