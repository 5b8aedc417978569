"""Replaying a run's events to one client: history, then the live tail, then close after `done`.

A finished run is replayed from the database archive. A live one is read from Redis with XRANGE
above the client's cursor, then followed through the hub from the last seq seen (never from
`$`), so there is no gap and no duplicate between history and tail. While waiting, the run's row
is re-read now and then: if it ended and its stream is gone, the rest comes from the archive.

`EventStream` is the SSE response (`api_shim/sse.py`): a coroutine per stream writes the events
(several in one write when they came together), a `: ping` after `sse_ping_s` without one, and
stops when the client goes, the key is revoked or the server shuts down. The request's coroutine
sits under some twenty layers of ASGI middleware and routing, so the route only starts the
response and hands the writer to `RequestIdMiddleware` (`DETACH`), which awaits it in place of
those layers: they return and their objects are freed, so a waiting stream holds a third as many
objects for the garbage collector to walk, and an event resumes three frames above the writer,
not twenty. The writer sends its chunks, and the end of the body, with the server's `send` (the
middleware's `BODY_SEND`), not through the wrappers of each layer.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.types import Send

from api_shim.hub import Subscription
from api_shim.sse import PING, SseResponse, shutting_down
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
    return Opening(await state.hub.history(run_id, after), ended=False)


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
    if start is None:
        run = await state.store.get_run_async(run_id)
        start = await opening(state, run_id, after, run)
    last = after
    for event in start.events:
        yield event
        last = event.seq
        if event.type == "done":
            return
    if start.ended:
        return
    async with _Tail(state, run_id, last, key_id) as tail:
        while (events := await tail.next()) is not None:
            for event in events:
                yield event
                if event.type == "done":
                    return


class _Tail:
    """The live part of one reader's log: events above `last` through the hub, to `done` or,
    when the run ended without its `done` reaching Redis, the archive's rest."""

    def __init__(self, state: ShimState, run_id: str, last: int, key_id: str | None) -> None:
        self._state = state
        self._run_id = run_id
        self._key_id = key_id
        self.last = last
        self._idle_s = 0.0
        self._over = False
        self._sub: Subscription | None = None

    async def __aenter__(self) -> _Tail:
        self._sub = await self._state.hub.subscribe(self._run_id, self.last)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._sub is not None:
            self._state.hub.unsubscribe(self._sub)

    def waiter(self) -> asyncio.Future[None] | None:
        """What to await before `after_wait` (None: nothing, go on)."""
        assert self._sub is not None, "used outside `async with`"
        return None if self._over else self._sub.waiter()

    async def after_wait(self) -> list[LoggedEvent] | None:
        """The events above the cursor that came, in order; [] when none came within
        `KEY_CACHE_S`; None once the reader must stop (the key was revoked, or the archive's
        rest was given)."""
        assert self._sub is not None, "used outside `async with`"
        if self._over:
            return None
        if self._key_id is not None and not await self._state.api_keys.active(self._key_id):
            return None
        came = self._sub.take()
        if not came:
            return await self._idle()
        self._idle_s = 0.0
        events = []
        for event in came:
            if event.seq > self.last:
                events.append(event)
                self.last = event.seq
        return events

    async def next(self) -> list[LoggedEvent] | None:
        """`after_wait` after `waiter`."""
        waiter = self.waiter()
        if waiter is not None:
            await waiter
        return await self.after_wait()

    async def _idle(self) -> list[LoggedEvent]:
        self._idle_s += KEY_CACHE_S
        if self._idle_s < _ARCHIVE_CHECK_S:
            return []
        self._idle_s = 0.0
        # Finished in the database (which is written before `done` reaches the stream) but no
        # `done` came: the rest, `done` included, is in the archive.
        run = await self._state.store.get_run_async(self._run_id)
        if run is None or not run.status.is_terminal:
            return []
        self._over = True
        rest = await _archived(self._state, self._run_id, self.last)
        if rest:
            self.last = rest[-1].seq
        return rest


_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def sse_frame(event: LoggedEvent, retry_ms: int | None = None) -> bytes:
    """One event as SSE: `id`, `event`, `data` lines (and `retry` the first time), blank line."""
    data = event.data
    if "\n" in data or "\r" in data:
        lines = "".join(f"data: {line}\n" for line in _LINE_BREAK.split(data))
    else:
        lines = f"data: {data}\n"
    retry = "" if retry_ms is None else f"retry: {retry_ms}\n"
    return f"id: {event.seq}\nevent: {event.type}\n{lines}{retry}\n".encode()


class EventStream(SseResponse):
    """A run's events as Server-Sent Events (see the module docstring)."""

    def __init__(
        self,
        state: ShimState,
        run_id: str,
        after: int,
        headers: dict[str, str],
        key_id: str | None,
        start: Opening | None,
    ) -> None:
        super().__init__(headers)
        self._state = state
        self._run_id = run_id
        self._after = after
        self._key_id = key_id
        self._start = start
        self._retry: int | None = None  # the `retry:` field, on the first frame only
        self._wrote = 0.0  # when a chunk was last written (a ping goes after `sse_ping_s`)

    async def _write(self, send: Send, events: list[LoggedEvent]) -> bool:
        """Send the events (up to `done`); whether `done` was among them: then the body ends
        with them (one write to the socket, not a last empty chunk of its own)."""
        frames = []
        done = False
        for event in events:
            frames.append(sse_frame(event, self._retry))
            self._retry = None
            if event.type == "done":
                done = True
                break
        if frames:
            body = b"".join(frames)
            await send({"type": "http.response.body", "body": body, "more_body": not done})
            self._wrote = time.monotonic()
        return done

    async def _stream(self, send: Send, gone: asyncio.Future[None]) -> bool:
        """Write the events until `done` (then True: its chunk ended the body), the client
        leaves, or the server stops."""
        state = self._state
        ping_s = state.settings.sse_ping_s
        self._retry = state.settings.sse_retry_ms
        self._wrote = time.monotonic()
        start = self._start
        if start is None:
            run = await state.store.get_run_async(self._run_id)
            start = await opening(state, self._run_id, self._after, run)
        if await self._write(send, start.events):
            return True
        if start.ended:
            return False
        last = start.events[-1].seq if start.events else self._after
        self._start = start = None  # written: not held while the stream waits
        async with _Tail(state, self._run_id, last, self._key_id) as tail:
            while not gone.done() and not shutting_down():
                # Not `tail.next()`: its coroutines would be held by every stream as it waits.
                waiter = tail.waiter()
                if waiter is not None:
                    await waiter
                events = await tail.after_wait()
                if events is None:
                    return False
                if await self._write(send, events):
                    return True
                if not events and ping_s and time.monotonic() - self._wrote >= ping_s:
                    await send({"type": "http.response.body", "body": PING, "more_body": True})
                    self._wrote = time.monotonic()
        return False


def sse_response(
    state: ShimState,
    run_id: str,
    after: int,
    headers: dict[str, str] | None = None,
    *,
    key_id: str | None = None,
    start: Opening | None = None,
) -> EventStream:
    return EventStream(state, run_id, after, headers or {}, key_id, start)
