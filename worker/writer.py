"""The run's writer on the worker: events and checkpoints appended under the run's lease."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from runrelay.agent._loop import LoopState, PendingEvent
from runrelay.agent.events import EventType, encode, make_event
from runrelay.server.eventlog import EventLog, LogText
from worker.checkpoints import Checkpoint, Checkpoints
from worker.lease import Lease

SEQ_BLOCK = 100
# Events an emitter may run ahead of Redis before it waits for the appends to catch up.
MAX_PENDING = 256


@dataclass
class RunWriter:
    """Appends a run's events and checkpoints under its lease, numbering the events.

    `emit` numbers the event and hands it to the run's one append task, which sends everything
    emitted while its previous call was out in one round trip (one Lua call per batch, not per
    event): a model streaming tokens costs a Redis call per batch, and the loop never waits on
    Redis between two deltas. What an append raised (the lease was lost, Redis went away) is
    raised by the next `emit`, `checkpoint` or `flush`. A checkpoint, and the end of the
    attempt, wait until every event emitted before them is in Redis.

    Concurrent emitters (parallel tool calls) are serialised, so seqs stay gapless and ordered.
    Before the log passes `reserved`, `reserve(upto)` records a new block of seqs in the
    database (one write per `SEQ_BLOCK` events), so the database always knows a seq at least as
    high as any appended: the floor of the next attempt if Redis loses the log.
    """

    events: EventLog
    checkpoints: Checkpoints
    run_id: str
    lease: Lease
    next_seq: int
    reserved: int
    reserve: Callable[[int], Awaitable[None]]
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _pending: list[tuple[int, str, str]] = field(default_factory=list)
    _appender: asyncio.Task[None] | None = None
    _failure: BaseException | None = None

    async def _cover(self, seq: int) -> None:
        if seq > self.reserved:
            upto = seq + SEQ_BLOCK - 1
            await self.reserve(upto)
            self.reserved = upto

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def emit(self, type: EventType, data: dict[str, Any]) -> None:
        async with self._lock:
            self._raise_failure()
            await self._cover(self.next_seq)
            event = make_event(self.run_id, self.next_seq, type, data)
            self._pending.append((self.next_seq, type, encode(event)))
            self.next_seq += 1
            if self._appender is None or self._appender.done():
                self._appender = asyncio.create_task(self._append_pending())
            if len(self._pending) >= MAX_PENDING:
                await self._drain()

    async def _append_pending(self) -> None:
        while self._pending and self._failure is None:
            batch, self._pending = self._pending, []
            try:
                await self.events.append_many(self.run_id, batch, token=self.lease.token)
            except Exception as exc:  # raised to the emitter by its next call
                self._failure = exc
                self._pending.clear()

    async def _drain(self) -> None:
        appender = self._appender
        if appender is not None:
            await asyncio.shield(appender)
        self._raise_failure()

    async def flush(self) -> None:
        """Return once every event emitted so far is in Redis (or raise why one is not)."""
        async with self._lock:
            await self._drain()

    async def close(self) -> LogText:
        """The end of the attempt: every event emitted so far appended, and the whole log as
        Redis has it then (what the attempt's end archives), the last batch and the read in one
        round trip. Nothing is emitted after it."""
        async with self._lock:
            batch, self._pending = self._pending, []
            await self._drain()  # the append already out: its events come first
            return await self.events.append_and_read(self.run_id, batch, token=self.lease.token)

    async def checkpoint(self, state: LoopState, event: PendingEvent | None = None) -> None:
        """Save `state` with `event` (its own event, if any). The events emitted since the
        last append go with them, in the same call: the checkpoint waits only for the append
        already out, and is never saved ahead of an event emitted before it."""
        async with self._lock:
            batch, self._pending = self._pending, []
            await self._drain()  # the append already out: its events come first
            seq = self.next_seq
            if event is not None:
                await self._cover(seq)
                batch.append((seq, event[0], encode(make_event(self.run_id, seq, *event))))
                seq += 1
            body = await self.checkpoints.save(
                self.run_id, self.lease.token, Checkpoint(seq, state), batch
            )
            self.next_seq = seq
        # A tool's result is the one thing a resumed run must not redo: it outlives Redis too.
        # The database write is outside the lock, so the run's other tool calls (in parallel)
        # checkpoint their results in Redis meanwhile: a worker killed then redoes fewer calls.
        if event is not None and event[0] == "tool_call_result":
            await self.checkpoints.keep_saved(self.run_id, self.lease.token, seq, body)

    async def resync(self) -> None:
        """After the loop was interrupted mid-append (cancel, deadline): Redis may or may not
        have taken what was being written, so the log's last seq is the truth."""
        async with self._lock:
            appender = self._appender
            if appender is not None:
                await asyncio.wait([appender])
            self._pending.clear()
            self._failure = None
            self.next_seq = await self.events.last_seq(self.run_id) + 1
