"""Stopping runs that a worker process holds: cancel requests and hand-backs.

Both are cooperative. A cancel request is a Redis flag (set by the shim's cancel endpoint);
one task per process checks the flags of all the runs it holds every `cancel_poll_s`, with one
Lua call on the process's timer connection (`existing_keys.lua`), and stops the flagged ones. A
hand-back (graceful shutdown) stops every run the process holds so that another worker resumes
it. Stopping cancels the asyncio task running the agent loop, with the reason recorded on the
run's `RunControl`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from runrelay.server import lua
from runrelay.server.keys import RedisKeys

log = logging.getLogger(__name__)


class StopReason(Enum):
    CANCEL = "cancel"
    HAND_BACK = "hand_back"
    LEASE_LOST = "lease_lost"  # the heartbeat was refused: another worker holds the run


@dataclass(eq=False)
class RunControl:
    """One run held by this process. `task` is set while its agent loop runs."""

    run_id: str
    reason: StopReason | None = None
    task: asyncio.Task[Any] | None = field(default=None, repr=False)

    def stop(self, reason: StopReason) -> None:
        if self.reason is not None:
            return
        self.reason = reason
        if self.task is not None:
            self.task.cancel(msg=f"runrelay: {reason.value}")


class RunControls:
    def __init__(self, redis: Redis, keys: RedisKeys, poll_s: float, timers: Redis) -> None:
        """`timers`: the process's own connection for its per-tick calls (worker/runtime.py)."""
        self.redis = redis
        self.keys = keys
        self.poll_s = poll_s
        self._flags = lua.script(timers, "existing_keys")
        self._runs: dict[str, RunControl] = {}
        # Set on graceful shutdown: runs that arrive from now on are handed back at once.
        self.draining = False
        self._stop_watching = asyncio.Event()

    def __len__(self) -> int:
        return len(self._runs)

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._runs

    def add(self, run_id: str) -> RunControl:
        control = RunControl(run_id)
        if self.draining:
            control.reason = StopReason.HAND_BACK
        self._runs[run_id] = control
        return control

    def remove(self, control: RunControl) -> None:
        if self._runs.get(control.run_id) is control:
            del self._runs[control.run_id]

    async def cancel_requested(self, run_id: str) -> bool:
        return bool(await self.redis.exists(self.keys.cancel(run_id)))

    async def forget(self, run_id: str, *, also: str) -> None:
        """The run finished: drop its cancel flag and its `requeued` marker, and the key `also`
        (its checkpoint) in the same call."""
        await self.redis.delete(self.keys.cancel(run_id), self.keys.requeued(run_id), also)

    def hand_back_all(self) -> int:
        self.draining = True
        for control in list(self._runs.values()):
            control.stop(StopReason.HAND_BACK)
        return len(self._runs)

    def stop_watching(self) -> None:
        """End `watch_cancels` at its next tick (a flag, not a cancel around a Redis call)."""
        self._stop_watching.set()

    async def watch_cancels(self) -> None:
        """Until `stop_watching`: stop the held runs whose cancel flag is set."""
        while not self._stop_watching.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_watching.wait(), self.poll_s)
            controls = list(self._runs.values())
            if not controls:
                continue
            keys = [self.keys.cancel(control.run_id) for control in controls]
            try:
                flagged: list[int] = await self._flags(keys=keys)
            except RedisError as exc:
                log.warning("cancel watch: Redis error (%s); retrying", exc)
                continue
            except Exception:  # a bug, not an outage: say so, and keep watching
                log.exception("cancel watch: a check failed; trying again at the next tick")
                continue
            for position in flagged:
                controls[int(position) - 1].stop(StopReason.CANCEL)
