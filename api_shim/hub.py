"""The SSE hub: one per shim process, it tails every watched run's stream with one blocking XREAD
over one dedicated Redis connection and fans new entries out to the subscribed clients.

The number of Redis connections therefore does not grow with the number of SSE clients. A
subscriber registers at the last seq it has seen; the hub reads each stream from the lowest
cursor among its subscribers and hands each subscriber only entries above its own cursor, so
nothing is lost or delivered twice. A new subscription wakes the blocking read through a small
per-hub wake-up stream, so it does not wait for the block timeout.
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
        self._changed.set()
        await self._wake()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.key)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.key]

    async def _wake(self) -> None:
        async with self.writer.pipeline(transaction=False) as pipe:
            pipe.xadd(self._wakeup_key, {"w": "1"}, maxlen=_WAKEUP_MAXLEN, approximate=True)
            pipe.expire(self._wakeup_key, _WAKEUP_TTL_S)
            await pipe.execute()

    async def _run(self) -> None:
        while True:
            if not self._subs:
                self._changed.clear()
                await self._changed.wait()
                continue
            self._changed.clear()
            streams: dict[Any, Any] = {
                key: entry_id(min(sub.cursor for sub in subs)) for key, subs in self._subs.items()
            }
            streams[self._wakeup_key] = self._wakeup_id
            try:
                response: Any = await self.reader.xread(
                    streams, count=_XREAD_COUNT, block=self.block_ms
                )
            except RedisError as exc:
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
        for sub in self._subs.get(key, ()):
            for event in events:
                if event.seq > sub.cursor:
                    sub.cursor = event.seq
                    sub.queue.put_nowait(event)
