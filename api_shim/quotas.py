"""Admission: a tenant's limits checked in one Lua call before anything of a run exists.

A refusal is a 429 whose `code` names the limit (`rate_limited`, `token_budget_exhausted`,
`concurrency_limit`, `queue_full`) with `Retry-After` and `RateLimit-Limit/-Remaining/-Reset`;
it writes nothing. An admitted run either takes a concurrency slot at once (the caller sends its
task) or waits in its tenant's pending queue for the dispatcher (api_shim/dispatcher.py).
Also what `GET /v1/usage` and `/metrics` report (api_shim/usage.py serves them).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from redis.asyncio import Redis

from api_shim.errors import HTTPProblem
from runrelay.agent.config import AgentSpec
from runrelay.server.keys import RedisKeys
from runrelay.server.quota import Decision, QuotaStore, as_text
from runrelay.server.settings import Settings
from runrelay.server.store import Store
from runrelay.server.tables import Tenant
from runrelay.server.tenants import Period, TenantLimits
from runrelay.types import RunCreate

_MESSAGES = {
    "rate_limited": "too many requests: the tenant may create {limit} runs a minute",
    "token_budget_exhausted": "the tenant's token budget of {limit} tokens for this period is "
    "used up (or too little is left for this run's reservation)",
    "concurrency_limit": "the tenant already has {limit} runs in progress and no pending queue",
    "queue_full": "the tenant's pending queue is full ({limit} runs waiting)",
}


class QuotaMetrics:
    """Counters and gauges of one shim process, in a registry of its own (no global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.admissions = Counter(
            "runrelay_admissions",
            "Runs admitted, by outcome (dispatch: straight to Celery; queue: tenant's pending).",
            ["outcome"],
            registry=self.registry,
        )
        self.rejections = Counter(
            "runrelay_rejections",
            "Run creations refused with a 429, by the limit's code.",
            ["code"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "runrelay_queue_depth",
            "Runs by where they wait or run: pending (tenant queues), dispatching (sent to "
            "Celery, not started), broker (tasks in the Celery queue), running (slots held).",
            ["state"],
            registry=self.registry,
        )
        self.admission_seconds = Gauge(
            "runrelay_admission_last_seconds",
            "Duration of the latest admission Lua call.",
            registry=self.registry,
        )


@dataclass(frozen=True)
class Admission:
    tenant_id: str
    run_id: str
    decision: Decision

    @property
    def dispatch_now(self) -> bool:
        return self.decision.outcome == "dispatch"


def reserve_tokens(body: RunCreate, agent: AgentSpec, settings: Settings) -> int:
    """Tokens held for a run at admission: its max_tokens, the agent's, or the estimate."""
    requested = body.model_params.max_tokens if body.model_params else None
    return requested or agent.max_tokens or settings.run_token_estimate


def rate_headers(decision: Decision) -> dict[str, str]:
    if decision.limit <= 0:
        return {}
    return {
        "RateLimit-Limit": str(decision.limit),
        "RateLimit-Remaining": str(max(0, decision.remaining)),
        "RateLimit-Reset": str(max(0, decision.reset_s)),
    }


class Quotas:
    def __init__(self, settings: Settings, store: Store, redis: Redis, keys: RedisKeys) -> None:
        self.settings = settings
        self.store = store
        self.keys = keys
        self.redis = redis
        self.backend = QuotaStore(redis, keys, dispatch_timeout_s=settings.dispatch_timeout_s)
        self.metrics = QuotaMetrics()

    async def limits(self, tenant_id: str) -> TenantLimits:
        return await self.read_limits_async(tenant_id)

    def read_limits(self, tenant_id: str) -> TenantLimits:
        """The tenant's limits, read from the database (blocking: from a thread)."""
        return self.limits_of(tenant_id, self.store.get_tenant(tenant_id))

    async def read_limits_async(self, tenant_id: str) -> TenantLimits:
        """`read_limits`, awaited."""
        return self.limits_of(tenant_id, await self.store.get_tenant_async(tenant_id))

    def limits_of(self, tenant_id: str, tenant: Tenant | None) -> TenantLimits:
        """The limits of `tenant` as read (none: 404, naming `tenant_id`)."""
        if tenant is None:
            raise HTTPProblem(
                404, "tenant_not_found", f"no tenant {tenant_id!r}", param="tenant_id"
            )
        return TenantLimits.of(tenant, self.settings)

    async def admit(
        self, tenant_id: str, run_id: str, *, reserve: int, limits: TenantLimits | None = None
    ) -> Admission:
        """Admit the run under the tenant's limits (`limits` when the caller read them
        already, in the same thread hop as its other reads)."""
        if limits is None:
            limits = await self.limits(tenant_id)
        loop = asyncio.get_running_loop()
        started = loop.time()
        decision = await self.backend.admit(
            tenant_id,
            run_id,
            limits,
            reserve_tokens=reserve,
            retry_after_s=self.settings.quota_retry_after_s,
        )
        self.metrics.admission_seconds.set(loop.time() - started)
        if not decision.admitted:
            self.metrics.rejections.labels(decision.code).inc()
            retry_after = max(1, decision.reset_s)
            raise HTTPProblem(
                429,
                decision.code,
                _MESSAGES[decision.code].format(limit=decision.limit)
                + f"; retry after {retry_after} s",
                headers={
                    "Retry-After": str(retry_after),
                    "RateLimit-Limit": str(decision.limit),
                    "RateLimit-Remaining": str(max(0, decision.remaining)),
                    "RateLimit-Reset": str(retry_after),
                },
            )
        self.metrics.admissions.labels(decision.outcome).inc()
        return Admission(tenant_id, run_id, decision)

    async def abandon(self, admission: Admission) -> None:
        await self.backend.abandon(admission.tenant_id, admission.run_id)

    async def usage(self, tenant_id: str) -> dict[str, Any]:
        """The tenant's limits and where it stands against each, read in one transaction."""
        limits = await self.limits(tenant_id)
        period = Period.current(limits.budget_period)
        k = self.keys
        now = await self.backend.now_ms()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(k.tenant_rate(tenant_id))
            pipe.zcount(k.tenant_slots(tenant_id), now, "+inf")
            pipe.llen(k.tenant_pending(tenant_id))
            pipe.get(k.tenant_budget(tenant_id, period.id))
            pipe.hgetall(k.tenant_reservations(tenant_id))
            tat, running, queued, charged, reservations = await pipe.execute()
        rpm = limits.requests_per_minute
        rate: dict[str, Any] = {"limit": rpm, "remaining": None, "reset_s": 0}
        if rpm:
            interval = 60000 / rpm
            backlog = max(0.0, float(tat or now) - now)
            rate["remaining"] = max(0, int((interval * rpm - backlog) // interval))
            rate["reset_s"] = -int(-backlog // 1000)
        reserved = 0
        for entry in reservations.values():
            held_period, _, held = as_text(entry).partition("|")
            if held_period == period.id:
                reserved += int(held)
        charged_total = int(charged or 0)
        budget = limits.token_budget
        return {
            "object": "usage",
            "tenant_id": tenant_id,
            "limits": limits.as_dict(),
            "requests": rate,
            "runs": {
                "running": int(running),
                "max_concurrent_runs": limits.max_concurrent_runs,
                "queued": int(queued),
                "max_queued_runs": limits.max_queued_runs,
            },
            "tokens": {
                "period": period.id,
                "period_ends_at": period.ends_at.isoformat(),
                "budget": budget,
                "used": charged_total - reserved,
                "reserved": reserved,
                "remaining": None if budget is None else max(0, budget - charged_total),
            },
        }

    async def observe_queues(self, task_queue: str) -> None:
        """Refresh the queue-depth gauges (called on each /metrics scrape)."""
        k = self.keys
        tenants = [as_text(t) for t in await self.redis.smembers(k.quota_tenants())]
        now = await self.backend.now_ms()
        async with self.redis.pipeline(transaction=False) as pipe:
            for tenant in tenants:
                pipe.llen(k.tenant_pending(tenant))
                pipe.zcount(k.tenant_slots(tenant), now, "+inf")
            pipe.zcard(k.dispatching())
            pipe.llen(k.broker_queue(task_queue))
            counts = await pipe.execute()
        *per_tenant, dispatching, broker = counts
        pending = sum(per_tenant[0::2])
        holding = sum(per_tenant[1::2])
        gauge = self.metrics.queue_depth
        gauge.labels("pending").set(pending)
        gauge.labels("dispatching").set(dispatching)
        gauge.labels("broker").set(broker)
        # Dispatched runs hold a slot before they start; `running` counts only the others.
        gauge.labels("running").set(max(0, holding - dispatching))
