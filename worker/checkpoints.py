"""Run checkpoints: the loop's state and the seq the run continues at, saved in Redis under the
run's lease after each model response and each tool result (with that result's event, in one
atomic step), and read back when a run is resumed on another worker.

A checkpoint after a tool result is also kept in the database (one statement, under the same
lease), so a run resumed after Redis lost its data calls no finished tool again. Runs that call
no tool never write there. Reading prefers Redis; the database is the fallback.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from runrelay.agent._loop import LoopState
from runrelay.agent.events import encode
from runrelay.server import lua
from runrelay.server.eventlog import LeaseLost, SeqConflict
from runrelay.server.keys import RedisKeys
from runrelay.server.outages import retrying
from runrelay.server.store import Store

# How long keeping a checkpoint in the database waits for it before the run is handed back.
_DATABASE_RETRY_S = 10.0


@dataclass(frozen=True)
class Checkpoint:
    next_seq: int
    state: LoopState

    @property
    def has_tool_results(self) -> bool:
        return bool(self.state.records or self.state.finished)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Checkpoint:
        data = json.loads(raw)
        return cls(next_seq=data["next_seq"], state=LoopState.from_dict(data["state"]))


class Checkpoints:
    def __init__(self, redis: Redis, keys: RedisKeys, ttl_s: int, store: Store) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_s = ttl_s
        self.store = store
        self._save = lua.script(redis, "save_checkpoint")

    async def save(
        self,
        run_id: str,
        token: str,
        checkpoint: Checkpoint,
        events: Sequence[tuple[int, str, str]] = (),
    ) -> str:
        """Save `checkpoint` in Redis (under the lease); `events` (seq, type, JSON; the events
        that go before it, in seq order) are appended in the same step. Returns the checkpoint
        as saved, for `keep_saved`."""
        body = _encode(checkpoint)
        args: list[str | int] = [token, body, self.ttl_s]
        for seq, type_, data in events:
            args += (seq, data, type_)
        keys = [self.keys.events(run_id), self.keys.lease(run_id), self.keys.checkpoint(run_id)]
        try:
            await self._save(keys=keys, args=args)
        except ResponseError as exc:
            if "LEASE_LOST" in str(exc):
                raise LeaseLost(run_id) from exc
            if "equal or smaller" in str(exc):
                first = events[0][0] if events else 0
                raise SeqConflict(f"{run_id}: seq {first}.. is not above the last event") from exc
            raise
        return body

    async def keep_saved(self, run_id: str, token: str, next_seq: int, body: str) -> None:
        """Keep a checkpoint `save` returned in the database too: it outlives Redis. After
        Redis, which checks the lease first; if the database stays away, the run is handed back
        and resumes from Redis. Checkpoints kept out of order keep the newest (by `next_seq`)."""
        await retrying(
            lambda: self.store.save_checkpoint_async(run_id, token, next_seq, body),
            what=f"run {run_id}: keep checkpoint",
            for_s=_DATABASE_RETRY_S,
        )

    async def to_database(self, run_id: str, token: str, checkpoint: Checkpoint) -> None:
        """Keep `checkpoint` in the database (a resumed run whose database copy may lag)."""
        await self.keep_saved(run_id, token, checkpoint.next_seq, _encode(checkpoint))

    async def load(self, run_id: str) -> Checkpoint | None:
        """The run's checkpoint in Redis."""
        raw: Any = await self.redis.get(self.keys.checkpoint(run_id))
        return None if raw is None else Checkpoint.from_json(raw)

    async def kept(self, run_id: str) -> Checkpoint | None:
        """The run's last checkpoint kept in the database (the last after a tool result)."""
        raw = await asyncio.to_thread(self.store.checkpoint, run_id)
        return None if raw is None else Checkpoint.from_json(raw)

    async def keep(self, run_id: str) -> None:
        """A run paused for approval may wait longer than the TTLs: its checkpoint and its event
        log stay until it resumes (the next append sets the log's TTL again)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.persist(self.keys.checkpoint(run_id))
            pipe.persist(self.keys.events(run_id))
            await pipe.execute()

    def key(self, run_id: str) -> str:
        """The run's checkpoint in Redis; the executor deletes it with the run's other keys."""
        return self.keys.checkpoint(run_id)


def _encode(checkpoint: Checkpoint) -> str:
    return encode({"next_seq": checkpoint.next_seq, "state": checkpoint.state.to_dict()})
