"""The sweeper: finds accepted runs that nobody is running and enqueues them again.

It runs as a periodic asyncio task inside every worker process (no extra process to deploy);
a Redis lock with a TTL, renewed by its holder, makes one of them active at a time. Each sweep
reads the database (the truth about which runs exist) and, for each unfinished run, Redis:

- `running` without a lease: its worker died (the lease lapsed) or handed it back → enqueue;
- `queued` with no event log (Redis was emptied or restarted without persistence), or whose task
  a worker took (it has a fencing counter) but died before marking it running (no lease), or
  queued for longer than `stuck_queued_s` (its task was lost) → enqueue;
- `queued` and parked, waiting for its thread (server/thread_gate.py): left alone, unless the
  thread's holder is finished or gone (its releaser died) → the thread is handed on.

A run enqueued twice is harmless (the second task finds a live lease or a finished run and does
nothing); a `requeued` marker with the lease TTL keeps the sweeper from doing it every sweep.
Attempts are counted when a worker starts the run (`Lifecycle.start`); past
`max_run_attempts` the run ends `failed` with `too_many_attempts`.

A run paused for approval (`requires_action`) for longer than `approval_timeout_s` is ended
`expired` (error code `approval_expired`) through the lifecycle's `finish`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from runrelay.server import lua
from runrelay.server.approvals import PausedCalls
from runrelay.server.keys import RedisKeys
from runrelay.server.lifecycle import Lifecycle
from runrelay.server.quota import dispatching_member
from runrelay.server.settings import Settings
from runrelay.server.store import Store, Unfinished
from runrelay.server.tables import as_utc, utcnow
from runrelay.types import RunStatus

log = logging.getLogger(__name__)
_SWEEP_PAGE = 500
# What `queued_checks.lua` says of a queued run.
_LEASE, _LOG, _FENCE, _PENDING, _DISPATCHING, _PARKED = 1, 2, 4, 8, 16, 32


class Requeuer:
    """Enqueues a run's task again, at most once per lease TTL (the `requeued` marker)."""

    def __init__(
        self,
        redis: Redis,
        keys: RedisKeys,
        marker_ttl_s: float,
        send: Callable[[str], Awaitable[None]],
    ) -> None:
        """`send` enqueues a run's task from the loop (`TaskSender.send_async`)."""
        self.redis = redis
        self.keys = keys
        self.marker_ttl_ms = max(1, int(marker_ttl_s * 1000))
        self._send = send

    async def requeue(self, run_id: str, *, force: bool = False) -> bool:
        marked = await self.redis.set(
            self.keys.requeued(run_id), "1", nx=not force, px=self.marker_ttl_ms
        )
        if not marked:
            return False
        await self._send(run_id)
        return True


