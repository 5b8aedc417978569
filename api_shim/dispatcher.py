"""Fair admission: moves runs from their tenants' pending queues into free concurrency slots,
round-robin across tenants, and sends their tasks.

One dispatcher runs in each shim process; they may run side by side (each move is one Lua
call). A pass runs when a worker frees a slot (it pushes to a wake-up list the dispatcher
blocks on) and at least every `dispatch_interval_s` (for slots freed by expiry). A promoted run
stays in the dispatching set until a worker starts it; one still there after
`dispatch_timeout_s` (its dispatcher died before sending, or the worker never got the task) is
checked against the database and sent again if it is still queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from redis.exceptions import RedisError

from runrelay.server.keys import RedisKeys
from runrelay.server.quota import QuotaStore, dispatching_member
from runrelay.server.settings import Settings
from runrelay.server.store import CROCKFORD, Store
from runrelay.types import RunStatus

log = logging.getLogger(__name__)


def _created_ms(run_id: str) -> int:
    """Run ids are time-ordered: the first 10 Crockford base32 chars are the creation ms."""
    value = 0
    for char in run_id.partition("_")[2][:10]:
        value = value * 32 + CROCKFORD.index(char)
    return value


class Dispatcher:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        quotas: QuotaStore,
        wakeup_redis: Any,
        keys: RedisKeys,
        send: Any,
    ) -> None:
        self.settings = settings
        self.store = store
        self.quotas = quotas
        self.redis = quotas.redis
        self.wakeup_redis = wakeup_redis
        self.keys = keys
        self.send = send
        self._turn = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="runrelay-dispatcher")

    async def stop(self) -> None:
        # Not the cancel alone: redis-py can swallow a cancel that lands in its blocking BLPOP
        # (the loop then went on for good, and shutdown waited on it); the flag ends the loop
        # within one wait.
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        timeout = self.settings.dispatch_interval_s
        while not self._stopping:
            try:
                await self.wakeup_redis.blpop([self.keys.dispatch_wakeup()], timeout=timeout)
                await self.dispatch_pass()
                await self.recheck_overdue()
            except (RedisError, OSError) as exc:
                log.warning("dispatcher: %s; retrying in %g s", exc, timeout)
                await asyncio.sleep(timeout)
            except Exception:  # a bug: log it and keep dispatching
                log.exception("dispatcher pass failed")
                await asyncio.sleep(timeout)

    async def dispatch_pass(self) -> int:
        """Promote pending runs one per tenant per round, until no tenant can promote more."""
        members = sorted(
            m.decode() if isinstance(m, bytes) else m
            for m in await self.redis.smembers(self.keys.pending_tenants())
        )
        if not members:
            return 0
        # Start each pass one tenant further along, so no tenant is always first.
        self._turn = (self._turn + 1) % len(members)
        active = members[self._turn :] + members[: self._turn]
        sent = 0
        while active:
            still = []
            for tenant_id in active:
                for run_id in await self.quotas.promote(tenant_id, at_most=1):
                    await asyncio.to_thread(self.send, run_id)
                    sent += 1
                    still.append(tenant_id)
            active = still
        return sent

    async def recheck_overdue(self) -> None:
        for tenant_id, run_id in await self.quotas.overdue():
            run = await self.store.get_run_async(run_id)
            if run is None:
                # Admission happened but the row is not there: being written, or its shim died.
                if await self.quotas.now_ms() - _created_ms(run_id) > 2 * self.quotas.dispatch_ms:
                    await self.quotas.release(tenant_id, run_id, used_tokens=0)
                else:
                    await self.quotas.redispatch(tenant_id, run_id)
            elif run.status.is_terminal:
                used = int((run.usage or {}).get("total_tokens", 0))
                await self.quotas.release(tenant_id, run_id, used_tokens=used)
            elif run.status is not RunStatus.QUEUED:
                await self.redis.zrem(
                    self.keys.dispatching(), dispatching_member(tenant_id, run_id)
                )
            elif await self.quotas.redispatch(tenant_id, run_id):
                log.warning(
                    "run %s: not started %g s after dispatch; sending it again",
                    run_id,
                    self.settings.dispatch_timeout_s,
                )
                await asyncio.to_thread(self.send, run_id)
