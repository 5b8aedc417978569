"""Executing one run on the worker: lease, agent loop, events, outcome, archive.

The Celery task only hands a run id to `RunExecutor.execute`; everything that touches the run
happens here, on the process's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from runrelay.agents import AgentSpec, Registry
from runrelay.eventlog import EventLog, LeaseLost
from runrelay.events import EventType, encode, is_terminal, make_event
from runrelay.loop import AgentLoop, LoopResult, LoopSettings
from runrelay.providers import build_provider
from runrelay.providers.base import ProviderError
from runrelay.revisions import AgentCatalog
from runrelay.settings import Settings
from runrelay.store import Store
from runrelay.tables import Run
from runrelay.tools import import_tool
from worker.lease import Lease, Leases
from worker.slots import Slots

log = logging.getLogger(__name__)


@dataclass
class RunWriter:
    """Appends a run's events under its lease, numbering them.

    Concurrent emitters (parallel tool calls) are serialised, so seqs stay gapless and ordered.
    """

    events: EventLog
    run_id: str
    lease: Lease
    next_seq: int
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def emit(
        self, type: EventType, data: dict[str, Any], *, ttl_s: int | None = None
    ) -> None:
        async with self._lock:
            event = make_event(self.run_id, self.next_seq, type, data)
            await self.events.append(
                self.run_id, event["seq"], type, encode(event), token=self.lease.token, ttl_s=ttl_s
            )
            self.next_seq += 1


@dataclass
class Outcome:
    status: str
    output: str = ""
    result: LoopResult | None = None
    error: dict[str, str] | None = None


class RunExecutor:
    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        events: EventLog,
        leases: Leases,
        registry: Registry,
        http: httpx.AsyncClient,
        slots: Slots,
    ) -> None:
        self.slots = slots
        self.settings = settings
        self.store = store
        self.events = events
        self.leases = leases
        self.registry = registry
        self.http = http

    async def execute(self, run_id: str) -> None:
        run = await asyncio.to_thread(self.store.get_run, run_id)
        if run is None:
            log.warning("run %s: no such run, task dropped", run_id)
            return
        if is_terminal(run.status):
            log.info("run %s: already %s, nothing to do", run_id, run.status)
            await self.slots.forget(run)  # quotas: free a slot dispatch gave it
            return
        lease = await self.leases.acquire(run_id)
        if lease is None:
            log.info("run %s: another worker holds the lease, nothing to do", run_id)
            return
        slot = await self.slots.hold(run)  # quotas: the tenant's concurrency slot, renewed
        heartbeat = asyncio.create_task(self._heartbeat(lease))
        try:
            await self._execute_leased(run_id, lease)
        except LeaseLost:
            log.warning("run %s: lease lost, leaving the run to its new holder", run_id)
            slot.handed_over = True
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            await self.slots.release(slot)  # quotas: on every way out
            await self.leases.release(lease)

    async def _heartbeat(self, lease: Lease) -> None:
        interval = self.settings.run_lease_ttl_s / 3
        while True:
            await asyncio.sleep(interval)
            if not await self.leases.renew(lease):
                log.warning("run %s: lease renewal refused", lease.run_id)
                return

    async def _execute_leased(self, run_id: str, lease: Lease) -> None:
        writer = RunWriter(self.events, run_id, lease, await self.events.last_seq(run_id) + 1)
        run = await asyncio.to_thread(self.store.mark_running, run_id)
        if run is None:
            return
        started = time.monotonic()
        await writer.emit("run_started", {"attempt": run.attempts})
        outcome = await self._run_agent(run, writer)
        if outcome.error is not None:
            await writer.emit("error", outcome.error)
        await writer.emit(
            "chat_completed",
            {
                "thread_id": run.thread_id,
                "status": "completed" if outcome.status == "completed" else "failed",
                "output": outcome.output,
            },
        )
        await self._finish(
            run, writer, outcome, duration_ms=int((time.monotonic() - started) * 1000)
        )

    async def _run_agent(self, run: Run, writer: RunWriter) -> Outcome:
        try:
            catalog = AgentCatalog(self.store.engine, self.registry)
            agent = await asyncio.to_thread(catalog.pinned, run.agent_id, run.agent_revision)
        except LookupError as exc:  # AgentNotFound, RevisionNotFound
            return Outcome("failed", error={"code": "agent_not_found", "message": str(exc)})
        await writer.emit(
            "agent_resolved",
            {
                "agent_id": agent.id,
                "agent_name": agent.name,
                "agent_revision": run.agent_revision,
                "agent_tag": run.agent_tag,
                "thread_id": run.thread_id,
                "model": self._model(agent, run),
            },
        )
        try:
            loop = self._build_loop(agent, run, writer)
            messages = [
                {"role": "system", "content": agent.instructions},
                {"role": "user", "content": _user_message(run)},
            ]
            timeout = agent.timeout_s or self.settings.run_timeout_s
            async with asyncio.timeout(timeout):
                result = await loop.run(messages)
        except ProviderError as exc:
            return Outcome("failed", error={"code": exc.code, "message": exc.message})
        except TimeoutError:
            return Outcome(
                "failed",
                error={"code": "run_timeout", "message": f"the run took longer than {timeout:g} s"},
            )
        except LeaseLost:
            raise
        except Exception as exc:  # a bug or a broken tool import: the run fails, visibly
            log.exception("run %s failed", run.id)
            return Outcome(
                "failed",
                error={"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"},
            )
        return Outcome("completed", output=result.output, result=result)

    def _model(self, agent: AgentSpec, run: Run) -> str:
        return run.model_id or agent.model

    def _build_loop(self, agent: AgentSpec, run: Run, writer: RunWriter) -> AgentLoop:
        params = run.model_params or {}
        provider = build_provider(agent, self.registry.provider(agent), self.http)
        provider = self.slots.metered(run.id, provider)  # quotas: charge tokens per model turn
        settings = LoopSettings(
            model=self._model(agent, run),
            max_turns=agent.max_turns,
            temperature=params.get("temperature", agent.temperature),
            max_tokens=params.get("max_tokens", agent.max_tokens),
            seed=params.get("seed"),
        )
        return AgentLoop(
            provider, settings, [import_tool(path) for path in agent.tools], writer.emit
        )

    async def _finish(
        self, run: Run, writer: RunWriter, outcome: Outcome, *, duration_ms: int
    ) -> None:
        """Write the outcome and the archive first, then `done`: a client that sees `done` finds
        the run finished in the database."""
        usage = outcome.result.usage.model_dump() if outcome.result else None
        tool_calls = (
            [vars(record) for record in outcome.result.tool_calls] if outcome.result else []
        )
        done_data = {
            "status": outcome.status,
            "output": outcome.output,
            "usage": usage,
            "error": outcome.error,
            "duration_ms": duration_ms,
        }
        done = make_event(run.id, writer.next_seq, "done", done_data)
        history = await self.events.read(run.id)
        archive = [(e.seq, e.type, e.data) for e in history]
        archive.append((done["seq"], "done", encode(done)))
        await asyncio.to_thread(
            self.store.finish_run,
            run.id,
            status=outcome.status,
            output=outcome.output,
            result={"output": outcome.output, "tool_calls": tool_calls} if outcome.result else None,
            usage=usage,
            error=outcome.error,
            events=archive,
        )
        await writer.events.append(
            run.id,
            done["seq"],
            "done",
            encode(done),
            token=writer.lease.token,
            ttl_s=self.settings.events_ttl_after_done_s,
        )


def _user_message(run: Run) -> str:
    if run.message is not None:
        return run.message
    return json.dumps(run.input or {}, ensure_ascii=False, sort_keys=True)
