"""The thread gate: at most one active run per (tenant, thread) at a time.

The active run of a thread holds its owner key (`RedisKeys.thread_owner`). A worker asks for it
(`enter`) before it starts a run of a thread; when another run holds it and is still
unfinished, the run is *parked*: it joins the thread's waiters (a sorted set by creation time),
gives back the concurrency slot dispatch gave it, and stays `queued`; the worker lets it go. A
run that pauses (`requires_action`) keeps the thread.

When a run of the thread finishes, whatever the status and whoever finishes it (the worker, or
the shim cancelling a queued or paused run), `release` hands the thread to the oldest waiter that
is not finished itself (a parked run cancelled meanwhile is skipped) and puts that run first in
its tenant's pending queue, so it starts at the next free slot. Parking and handing over are
each one Lua script on the two keys, so a wake-up cannot fall between them.

A thread the shim makes for a new run is marked new (the key `new_mark`, which the shim sets in
the round trip that queues the run: `Lifecycle.create`); the first run to take it
learns so (`Entry.new_thread`), in the same script, and reads no history: no run has held the
thread, so none has added messages to it. Whichever run takes it first, the mark goes with it.

Crash safety: an owner key naming a run that is finished in the database (its releaser died) is
taken over by the next run that asks, and the sweeper hands such a thread on for its parked
runs (`unstick`). The owner key has no TTL: a paused run may hold its thread for days.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from runrelay.server import lua
from runrelay.server.quota import QuotaStore, as_text
from runrelay.server.store import Store
from runrelay.server.tables import Run, RunIdentity, as_utc

# Takeovers of finished owners in one `enter`, before it settles for parking (and the sweeper).
_MAX_TAKEOVERS = 3


@dataclass(frozen=True)
class Entry:
    """What `ThreadGate.enter` found."""

    holder: str | None  # the unfinished run holding the thread; None: the run holds it now
    # The run is the first to hold a thread made for it (`new_mark`): the thread has no
    # messages, so there is no history to read.
    new_thread: bool = False


class ThreadGate:
    def __init__(self, quotas: QuotaStore, store: Store) -> None:
        self.quotas = quotas
        self.redis = quotas.redis
        self.keys = quotas.keys
        self.store = store
        self._enter = lua.script(self.redis, "thread_enter")
        self._release = lua.script(self.redis, "thread_release")

    def _keys(self, tenant_id: str, thread_id: str) -> list[str]:
        return [
            self.keys.thread_owner(tenant_id, thread_id),
            self.keys.thread_waiting(tenant_id, thread_id),
        ]

    def new_mark(self, run: Run) -> str:
        """The key that says `run`'s thread was made for it: while it is set (it has a TTL; then
        the run reads the history anyway), the first run to take the thread knows it has no
        messages yet (`Entry.new_thread`)."""
        assert run.thread_id is not None
        return self.keys.thread_new(run.tenant_id, run.thread_id)

    async def enter(self, run: RunIdentity) -> Entry:
        """Take `run`'s thread for it: `holder` None when it may start, else the id of the
        unfinished run holding the thread (`run` is parked and its slot given back)."""
        if run.thread_id is None:
            return Entry(None)
        stale = ""
        for _ in range(_MAX_TAKEOVERS):
            keys, args = self.enter_call(run, stale)
            holder, new = await self._enter(keys=keys, args=args)
            holder = as_text(holder)
            if not holder:
                return Entry(None, new_thread=bool(int(new)))
            if await self._live(holder):
                break
            stale = holder  # its releaser died after finishing it: take the thread over
        await self.quotas.free_slot(run.tenant_id, run.id)
        return Entry(holder)

    def enter_call(self, run: RunIdentity, stale: str = "") -> tuple[list[str], list[Any]]:
        """`thread_enter.lua`'s KEYS and ARGV for a run of a thread (also run by a worker's
        `start_run.lua`); `stale`: a finished holder to take the thread over from."""
        assert run.thread_id is not None
        keys = [
            *self._keys(run.tenant_id, run.thread_id),
            self.keys.thread_new(run.tenant_id, run.thread_id),
        ]
        created_ms = int(as_utc(run.created_at).timestamp() * 1000)
        return keys, [run.id, created_ms, stale]

    async def release(self, run: Run) -> None:
        """`run` finished: it leaves the thread, which goes to the next waiter that is not
        finished (that run is queued to start). Safe to call more than once, and for a run that
        never held its thread; a no-op for a run without a thread."""
        if run.thread_id is not None:
            await self._hand_over(run.tenant_id, run.thread_id, run.id)

    async def unstick(self, tenant_id: str, thread_id: str) -> bool:
        """For the sweeper, about a thread with parked runs: when nobody holds it, or its holder
        is finished, hand it over. Returns whether it did."""
        holder: Any = await self.redis.get(self.keys.thread_owner(tenant_id, thread_id))
        holder_id = as_text(holder) if holder is not None else ""
        if holder_id and await self._live(holder_id):
            return False
        await self._hand_over(tenant_id, thread_id, holder_id)
        return True

    async def _hand_over(self, tenant_id: str, thread_id: str, finished: str) -> None:
        keys = self._keys(tenant_id, thread_id)
        while True:
            waiter = as_text(await self._release(keys=keys, args=[finished]))
            if not waiter:
                return
            if await self._live(waiter):
                await self.quotas.resume(tenant_id, waiter)
                return
            finished = waiter  # cancelled while it waited: the next one

    async def _live(self, run_id: str) -> bool:
        run = await asyncio.to_thread(self.store.get_run, run_id)
        return run is not None and not run.status.is_terminal
