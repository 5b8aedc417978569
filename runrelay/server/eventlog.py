"""A run's event log in Redis: one Stream per run, entry ids `0-<seq>`, fields `d` (the event
JSON) and `t` (its type). Appends go through one Lua script that checks the writer's lease
and appends a whole batch of events in one round trip.

Shared by the worker (which appends) and the shim (which appends `run_queued` and replays).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from runrelay.server import lua
from runrelay.server.errors import Fenced
from runrelay.server.keys import RedisKeys, entry_id, seq_of
from runrelay.server.tables import RunLog


class LeaseLost(Fenced):
    """The writer no longer holds the run's lease: another worker owns the run now."""


class SeqConflict(Fenced):
    """The seq is not above the log's last one (a duplicate or out-of-order append)."""


@dataclass(frozen=True)
class LoggedEvent:
    seq: int
    type: str
    data: str


@dataclass(frozen=True)
class LogText:
    """A run's log as its archive keeps it (`RunLog.events`): one line per event, `<seq>
    <event JSON>`, in seq order; and the last event's seq (0 for an empty log)."""

    text: str
    last_seq: int

    @classmethod
    def of(cls, events: Sequence[LoggedEvent]) -> LogText:
        return cls(RunLog.join((e.seq, e.data) for e in events), events[-1].seq if events else 0)

    def plus(self, seq: int, data: str) -> str:
        """The text with one more event, `seq` (above `last_seq`), at its end."""
        line = RunLog.join([(seq, data)])
        return f"{self.text}\n{line}" if self.text else line


class EventLog:
    def __init__(self, redis: Redis, keys: RedisKeys, ttl_s: int) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_s = ttl_s
        self._append = lua.script(redis, "append_events")
        self._append_read = lua.script(redis, "append_read", uses=("append_events",))
        self._queue_run = lua.script(redis, "queue_run", uses=("append_events",))

    async def append(
        self,
        run_id: str,
        seq: int,
        type: str,
        data: str,
        *,
        token: str = "",
        ttl_s: int | None = None,
    ) -> None:
        await self.append_many(run_id, [(seq, type, data)], token=token, ttl_s=ttl_s)

    async def append_many(
        self,
        run_id: str,
        events: Sequence[tuple[int, str, str]],
        *,
        token: str = "",
        ttl_s: int | None = None,
    ) -> None:
        """Append `events` (seq, type, JSON), in seq order, in one round trip; `token` is the
        writer's lease ('' for the shim's `run_queued`)."""
        keys, args = self._append_call(run_id, events, token, ttl_s)
        try:
            await self._append(keys=keys, args=args)
        except ResponseError as exc:
            refused = _refused(exc, run_id, events)
            if refused is None:
                raise
            raise refused from exc

    async def queue(
        self,
        run_id: str,
        data: str,
        *,
        task: tuple[str, str] | None = None,
        mark: str = "",
        mark_ttl_s: int = 0,
    ) -> None:
        """Start a new run's log with its `run_queued` (`data`, seq 1) and, in the same atomic
        step, set its thread's new mark (`mark`, a key, for `mark_ttl_s`; '' for none) and
        push its Celery task (`task`: the list and the message; None for none). A refused
        append (`SeqConflict`) writes nothing."""
        queue, message = task or ("", "")
        events = [(1, "run_queued", data)]
        keys, args = self._append_call(run_id, events, "", None)
        try:
            await self._queue_run(keys=[*keys, queue, mark], args=[message, mark_ttl_s, *args])
        except ResponseError as exc:
            refused = _refused(exc, run_id, events)
            if refused is None:
                raise
            raise refused from exc

    async def append_and_read(
        self, run_id: str, events: Sequence[tuple[int, str, str]], *, token: str
    ) -> LogText:
        """`append_many`, then the whole log as it is then (as its archive keeps it), in the
        same round trip."""
        keys, args = self._append_call(run_id, events, token, None)
        try:
            last, text = await self._append_read(keys=keys, args=args)
        except ResponseError as exc:
            refused = _refused(exc, run_id, events)
            if refused is None:
                raise
            raise refused from exc
        return LogText(text.decode() if isinstance(text, bytes) else text, int(last))

    def _append_call(
        self,
        run_id: str,
        events: Sequence[tuple[int, str, str]],
        token: str,
        ttl_s: int | None,
    ) -> tuple[list[str], list[str | int]]:
        """`append_events.lua`'s KEYS and ARGV."""
        args: list[str | int] = [token, ttl_s or self.ttl_s]
        for seq, type_, data in events:
            args += (seq, data, type_)
        return [self.keys.events(run_id), self.keys.lease(run_id)], args

    async def read(
        self, run_id: str, *, after: int = 0, count: int | None = None
    ) -> list[LoggedEvent]:
        entries: Any = await self.redis.xrange(
            self.keys.events(run_id), min=f"({entry_id(after)}", max="+", count=count
        )
        return [decode_entry(raw_id, fields) for raw_id, fields in entries]

    async def last_seq(self, run_id: str) -> int:
        entries: Any = await self.redis.xrevrange(self.keys.events(run_id), count=1)
        return seq_of(entries[0][0]) if entries else 0

    async def exists(self, run_id: str) -> bool:
        return bool(await self.redis.exists(self.keys.events(run_id)))


def _refused(
    exc: ResponseError, run_id: str, events: Sequence[tuple[int, str, str]]
) -> Fenced | None:
    """What `append_events.lua`'s refusal means for its caller; None for another error."""
    if "LEASE_LOST" in str(exc):
        return LeaseLost(run_id)
    if "equal or smaller" in str(exc):
        first = events[0][0] if events else 0
        return SeqConflict(f"{run_id}: seq {first}.. is not above the last event")
    return None


def decode_read(raw_id: bytes, fields: list[bytes]) -> LoggedEvent:
    """A stream entry as Redis sends it, its fields a flat list. The scripts write `d` then
    `t` (`[b"d", data, b"t", type]`); an entry written otherwise is read by name."""
    if len(fields) == 4 and fields[0] == b"d" and fields[2] == b"t":
        return LoggedEvent(seq=seq_of(raw_id), type=fields[3].decode(), data=fields[1].decode())
    return decode_entry(raw_id, dict(zip(fields[::2], fields[1::2], strict=True)))


def decode_entry(raw_id: bytes | str, fields: dict[Any, Any]) -> LoggedEvent:
    """A stream entry as redis-py returns it (bytes, or str with decode_responses)."""

    def field(name: str) -> str:
        value = fields.get(name.encode(), fields.get(name))
        return value.decode() if isinstance(value, bytes) else str(value)

    return LoggedEvent(seq=seq_of(raw_id), type=field("t"), data=field("d"))