class Sweeper:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        redis: Redis,
        keys: RedisKeys,
        requeuer: Requeuer,
        lifecycle: Lifecycle,
    ) -> None:
        self.settings = settings
        self.lifecycle = lifecycle
        self.store = store
        self.redis = redis
        self.keys = keys
        self.requeuer = requeuer
        self.threads = lifecycle.threads
        self.token = secrets.token_hex(8)
        self.lock_ttl_ms = int(max(settings.sweep_interval_s * 3, 1.0) * 1000)
        self._renew = lua.script(redis, "renew_lease")
        self._release = lua.script(redis, "release_lease")
        self._existing = lua.script(redis, "existing_keys")
        self._queued_checks = lua.script(redis, "queued_checks")

    async def run_forever(self) -> None:
        """Sweep every `sweep_interval_s` until cancelled; then let go of the lock, so that
        another worker's sweeper takes over at once."""
        try:
            while True:
                try:
                    await self.sweep()
                except (RedisError, SQLAlchemyError, OSError) as exc:
                    log.warning(
                        "sweep failed (%s: %s); next one in %g s",
                        type(exc).__name__,
                        exc,
                        self.settings.sweep_interval_s,
                    )
                await asyncio.sleep(self.settings.sweep_interval_s)
        finally:
            with contextlib.suppress(RedisError, OSError):
                await self._release(keys=[self.keys.sweeper_lock()], args=[self.token])

    async def _hold_lock(self) -> bool:
        key = self.keys.sweeper_lock()
        if await self._renew(keys=[key], args=[self.token, self.lock_ttl_ms]):
            return True
        return bool(await self.redis.set(key, self.token, nx=True, px=self.lock_ttl_ms))

    async def sweep(self) -> list[str]:
        """One sweep, if this process holds the lock; returns the run ids enqueued again."""
        if not await self._hold_lock():
            return []
        now = utcnow()
        requeued: list[str] = []
        after = ""
        while True:
            runs = await asyncio.to_thread(
                self.store.unfinished_runs,
                # A queued run younger than two sweeps may simply not have its log or task yet.
                created_before=now - timedelta(seconds=max(2 * self.settings.sweep_interval_s, 2)),
                after_id=after,
                limit=_SWEEP_PAGE,
            )
            requeued += await self._sweep_page(runs, now)
            if len(runs) < _SWEEP_PAGE:
                break
            after = runs[-1].id
        await self.expire_paused()
        return requeued

    async def expire_paused(self) -> list[str]:
        """End `expired` the runs that waited for approval longer than `approval_timeout_s`;
        returns their ids."""
        timeout_s = self.settings.approval_timeout_s
        expired: list[str] = []
        after = ""
        while True:
            runs = await asyncio.to_thread(
                self.store.paused_runs, after_id=after, limit=_SWEEP_PAGE
            )
            for run in runs:
                paused = PausedCalls.of(run.required_action)
                if paused is None or paused.waited_s <= timeout_s:
                    continue
                message = (
                    f"no decision came within {timeout_s:g} s of the pause "
                    "(RUNRELAY_APPROVAL_TIMEOUT_S)"
                )
                if await self.lifecycle.expire(run, "approval_expired", message):
                    log.warning("run %s expired waiting for approval", run.id)
                    expired.append(run.id)
            if len(runs) < _SWEEP_PAGE:
                return expired
            after = runs[-1].id

    async def _ended_since(self, run: Unfinished) -> bool:
        """Whether a run the page read `running` has ended since: a run that finished between
        the page's read and its lease check released its lease, and is not to be sent again."""
        current = await asyncio.to_thread(self.store.get_run, run.id)
        return current is None or current.status is not RunStatus.RUNNING

    async def _sweep_page(self, runs: Sequence[Unfinished], now: datetime) -> list[str]:
        running = [run for run in runs if run.status is RunStatus.RUNNING]
        queued = [run for run in runs if run.status is not RunStatus.RUNNING]
        lapsed: set[str] = set()
        if running:  # every run in flight, each sweep: one call for the page
            leased = await self._existing(keys=[self.keys.lease(run.id) for run in running])
            lapsed = {run.id for run in running} - {running[int(i) - 1].id for i in leased}
        flags: dict[str, int] = {}
        if queued:  # one call for the page too (a backlog can be thousands of runs)
            keys, args = [self.keys.dispatching()], []
            for run in queued:
                thread = run.thread_id
                keys += [
                    self.keys.lease(run.id),
                    self.keys.events(run.id),
                    self.keys.fence(run.id),
                    # quotas: a queued run in its tenant's queue, or handed out by the
                    # dispatcher, is the dispatcher's to send (it re-sends overdue ones itself).
                    self.keys.tenant_pending(run.tenant_id),
                    self.keys.thread_waiting(run.tenant_id, thread) if thread else keys[0],
                ]
                args += [run.id, dispatching_member(run.tenant_id, run.id), int(bool(thread))]
            found = await self._queued_checks(keys=keys, args=args)
            flags = {run.id: int(f) for run, f in zip(queued, found, strict=True)}
        stuck_before = now - timedelta(seconds=self.settings.stuck_queued_s)
        requeued = []
        for run in runs:
            if run.status is RunStatus.RUNNING:
                lost = run.id in lapsed and not await self._ended_since(run)
                why = "its lease lapsed" if lost else None
            else:
                why = self._why_queued(run, flags[run.id], stuck_before)
            if why and await self.requeuer.requeue(run.id):
                log.warning("run %s enqueued again: %s", run.id, why)
                requeued.append(run.id)
        stuck = {
            (run.tenant_id, run.thread_id)
            for run in queued
            if run.thread_id and flags[run.id] & _PARKED
        }
        for tenant_id, thread_id in stuck:
            if await self.threads.unstick(tenant_id, thread_id):
                log.warning(
                    "thread %s of %s: its holder had finished; handed on", thread_id, tenant_id
                )
        return requeued

    def _why_queued(self, run: Unfinished, flags: int, stuck_before: datetime) -> str | None:
        """Why a queued run is to be enqueued again, from what Redis has of it (`flags`, as
        `queued_checks.lua` returns them); None: leave it."""
        if not flags & _LOG:
            return "its event log is gone from Redis"
        if flags & (_PENDING | _DISPATCHING | _PARKED):
            return None
        if flags & _FENCE and not flags & _LEASE:
            # A worker took its task (and a lease) but died before marking it running.
            return "its worker died before starting it"
        if as_utc(run.created_at) < stuck_before:
            return f"it has been queued for over {self.settings.stuck_queued_s:g} s"
        return None
