"""The batch feeder: turns the pending lines of batches into runs as their tenants have room,
and moves batches on (expiry past `completion_window`, cancel of the runs in flight,
finalizing).

One shim process feeds at a time (a Redis lock its holder renews; the others stand by). Each
pass, per tenant with batches in progress, it creates at most

    room = min(window - lines in flight, cap - slots held - runs in the tenant's pending queue)

runs, where `cap` is the tenant's concurrency cap and `window = cap - batch_headroom_slots`
(at least 1). So a batch never takes more than the tenant's cap, never fills the tenant's
pending queue (an interactive run queued behind it waits for at most the runs in flight), and
leaves slots for interactive runs; other tenants have slots of their own. The Celery broker
holds at most the runs that have a slot. Lines of a tenant's batches are taken round-robin.

A run is admitted through the tenant's quotas (`quota_admit.lua`: concurrency, queue, token
budget — not the request rate, a line is no request) before its row exists, as `POST /v1/runs`
does; the dispatcher's recheck of the dispatching set covers a feeder that dies between the two.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
from collections import defaultdict
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from api_shim.cancel import request_cancel
from api_shim.errors import HTTPProblem
from api_shim.state import ShimState
from runrelay.agent.events import encode, make_event
from runrelay.batch_types import BatchStatus
from runrelay.server import lua
from runrelay.server.batch_tables import Batch, BatchItem
from runrelay.server.batches import STALE_UPLOAD, Snapshot, batch_object
from runrelay.server.quota import Decision
from runrelay.server.store import new_id
from runrelay.server.tables import Run, RunRef, as_utc, utcnow
from runrelay.server.webhooks import record_delivery
from runrelay.types import RunStatus

log = logging.getLogger(__name__)
# Cancelling batches are re-checked, and lines reconciled, every this many passes.
_SLOW_EVERY = 25


async def stop_batch(state: ShimState, batch_id: str, *, expire: bool) -> Batch | None:
    """Cancel (or expire) a batch: its pending lines end now, its runs in flight are cancelled.
    None when it had already ended or is being stopped."""
    stopped = await asyncio.to_thread(state.batches.stop, batch_id, expire=expire)
    if stopped is not None:
        await cancel_runs(state, batch_id)
    return stopped


async def cancel_runs(state: ShimState, batch_id: str) -> None:
    for run in await asyncio.to_thread(state.batches.unfinished_runs, batch_id):
        await request_cancel(state, run)


def _run_of(batch: Batch, item: BatchItem, run_id: str) -> Run:
    body = item.request
    return Run(
        id=run_id,
        tenant_id=batch.tenant_id,
        status=RunStatus.QUEUED,
        agent_name=item.agent_name,
        agent_id=item.agent_id,
        agent_revision=item.agent_revision,
        agent_tag=body.get("tag"),
        thread_id=new_id("thr"),
        input=body.get("input"),
        message=body.get("message"),
        model_id=body.get("model_id"),
        model_params=body.get("model_params"),
        end_user_id=body.get("end_user_id"),
        run_metadata={
            **(body.get("metadata") or {}),
            "batch_id": batch.id,
            "custom_id": item.custom_id,
        },
        timeout_s=body.get("timeout_s"),
    )


def _record_webhook(session: Session, batch: Batch) -> str | None:
    if not batch.webhook:
        return None
    snapshot = batch_object(Snapshot(batch=batch, running=0)).model_dump(mode="json")
    return record_delivery(
        session,
        subject_id=batch.id,
        tenant_id=batch.tenant_id,
        event=f"batch.{batch.status}",
        url=batch.webhook,
        data={"batch": snapshot},
    )


class BatchFeeder:
    def __init__(self, state: ShimState, wakeup_redis: Redis) -> None:
        self.state = state
        self.wakeup_redis = wakeup_redis
        self.keys = state.events.keys
        self.token = secrets.token_hex(8)
        self.interval_s = state.settings.batch_feed_interval_s
        self.lock_ttl_ms = int(max(self.interval_s * 10, 5.0) * 1000)
        self._renew = lua.script(state.redis, "renew_lease")
        self._passes = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="runrelay-batch-feeder")

    async def stop(self) -> None:
        self._stopping = True  # as the dispatcher's: a cancel swallowed in BLPOP must not hang
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(RedisError, OSError):
            lock = self.keys.batch_feeder_lock()
            if await self.state.redis.get(lock) in (self.token, self.token.encode()):
                await self.state.redis.delete(lock)

    async def _run(self) -> None:
        while not self._stopping:
            try:
                if await self._hold_lock():
                    await self.feed_pass()
                await self.wakeup_redis.blpop([self.keys.batch_wakeup()], timeout=self.interval_s)
            except (RedisError, OSError, SQLAlchemyError) as exc:
                log.warning("batch feeder: %s; retrying", exc)
                await asyncio.sleep(max(self.interval_s, 1.0))
            except Exception:  # a bug: log it and keep feeding
                log.exception("batch feeder pass failed")
                await asyncio.sleep(max(self.interval_s, 1.0))

    async def _finalize(self, batch_id: str) -> None:
        """The batch's final status, with its `batch.completed` (`.cancelled`, `.expired`)
        webhook recorded in the same transaction, then sent (a lost send is swept again)."""
        final = await asyncio.to_thread(self.state.batches.finalize, batch_id, _record_webhook)
        if final is not None and final[1] is not None:
            await asyncio.to_thread(self.state.sender.send_delivery, final[1])

    async def _hold_lock(self) -> bool:
        lock = self.keys.batch_feeder_lock()
        if await self._renew(keys=[lock], args=[self.token, self.lock_ttl_ms]):
            return True
        return bool(await self.state.redis.set(lock, self.token, nx=True, px=self.lock_ttl_ms))

    async def feed_pass(self) -> int:
        """One pass over the active batches; returns how many runs it created."""
        state = self.state
        self._passes += 1
        slow = self._passes % _SLOW_EVERY == 1
        now = utcnow()
        feeding: dict[str, list[Batch]] = defaultdict(list)
        for batch in await asyncio.to_thread(state.batches.active):
            if slow:
                await asyncio.to_thread(state.batches.reconcile, batch.id)
            status = BatchStatus(batch.status)
            expires_at = as_utc(batch.expires_at)
            if status is BatchStatus.VALIDATING:
                expires_at += STALE_UPLOAD  # never while its upload may still be going
            if status in (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS) and expires_at <= now:
                log.info("batch %s: completion_window %s passed", batch.id, batch.completion_window)
                await stop_batch(state, batch.id, expire=True)
            elif status is BatchStatus.IN_PROGRESS:
                feeding[batch.tenant_id].append(batch)
            elif status is BatchStatus.CANCELLING and slow:
                await cancel_runs(state, batch.id)
            elif status is BatchStatus.FINALIZING:
                await self._finalize(batch.id)
        created = 0
        for tenant_id, batches in feeding.items():
            created += await self._feed_tenant(tenant_id, batches)
        return created

    async def _room(self, tenant_id: str, batches: list[Batch]) -> tuple[int, Any]:
        state = self.state
        try:
            limits = await state.quotas.limits(tenant_id)
        except HTTPProblem:  # the tenant is gone
            return 0, None
        cap = limits.max_concurrent_runs
        window = max(1, cap - state.settings.batch_headroom_slots)
        in_flight = await asyncio.to_thread(state.batches.in_flight, [b.id for b in batches])
        held = await state.quotas.backend.running(tenant_id)
        waiting = int(await state.redis.llen(self.keys.tenant_pending(tenant_id)))
        room = min(window - in_flight, cap - held - waiting)
        # A line is no HTTP request: it does not spend the tenant's request rate.
        return room, dataclasses.replace(limits, requests_per_minute=None)

    async def _feed_tenant(self, tenant_id: str, batches: list[Batch]) -> int:
        room, limits = await self._room(tenant_id, batches)
        if room <= 0:
            return 0
        queues = [
            (batch, await asyncio.to_thread(self.state.batches.pending, batch.id, limit=room))
            for batch in batches
        ]
        picked: dict[str, list[BatchItem]] = defaultdict(list)
        by_id = {batch.id: batch for batch in batches}
        turn = 0
        while sum(len(items) for items in picked.values()) < room:
            moved = False
            for batch, items in queues:
                if turn < len(items) and sum(len(v) for v in picked.values()) < room:
                    picked[batch.id].append(items[turn])
                    moved = True
            if not moved:
                break
            turn += 1
        created = 0
        for batch_id, items in picked.items():
            created += await self._feed(by_id[batch_id], items, limits)
        return created

    async def _feed(self, batch: Batch, items: list[BatchItem], limits: Any) -> int:
        state = self.state
        admitted: list[tuple[BatchItem, str, Decision]] = []
        for item in items:
            run_id = new_id("run")
            decision = await state.quotas.backend.admit(
                batch.tenant_id,
                run_id,
                limits,
                reserve_tokens=item.reserve_tokens,
                retry_after_s=state.settings.quota_retry_after_s,
            )
            if not decision.admitted:  # budget used up, queue full: try again next pass
                break
            admitted.append((item, run_id, decision))
        runs = [(item.line, _run_of(batch, item, run_id)) for item, run_id, _ in admitted]
        refs = {run.id: RunRef.of(run) for _, run in runs}  # before `claim` expires them
        try:
            created = set(await asyncio.to_thread(state.batches.claim, batch.id, runs))
        except BaseException:
            for _, run_id, _ in admitted:
                await state.quotas.backend.abandon(batch.tenant_id, run_id)
            raise
        for item, run_id, decision in admitted:
            if run_id not in created:  # the batch was stopped meanwhile
                await state.quotas.backend.abandon(batch.tenant_id, run_id)
                continue
            queued = make_event(
                run_id,
                1,
                "run_queued",
                {"agent": item.agent_name, "agent_id": item.agent_id, "batch_id": batch.id},
            )
            await state.events.append(run_id, 1, "run_queued", encode(queued))
            if decision.outcome == "dispatch":  # else the dispatcher sends it
                await state.sender.send_async(run_id, refs[run_id])
        return len(created)
