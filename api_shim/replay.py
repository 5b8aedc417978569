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
from dataclasses import dataclass
from typing import Any

from sse_starlette import EventSourceResponse, ServerSentEvent

from api_shim.state import ShimState
from runrelay.server.eventlog import LoggedEvent
from runrelay.server.store import KEY_CACHE_S
from runrelay.server.tables import Run

_ARCHIVE_CHECK_S = 5.0


async def _archived(state: ShimState, run_id: str, after: int) -> list[LoggedEvent]:
    rows = await asyncio.to_thread(state.store.archived_events, run_id, after=after)
    events = []
    for data in rows:
        parsed = json.loads(data)
        events.append(LoggedEvent(seq=parsed["seq"], type=parsed["type"], data=data))
    return events


@dataclass(frozen=True)
class Opening:
    """What a stream starts with: the archive of an ended run (`ended`: that is all there is),
    or the Redis history of a live one, which the live tail then continues."""

    events: list[LoggedEvent]
    ended: bool


async def opening(state: ShimState, run_id: str, after: int, run: Run | None) -> Opening:
    """Read before a stream's headers are sent, so that a store outage is a 503, not a stream
    that drops; `run` is the run's row as the request already read it (None: not in the
    database)."""
    if run is not None and run.status.is_terminal:
        return Opening(await _archived(state, run_id, after), ended=True)
    return Opening(await state.events.read(run_id, after=after), ended=False)


async def run_events(
    state: ShimState,
    run_id: str,
    after: int,
    key_id: str | None = None,
    *,
    start: Opening | None = None,
) -> AsyncIterator[LoggedEvent]:
    """Every event of the run with seq > `after`, in order, ending with `done`; it stops early
    (within `KEY_CACHE_S`) once the API key `key_id` is revoked. `start`: its `opening`, when
    the caller read it already."""

    async def key_revoked() -> bool:
        return key_id is not None and not await state.api_keys.active(key_id)

    if start is None:
        run = await asyncio.to_thread(state.store.get_run, run_id)
        start = await opening(state, run_id, after, run)
    last = after
    for event in start.events:
        yield event
        last = event.seq
        if event.type == "done":
            return
    if start.ended:
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
                # asyncio.timeout, not wait_for: no task per wait (Python 3.11's wait_for makes
                # one), which counts at thousands of streams.
                async with asyncio.timeout(KEY_CACHE_S):
                    event = await sub.queue.get()
                idle_s = 0.0
            except TimeoutError:
                idle_s += KEY_CACHE_S
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


def sse_response(
    state: ShimState,
    run_id: str,
    after: int,
    headers: dict[str, str] | None = None,
    *,
    key_id: str | None = None,
    start: Opening | None = None,
) -> EventSourceResponse:
    async def frames() -> AsyncIterator[ServerSentEvent]:
        retry: int | None = state.settings.sse_retry_ms
        async for event in run_events(state, run_id, after, key_id, start=start):
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
