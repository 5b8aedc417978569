"""The worker's side of tenant quotas: the run's concurrency slot and its token metering.

A slot is a lease: a member of the tenant's slot set whose score is its expiry. The worker takes
it when the run starts and the process's renewer (worker/renewals.py) renews it, with every other
lease and slot the process holds, every third of the TTL; when the run ends,
whatever the ending, the lifecycle's `finish` releases it (settling the run's token reservation
at what the run really used, and waking the dispatcher when the tenant has pending runs). A
worker that dies simply stops renewing and the slot expires; a run handed back keeps it.

Metering wraps the run's model provider: after each model turn's usage report the run's tokens
are charged against the tenant's budget, and a run that exhausts it stops, failed, with the
code `token_budget_exhausted`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from redis.asyncio import Redis

from runrelay.agent.providers.base import (
    Chunk,
    ModelProvider,
    ModelRequest,
    ProviderError,
    UsageReport,
)
from runrelay.server.keys import RedisKeys
from runrelay.server.quota import QuotaStore
from runrelay.server.settings import Settings
from runrelay.server.tables import Run, RunIdentity
from worker.renewals import Renewals


class TokenBudgetExhausted(ProviderError):
    code = "token_budget_exhausted"


@dataclass
class Slot:
    tenant_id: str
    run_id: str
    period: str | None
    used_tokens: int = 0


class MeteredProvider:
    """A provider whose usage reports are charged to the run's tenant as they arrive."""

    def __init__(self, inner: ModelProvider, slot: Slot, quotas: QuotaStore) -> None:
        self.inner = inner
        self.name = inner.name
        self.slot = slot
        self.quotas = quotas

    async def stream(self, request: ModelRequest) -> AsyncIterator[Chunk]:
        async for chunk in self.inner.stream(request):
            yield chunk
            if isinstance(chunk, UsageReport):
                self.slot.used_tokens += chunk.prompt_tokens + chunk.completion_tokens
                await self._charge()

    async def _charge(self) -> None:
        slot = self.slot
        if slot.period is None:
            return
        quotas = self.quotas
        if not await quotas.charge(slot.tenant_id, slot.run_id, slot.period, slot.used_tokens):
            raise TokenBudgetExhausted(
                f"the tenant's token budget for {slot.period} is used up "
                f"(this run used {slot.used_tokens} tokens)"
            )


class Slots:
    def __init__(
        self, redis: Redis, keys: RedisKeys, settings: Settings, renewals: Renewals
    ) -> None:
        self.quotas = QuotaStore(redis, keys, dispatch_timeout_s=settings.dispatch_timeout_s)
        self.renewals = renewals
        self.ttl_ms = int(settings.quota_slot_ttl_s * 1000)
        self._held: dict[str, Slot] = {}

    async def hold(self, run: RunIdentity) -> Slot:
        """Take the run's slot (it may already be ours: admission or dispatch reserved it)."""
        return self.held(run, await self.quotas.hold(run.tenant_id, run.id, self.ttl_ms))

    def held(self, run: RunIdentity, period: str | None) -> Slot:
        """The run's slot, just taken (`hold`, or its start: worker/starts.py), its tokens
        reserved in `period`: renewed from now on."""
        slot = Slot(run.tenant_id, run.id, period)
        self.renewals.hold_slot(slot)
        self._held[run.id] = slot
        return slot

    def metered(self, run_id: str, provider: ModelProvider) -> ModelProvider:
        slot = self._held.get(run_id)
        return provider if slot is None else MeteredProvider(provider, slot, self.quotas)

    async def stop_renewing(self, slot: Slot) -> None:
        """Stop renewing the slot (idempotent); it stays the run's until released, or expires.
        Called before anything releases it: a renewal in flight must not take it back."""
        self._held.pop(slot.run_id, None)
        await self.renewals.drop_slot(slot)

    async def release(self, slot: Slot) -> None:
        """Free the slot and settle the tokens: a run that will not start after all. (A run
        that ends is released by the lifecycle's `finish`.)"""
        await self.stop_renewing(slot)
        await self.quotas.release(
            slot.tenant_id, slot.run_id, used_tokens=slot.used_tokens, period=slot.period
        )

    def carry(self, run_id: str, used_tokens: int) -> None:
        """A resumed run: its earlier attempts used `used_tokens` (charged and settled with
        this attempt's)."""
        slot = self._held.get(run_id)
        if slot is not None:
            slot.used_tokens = max(slot.used_tokens, used_tokens)

    async def pause(self, slot: Slot) -> None:
        """A run paused for approval: free its concurrency slot, keep its token reservation."""
        await self.stop_renewing(slot)
        await self.quotas.free_slot(slot.tenant_id, slot.run_id)

    async def forget(self, run: Run) -> None:
        """A run that will not start (already finished, e.g. cancelled while queued)."""
        used = int((run.usage or {}).get("total_tokens", 0))
        await self.quotas.release(run.tenant_id, run.id, used_tokens=used)
