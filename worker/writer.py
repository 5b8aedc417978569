"""The run's writer on the worker: events and checkpoints appended under the run's lease."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from runrelay.agent._loop import LoopState, PendingEvent
from runrelay.agent.events import EventType, encode, make_event
from runrelay.server.eventlog import EventLog
from worker.checkpoints import Checkpoint, Checkpoints
from worker.lease import Lease


@dataclass
class RunWriter:
    """Appends a run's events and checkpoints under its lease, numbering the events.

    Concurrent emitters (parallel tool calls) are serialised, so seqs stay gapless and ordered.
    """

    events: EventLog
    checkpoints: Checkpoints
    run_id: str
    lease: Lease
    next_seq: int
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def emit(
        self, type: EventType, data: dict[str, Any], *, ttl_s: int | None = None
    ) -> None:
        async with self._lock:
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
