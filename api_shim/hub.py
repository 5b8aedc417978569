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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from runrelay.server.eventlog import LoggedEvent, decode_entry
from runrelay.server.keys import RedisKeys, entry_id

log = logging.getLogger(__name__)
_WAKEUP_MAXLEN = 16
_WAKEUP_TTL_S = 3600
_XREAD_COUNT = 1000


@dataclass(eq=False)
class Subscription:
    run_id: str
    key: str
    cursor: int
    queue: asyncio.Queue[LoggedEvent] = field(default_factory=asyncio.Queue)


class StreamHub:
    def __init__(self, reader: Redis, writer: Redis, keys: RedisKeys, *, block_ms: int) -> None:
        """`reader` is used for the blocking XREAD only; `writer` for the wake-ups."""
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
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="runrelay-sse-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(RedisConnectionError, RedisTimeoutError):
            await self.writer.delete(self._wakeup_key)

    async def subscribe(self, run_id: str, after: int) -> Subscription:
        sub = Subscription(run_id=run_id, key=self.keys.events(run_id), cursor=after)
        self._subs.setdefault(sub.key, set()).add(sub)
        self._cursors[sub.key] = min(self._cursors.get(sub.key, after), after)
        reading = self._reading.get(sub.key)
        if reading is not None and after >= reading:
            return sub  # the read in flight returns what this subscriber waits for
        self._changed.set()
        if not self._woken:
            self._woken = True
            await self._wake()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.key)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.key]
                self._cursors.pop(sub.key, None)

    async def _wake(self) -> None:
        async with self.writer.pipeline(transaction=False) as pipe:
            pipe.xadd(self._wakeup_key, {"w": "1"}, maxlen=_WAKEUP_MAXLEN, approximate=True)
            pipe.expire(self._wakeup_key, _WAKEUP_TTL_S)
            await pipe.execute()

    async def _run(self) -> None:
        while True:
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
            for raw_key, entries in response or []:
                key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
                if key == self._wakeup_key:
                    last = entries[-1][0]
                    self._wakeup_id = last.decode() if isinstance(last, bytes) else last
                    continue
                self._dispatch(key, [decode_entry(raw_id, fields) for raw_id, fields in entries])

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
                        sub.queue.put_nowait(event)
            lowest = min(lowest, sub.cursor)
        self._cursors[key] = lowest
