"""The SSE hub: one per shim process, it tails every watched run's stream with one blocking XREAD
over one dedicated Redis connection and fans new entries out to the subscribed clients.

The number of Redis connections therefore does not grow with the number of SSE clients. A
subscriber registers at the last seq it has seen; the hub reads each stream from the lowest
cursor among its subscribers and hands each subscriber only entries above its own cursor, so
nothing is lost or delivered twice; a subscriber below the cursor a read started from (it came
while that read was in flight) gets nothing from it, and the next read starts from its cursor.
The per-stream cursor is kept as subscribers come and reads return, not recomputed over every
subscriber for every read. A new subscription that the read in flight does not cover
(a stream it does not read, or from below its cursor) wakes that blocking read through a small
per-hub wake-up stream, so it does not wait for the block timeout; one wake-up at a time, so
a thousand clients opening at once cost one, not a thousand.

`history` reads a run's entries above a cursor for a stream that opens (XRANGE); the opens of one
run that come while such a read is in flight, or up to `_HISTORY_REUSE_S` after it began, from
at or below its cursor share it (the tail then goes on from the last seq each got, so sharing
loses nothing; what came since the read reaches them through the tail): a burst of clients
opening a run's stream costs one read a second, and holds one Redis connection, not one per
client.

After a read that brought events the hub waits `batch_s` (`RUNRELAY_HUB_BATCH_MS`, 5 ms) before
the next one: a run streaming tokens writes several while it waits, and they then reach each of
its clients in one read and one socket write, not one of each per token. An event is delayed by
up to that much; a subscriber that comes in the meantime is read from at the next read.

A subscriber waits on `Subscription.wait`: it returns what came, or nothing once it has waited
`idle_wake_s` (one ticker task per hub wakes those, rather than a timer per subscriber). Each
wait is queued in the order it began, so the ticker looks only at the waits that came due, not
at every subscriber four times a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from runrelay.server.eventlog import LoggedEvent, decode_entry, decode_read
from runrelay.server.keys import RedisKeys, entry_id

log = logging.getLogger(__name__)
_WAKEUP_MAXLEN = 16
_WAKEUP_TTL_S = 3600
_XREAD_COUNT = 1000
_HISTORY_REUSE_S = 1.0


@dataclass(frozen=True)
class _History:
    after: int
    read: asyncio.Future[list[LoggedEvent]]
    began: float

    def stale(self, now: float) -> bool:
        if not self.read.done():
            return False
        failed = self.read.cancelled() or self.read.exception() is not None
        return failed or now - self.began > _HISTORY_REUSE_S


class _Waits:
    """The subscribers' waits in the order they began, for the ticker: a wait is its future
    and when it began (two queues, so that a float, not a tuple, is kept per wait)."""

    def __init__(self) -> None:
        self.began: deque[float] = deque()
        self.futures: deque[asyncio.Future[None]] = deque()

    def add(self, future: asyncio.Future[None]) -> None:
        self.began.append(time.monotonic())
        self.futures.append(future)

    def end_due(self, idle_s: float) -> None:
        """Ends the waits that began `idle_s` ago or more (those that ended already are
        dropped)."""
        due = time.monotonic() - idle_s
        began, futures = self.began, self.futures
        while began and began[0] <= due:
            began.popleft()
            future = futures.popleft()
            if not future.done():
                future.set_result(None)


@dataclass(eq=False)
class Subscription:
    run_id: str
    key: str
    cursor: int
    waits: _Waits
    pending: list[LoggedEvent] = field(default_factory=list)
    _waiter: asyncio.Future[None] | None = None

    def waiter(self) -> asyncio.Future[None] | None:
        """None when entries came; else a future done once some come, or once it has waited
        `idle_wake_s` (the hub's ticker). Awaiting it allocates nothing else, which counts:
        what ten thousand streams hold while they wait outlives young garbage collections."""
        if self.pending:
            return None
        self._waiter = asyncio.get_running_loop().create_future()
        self.waits.add(self._waiter)
        return self._waiter

    def take(self) -> list[LoggedEvent]:
        """The entries that came since the last call, in order."""
        came = self.pending[:]
        self.pending.clear()
        return came

    async def wait(self) -> list[LoggedEvent]:
        """`take` after `waiter`: [] when the ticker woke it with none."""
        waiter = self.waiter()
        if waiter is not None:
            await waiter
        return self.take()

    def wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class StreamHub:
    def __init__(
        self,
        reader: Redis,
        writer: Redis,
        keys: RedisKeys,
        *,
        block_ms: int,
        idle_wake_s: float,
        batch_s: float = 0.0,
    ) -> None:
        """`reader` is used for the blocking XREAD only; `writer` for the wake-ups. After a
        read that brought events, the next one waits `batch_s` (see the module docstring).

        The reader's XREAD replies come as Redis sends them: `decode_read` reads an entry's
        flat field list where redis-py would first build a dict of it."""
        self.idle_wake_s = idle_wake_s
        self.batch_s = batch_s
        reader.set_response_callback("XREAD", _as_sent)
        self.reader = reader
        self.writer = writer
        self.keys = keys
        self.block_ms = block_ms
        self._subs: dict[str, set[Subscription]] = {}
        self._wakeup_key = keys.hub_wakeup(secrets.token_hex(8))
        self._wakeup_id = "0-0"
        self._changed = asyncio.Event()
        # Per stream key: the cursor the next XREAD starts from (at most every subscriber's),
        # and the cursors of the XREAD in flight; whether a wake-up was sent since it started.
        self._cursors: dict[str, int] = {}
        self._reading: dict[str, int] = {}
        self._woken = False
        self._batching = False  # between a read that brought events and the next read
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._histories: dict[str, _History] = {}
        self._waits = _Waits()

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name="runrelay-sse-hub"),
            asyncio.create_task(self._tick(), name="runrelay-sse-hub-ticker"),
        ]

    async def stop(self) -> None:
        # Not the cancel alone: redis-py can swallow a cancel that lands in its blocking read
        # (the task then waited for a new subscriber forever, and so did shutdown).
        self._stopping = True
        self._changed.set()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(RedisConnectionError, RedisTimeoutError):
            await self.writer.delete(self._wakeup_key)

    async def subscribe(self, run_id: str, after: int) -> Subscription:
        sub = Subscription(
            run_id=run_id, key=self.keys.events(run_id), cursor=after, waits=self._waits
        )
        self._subs.setdefault(sub.key, set()).add(sub)
        self._cursors[sub.key] = min(self._cursors.get(sub.key, after), after)
        if self._batching:
            return sub  # the next read starts from the cursors, this one's included
        reading = self._reading.get(sub.key)
        if reading is not None and after >= reading:
            return sub  # the read in flight returns what this subscriber waits for
        self._changed.set()
        if not self._woken:
            self._woken = True
            await self._wake()
        return sub

    async def history(self, run_id: str, after: int) -> list[LoggedEvent]:
        """The run's entries above `after`, as of about now (see the module docstring)."""
        now = time.monotonic()
        shared = self._histories.get(run_id)
        if shared is None or shared.after > after or shared.stale(now):
            read = asyncio.ensure_future(self._xrange(run_id, after))
            read.add_done_callback(_retrieve)
            mine = _History(after, read, now)
            if shared is None or shared.stale(now):
                self._histories[run_id] = mine
            shared = mine
        # Shielded: an opener that gives up (a client gone) does not cancel the others' read.
        entries = await asyncio.shield(shared.read)
        return [event for event in entries if event.seq > after]

    def _drop_stale_histories(self) -> None:
        now = time.monotonic()
        for run_id in [r for r, h in self._histories.items() if h.stale(now)]:
            del self._histories[run_id]

    async def _xrange(self, run_id: str, after: int) -> list[LoggedEvent]:
        entries: Any = await self.writer.xrange(
            self.keys.events(run_id), min=f"({entry_id(after)}", max="+"
        )
        return [decode_entry(raw_id, fields) for raw_id, fields in entries]

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.key)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.key]
                self._cursors.pop(sub.key, None)

    async def _wake(self) -> None:
        # Issued together, the two leave in one of the writer's automatic pipelines: one round
        # trip, without a redis-py `Pipeline` (a pool checkout of its own) per new stream.
        await asyncio.gather(
            self.writer.xadd(self._wakeup_key, {"w": "1"}, maxlen=_WAKEUP_MAXLEN, approximate=True),
            self.writer.expire(self._wakeup_key, _WAKEUP_TTL_S),
        )

    async def _run(self) -> None:
        while not self._stopping:
            if not self._subs:
                self._reading = {}
                self._changed.clear()
                await self._changed.wait()
                continue
            self._changed.clear()
            self._woken = False
            self._reading = dict(self._cursors)
            streams: dict[Any, Any] = {key: entry_id(seq) for key, seq in self._reading.items()}
            streams[self._wakeup_key] = self._wakeup_id
            try:
                response: Any = await self.reader.xread(
                    streams, count=_XREAD_COUNT, block=self.block_ms
                )
            except RedisError as exc:
                self._reading = {}
                # Subscribers keep their cursors, so nothing is lost while Redis is away.
                log.warning("SSE hub cannot read Redis (%s); retrying in 1 s", exc)
                await asyncio.sleep(1)
                continue
            came = False
            for raw_key, entries in response or []:
                key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
                if key == self._wakeup_key:
                    last = entries[-1][0]
                    self._wakeup_id = last.decode() if isinstance(last, bytes) else last
                    continue
                came = True
                self._dispatch(key, [decode_read(raw_id, fields) for raw_id, fields in entries])
            if came and self.batch_s:
                await self._batch()

    async def _batch(self) -> None:
        """Let events gather for `batch_s` before the next read. A subscriber that comes
        meanwhile needs no wake-up: the next read starts from its cursor."""
        self._batching = True
        try:
            await asyncio.sleep(self.batch_s)
        finally:
            self._batching = False

    async def _tick(self) -> None:
        """Wakes the subscribers that waited `idle_wake_s` with nothing (a few times a second)."""
        while True:
            await asyncio.sleep(self.idle_wake_s / 4)
            self._waits.end_due(self.idle_wake_s)
            self._drop_stale_histories()

    def _dispatch(self, key: str, events: list[LoggedEvent]) -> None:
        subs = self._subs.get(key)
        read_from = self._reading.get(key)
        if not subs or read_from is None:
            return
        lowest = events[-1].seq
        for sub in subs:
            if sub.cursor >= read_from:  # else it came during the read: the next one is its
                for event in events:
                    if event.seq > sub.cursor:
                        sub.cursor = event.seq
                        sub.pending.append(event)
                        sub.wake()
            lowest = min(lowest, sub.cursor)
        self._cursors[key] = lowest


def _retrieve(read: asyncio.Future[list[LoggedEvent]]) -> None:
    if not read.cancelled():
        read.exception()  # retrieved here too: every reader may have gone


def _as_sent(response: Any, **_: Any) -> Any:
    """XREAD's reply as Redis sent it, each stream's entries as `[id, [field, value, ...]]`:
    no dict built per entry. As `(key, entries)` pairs, from a RESP3 map or a RESP2 list; none
    when the block ran out."""
    if response is None:
        return []
    return list(response.items()) if isinstance(response, dict) else response
