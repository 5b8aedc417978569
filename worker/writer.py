"""The run's writer on the worker: events and checkpoints appended under the run's lease."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from runrelay.agent._loop import LoopState, PendingEvent
from runrelay.agent.events import EventType, encode, make_event
from runrelay.server.eventlog import EventLog
from worker.checkpoints import Checkpoint, Checkpoints
from worker.lease import Lease

SEQ_BLOCK = 100


@dataclass
class RunWriter:
    """Appends a run's events and checkpoints under its lease, numbering the events.

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

    async def _cover(self, seq: int) -> None:
        if seq > self.reserved:
            upto = seq + SEQ_BLOCK - 1
            await self.reserve(upto)
            self.reserved = upto

    async def emit(
        self, type: EventType, data: dict[str, Any], *, ttl_s: int | None = None
    ) -> None:
        async with self._lock:
            await self._cover(self.next_seq)
            event = make_event(self.run_id, self.next_seq, type, data)
            await self.events.append(
                self.run_id, event["seq"], type, encode(event), token=self.lease.token, ttl_s=ttl_s
            )
            self.next_seq += 1

    async def checkpoint(self, state: LoopState, event: PendingEvent | None = None) -> None:
        async with self._lock:
            seq = self.next_seq
            appended = None
            if event is not None:
                await self._cover(seq)
                appended = (seq, event[0], encode(make_event(self.run_id, seq, *event)))
                seq += 1
            await self.checkpoints.save(
                self.run_id, self.lease.token, Checkpoint(seq, state), appended
            )
            self.next_seq = seq

    async def resync(self) -> None:
        """After the loop was interrupted mid-append (cancel, deadline): Redis may have taken
        the entry the interrupted call was writing, so the log's last seq is the truth."""
        async with self._lock:
            self.next_seq = await self.events.last_seq(self.run_id) + 1
