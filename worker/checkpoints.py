"""Run checkpoints in Redis: the loop's state and the seq the run continues at, saved under the
run's lease after each model response and each tool result (with that result's event, in one
atomic step), and read back when a run is resumed on another worker.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from runrelay.agent._loop import LoopState
from runrelay.server import lua
from runrelay.server.eventlog import LeaseLost
from runrelay.server.keys import RedisKeys


@dataclass(frozen=True)
class Checkpoint:
    next_seq: int
    state: LoopState


class Checkpoints:
    def __init__(self, redis: Redis, keys: RedisKeys, ttl_s: int) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_s = ttl_s
        self._save = lua.script(redis, "save_checkpoint")

    async def save(
        self,
        run_id: str,
        token: str,
        checkpoint: Checkpoint,
        event: tuple[int, str, str] | None = None,
    ) -> None:
        """Save `checkpoint`; `event` (seq, type, JSON) is appended in the same step."""
        body = json.dumps(
            {"next_seq": checkpoint.next_seq, "state": checkpoint.state.to_dict()}, default=str
        )
        seq, type_, data = event if event is not None else ("", "", "")
        keys = [self.keys.events(run_id), self.keys.lease(run_id), self.keys.checkpoint(run_id)]
        try:
            await self._save(keys=keys, args=[token, body, self.ttl_s, seq, data, type_])
        except ResponseError as exc:
            if "LEASE_LOST" in str(exc):
                raise LeaseLost(run_id) from exc
            raise

    async def load(self, run_id: str) -> Checkpoint | None:
        raw: Any = await self.redis.get(self.keys.checkpoint(run_id))
        if raw is None:
            return None
        data = json.loads(raw)
        return Checkpoint(next_seq=data["next_seq"], state=LoopState.from_dict(data["state"]))

    async def keep(self, run_id: str) -> None:
        """A run paused for approval may wait longer than the TTLs: its checkpoint and its event
        log stay until it resumes (the next append sets the log's TTL again)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.persist(self.keys.checkpoint(run_id))
            pipe.persist(self.keys.events(run_id))
            await pipe.execute()

    async def delete(self, run_id: str) -> None:
        await self.redis.delete(self.keys.checkpoint(run_id))
