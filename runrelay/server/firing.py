"""Making a claimed schedule tick into a run: overlap, admission, the run row, `run_queued`, send.

Used by the worker's firing task (ticks the beat asks for) and by the shim's `trigger`. A fired
run goes through the same admission as `POST /v1/runs` (one Lua call: rate, concurrency, queue,
token budget): it takes a slot and is sent now, or waits in its tenant's queue for the
dispatcher; a refusal is recorded on the schedule (`last_status` `refused`, the limit in
`last_detail`), never dropped silently. The run id was chosen at the claim, and runs are unique
by (schedule_id, scheduled_for), so firing a tick again after a crash writes no second run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from pydantic import ValidationError
from redis.exceptions import RedisError
from sqlalchemy.exc import IntegrityError

from runrelay.agent.config import AgentSpec, Registry
from runrelay.server.lifecycle import Lifecycle, queued_run
from runrelay.server.quota import QuotaStore
from runrelay.server.revisions import AgentCatalog
from runrelay.server.schedules import Fire, Schedules
from runrelay.server.settings import Settings
from runrelay.server.store import Store
from runrelay.server.tables import Run
from runrelay.server.tenants import TenantLimits
from runrelay.types import RunCreate

log = logging.getLogger(__name__)


class Firer:
    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        lifecycle: Lifecycle,
        quotas: QuotaStore,
        registry: Registry,
        send: Callable[[str], None],
    ) -> None:
        self.settings = settings
        self.store = store
        self.lifecycle = lifecycle
        self.schedules = Schedules(store.engine)
        self.quotas = quotas
        self.registry = registry
        self._send = send

    async def fire(self, fire: Fire) -> str:
        """Make the tick's run (or skip it); returns the status recorded for it."""
        try:
            status, detail = await self._fire(fire)
        except (RedisError, OSError) as exc:
            # Left `claimed`: the next pass's `stale_fires` tries again with the same run id.
            log.warning(
                "schedule %s: tick %s not fired yet: %s", fire.schedule_id, fire.scheduled_for, exc
            )
            return "claimed"
        await asyncio.to_thread(self.schedules.record, fire, status, detail)
        return status

    async def _fire(self, fire: Fire) -> tuple[str, str | None]:
        if await asyncio.to_thread(self.store.get_run, fire.run_id) is not None:
            return "fired", None  # written before a crash: only the record was missing
        active = await asyncio.to_thread(self.schedules.active_run, fire.last_run_id)
        if active is not None and fire.overlap == "skip":
            return "skipped", f"run {active.id} is still {active.status} (overlap: skip)"
        if active is not None and fire.overlap == "cancel_previous":
            await self._cancel(active)
        try:
            body = RunCreate.model_validate(fire.run)
            agent = await asyncio.to_thread(self._agent, body)
        except (ValidationError, LookupError) as exc:
            return "error", f"the schedule's run request cannot be made: {exc}"
        tenant = await asyncio.to_thread(self.store.get_tenant, fire.tenant_id)
        if tenant is None:
            return "error", f"tenant {fire.tenant_id} no longer exists"
        decision = await self.quotas.admit(
            fire.tenant_id,
            fire.run_id,
            TenantLimits.of(tenant, self.settings),
            reserve_tokens=_reserve(body, agent, self.settings),
            retry_after_s=self.settings.quota_retry_after_s,
        )
        if not decision.admitted:
            return "refused", f"{decision.code}: the tenant's limit ({decision.limit}) is reached"
        run = _run(fire, body, agent)
        queued = {"agent": agent.name, "agent_id": agent.id, "thread_id": run.thread_id}
        try:
            await self.lifecycle.create(run, queued)
        except IntegrityError:
            await self.quotas.abandon(fire.tenant_id, fire.run_id)
            return "fired", None  # the tick's run exists (a concurrent retry wrote it)
        except BaseException:
            await self.quotas.abandon(fire.tenant_id, fire.run_id)
            raise
        if decision.outcome == "dispatch":  # else the dispatcher sends it when a slot frees
            await asyncio.to_thread(self._send, run.id)
        return "fired", None

    def _agent(self, body: RunCreate) -> AgentSpec:
        return AgentCatalog(self.store.engine, self.registry).for_request(body)

    async def _cancel(self, run: Run) -> None:
        """`cancel_previous`: the last run is cancelled as the cancel endpoint does it (a
        queued or paused one ends now, a running one within about a second)."""
        await self.lifecycle.request_cancel(run)


def _reserve(body: RunCreate, agent: AgentSpec, settings: Settings) -> int:
    requested = body.model_params.max_tokens if body.model_params else None
    return requested or agent.max_tokens or settings.run_token_estimate


def _run(fire: Fire, body: RunCreate, agent: AgentSpec) -> Run:
    return queued_run(
        fire.run_id,
        fire.tenant_id,
        body,
        agent,
        schedule_id=fire.schedule_id,
        scheduled_for=fire.scheduled_for,
    )
