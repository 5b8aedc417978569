"""Executing one run on the worker: lease, agent loop, checkpoints, events, outcome, archive.

The Celery task only hands a run id to `RunExecutor.execute`; everything that touches the run
happens here, on the process's event loop.

A run started again (after its worker died, or handed it back) resumes from its last checkpoint:
it appends `run_started` with the new attempt, then a `metadata` event whose `superseded` names
the seqs appended after that checkpoint (they stay in the log, which is append-only), and goes on
with new seqs. Tool calls the checkpoint holds results for are not executed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from redis.exceptions import RedisError

from runrelay.agent._history import new_messages
from runrelay.agent._loop import AgentLoop, LoopResult, LoopSettings, LoopState
from runrelay.agent._mcp import McpServerError, McpToolConflict, open_mcp_tools
from runrelay.agent.config import AgentSpec, Registry
from runrelay.agent.events import CANCELLED_ERROR, encode, is_terminal, make_event
from runrelay.agent.middleware import RunBlocked, import_middleware
from runrelay.agent.providers import build_provider
from runrelay.agent.providers.base import ProviderError
from runrelay.agent.tools import current_run_id, import_tool
from runrelay.server import approvals
from runrelay.server.eventlog import EventLog, LeaseLost
from runrelay.server.revisions import AgentCatalog
from runrelay.server.settings import Settings
from runrelay.server.store import Store
from runrelay.server.tables import Run, as_utc, utcnow
from runrelay.server.thread_gate import ThreadGate
from runrelay.server.threads import Threads
from runrelay.server.webhooks import transitioned
from runrelay.types import RunStatus
from worker.checkpoints import Checkpoint, Checkpoints
from worker.control import RunControl, RunControls, StopReason
from worker.lease import Lease, Leases
from worker.slots import Slots
from worker.sweeper import Requeuer
from worker.writer import RunWriter

log = logging.getLogger(__name__)


class HandBack(Exception):
    """Control flow: the run was handed back (graceful shutdown) to be resumed elsewhere."""

    def __repr__(self) -> str:
        return f"HandBack({self.args[0]!r})"


class Paused(Exception):
    """Control flow: the run waits for approval decisions, with no worker (`requires_action`)."""

    def __repr__(self) -> str:
        return f"Paused({self.args[0]!r})"


@dataclass
class Outcome:
    status: str
    output: str = ""
    result: LoopResult | None = None
    error: dict[str, str] | None = None
    # A completed run's messages, for its thread's history.
    thread_messages: list[dict[str, Any]] = field(default_factory=list)


def _failed(code: str, message: str) -> Outcome:
    return Outcome("failed", error={"code": code, "message": message})


class RunExecutor:
    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        events: EventLog,
        checkpoints: Checkpoints,
        leases: Leases,
        controls: RunControls,
        requeuer: Requeuer,
        registry: Registry,
        http: httpx.AsyncClient,
        worker_id: str,
        slots: Slots,
    ) -> None:
        self.slots = slots
        self.settings = settings
        self.store = store
        self.events = events
        self.checkpoints = checkpoints
        self.leases = leases
        self.controls = controls
        self.requeuer = requeuer
        self.registry = registry
        self.http = http
        self.worker_id = worker_id
        self.threads = ThreadGate(slots.quotas, store)
        # TEMPORARY (issue 12): run listeners (webhooks, schedules) until the lifecycle calls
        # them; set by worker/app.py.
        self.listeners: Sequence[Any] = ()

    async def execute(self, run_id: str) -> None:
        if self.controls.draining:
            log.info("run %s: this worker is shutting down; handed back", run_id)
            await self.requeuer.requeue(run_id, force=True)
            return
        # The lease first: from here on, if this process dies, the sweeper sees a run that a
        # worker took (its fencing counter moved) without a live lease, and enqueues it again.
        lease = await self.leases.acquire(run_id)
        if lease is None:
            log.info("run %s: another worker holds the lease, nothing to do", run_id)
            return
        run = await self._startable(run_id, lease)
        if run is None:
            return
        try:
            slot = await self.slots.hold(run)  # quotas: the tenant's concurrency slot, renewed
        except BaseException:
            await self.leases.release(lease)
            raise
        control = self.controls.add(run_id)  # only the lease holder: one control per run
        heartbeat = asyncio.create_task(self._heartbeat(lease, control))
        handed_back = paused = False
        finished: Run | None = None
        try:
            finished = await self._execute_leased(run_id, lease, control)
        except Paused:
            # No worker waits for a person: the concurrency slot is free, the token
            # reservation stays the run's until it ends.
            paused = True
            await self.slots.pause(slot)
        except LeaseLost:
            log.warning("run %s: lease lost, leaving the run to its new holder", run_id)
            slot.handed_over = True
        except HandBack:
            handed_back = True
            slot.handed_over = True  # quotas: the slot stays the run's until it resumes
        except BaseException:
            # Unfinished (the sweeper resumes it): its slot and token reservation stay its own.
            slot.handed_over = True
            raise
        finally:
            self.controls.remove(control)
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            await self.slots.release(slot)  # quotas: on every way out
            await self.leases.release(lease)
        if handed_back:
            log.info("run %s: handed back, to be resumed by another worker", run_id)
            await self.requeuer.requeue(run_id, force=True)
        else:
            await self._after_attempt(run_id, finished, paused=paused, ended=not slot.handed_over)

    async def _after_attempt(
        self, run_id: str, finished: Run | None, *, paused: bool, ended: bool
    ) -> None:
        """Threads: a run that ended here lets the next run of its thread go (a paused one keeps
        its thread). Approvals: the decisions may have come while this worker still held the
        lease (a quick approver), so the worker the dispatcher sent found the lease taken and
        left: send the run again (a duplicate task does nothing)."""
        if paused:
            run = await asyncio.to_thread(self.store.get_run, run_id)
            if run is not None and run.status == "queued":
                await self.requeuer.requeue(run_id, force=True)
        elif finished is not None:
            await self.threads.release(finished)
        elif ended:
            await self.threads.release_if_finished(run_id)

    async def _startable(self, run_id: str, lease: Lease) -> Run | None:
        """The run if it is to start now; else None, with the lease given back: it is finished,
        paused for approval, or waiting for its thread."""
        run = await asyncio.to_thread(self.store.get_run, run_id)
        if run is not None and run.status == "requires_action":
            log.info("run %s waits for approval; a decision will enqueue it", run_id)
        elif run is None or is_terminal(run.status):
            log.info("run %s: %s, nothing to do", run_id, run.status if run else "no such run")
            if run is not None:
                await self.slots.forget(run)  # quotas: free a slot dispatch gave it
                await self.threads.release(run)  # threads: in case its releaser died
        elif (holder := await self.threads.enter(run)) is not None:  # one active run per thread
            log.info("run %s: waits for run %s, which holds its thread", run_id, holder)
        else:
            return run
        await self.leases.release(lease)
        return None

    async def _heartbeat(self, lease: Lease, control: RunControl) -> None:
        interval = self.settings.run_lease_ttl_s / 3
        while True:
            await asyncio.sleep(interval)
            try:
                renewed = await self.leases.renew(lease)
            except RedisError as exc:  # a blip: try again next beat, the TTL has room for it
                log.warning("run %s: lease renewal failed: %s", lease.run_id, exc)
                continue
            if not renewed:
                # Someone else runs it now: stop before this worker calls more tools.
                log.warning("run %s: lease renewal refused; stopping", lease.run_id)
                control.stop(StopReason.LEASE_LOST)
                return

    async def _execute_leased(self, run_id: str, lease: Lease, control: RunControl) -> Run | None:
        """Run the run under `lease`; the run when this attempt finished it."""
        last = await self.events.last_seq(run_id)
        run = await asyncio.to_thread(self.store.mark_running, run_id, lease_token=lease.token)
        if run is None:
            return None
        writer = RunWriter(self.events, self.checkpoints, run_id, lease, last + 1)
        started = time.monotonic()
        if last == 0:  # the log is gone (Redis was emptied): the database still has the run
            await writer.emit(
                "run_queued",
                {"agent": run.agent_name, "agent_id": run.agent_id, "thread_id": run.thread_id},
            )
        await writer.emit("run_started", {"attempt": run.attempts, "worker": self.worker_id})
        checkpoint = await self._resume_point(run, writer, last)
        outcome = await self._outcome(run, writer, checkpoint, control)
        if outcome.status == "requires_action":
            outcome = await self._pause(run, writer, outcome)
        if outcome.error is not None:
            await writer.emit("error", outcome.error)
        if outcome.status != "cancelled":
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
        return run

    async def _pause(self, run: Run, writer: RunWriter, outcome: Outcome) -> Outcome:
        """Park the run until its calls are decided (raises `Paused`); the checkpoint goes to
        the database too, so a decision taken days later still finds it, and the run's Redis
        log and checkpoint lose their TTL while it waits. A cancel requested meanwhile wins:
        the run ends cancelled instead."""
        assert outcome.result is not None and outcome.result.required_action
        saved = await self.checkpoints.load(run.id)
        if saved is None:
            raise LeaseLost(run.id)  # only a newer holder (or a Redis wipe) removes it
        paused = await asyncio.to_thread(
            approvals.pause,
            self.store.engine,
            run.id,
            lease_token=writer.lease.token,
            tool_calls=outcome.result.required_action,
            checkpoint={"next_seq": saved.next_seq, "state": saved.state.to_dict()},
        )
        if not paused:
            current = await asyncio.to_thread(self.store.get_run, run.id)
            if current is not None and current.cancel_requested_at is not None:
                return Outcome("cancelled", error=CANCELLED_ERROR)
            raise LeaseLost(run.id)
        # TEMPORARY (issue 12): `run.requires_action` webhooks, until the lifecycle does it.
        await transitioned(self.store.engine, run.id, RunStatus.RUNNING, self.listeners)
        await self.checkpoints.keep(run.id)
        raise Paused(run.id)

    async def _resume_point(self, run: Run, writer: RunWriter, last: int) -> Checkpoint | None:
        """The checkpoint to continue from, having marked what came after it superseded, with
        the approval decisions taken while the run was paused."""
        if run.attempts <= 1 or last == 0:
            return None
        checkpoint = await self.checkpoints.load(run.id)
        if checkpoint is None and run.required_action:  # paused, and Redis lost it meanwhile
            saved = run.required_action["checkpoint"]
            checkpoint = Checkpoint(saved["next_seq"], LoopState.from_dict(saved["state"]))
        if checkpoint is not None:
            checkpoint.state.approvals.update(approvals.decisions(run.required_action))
            # The budget counts tokens of every attempt, not only this one's.
            self.slots.carry(run.id, checkpoint.state.usage.total_tokens)
        if checkpoint is not None and checkpoint.next_seq > last + 1:
            log.warning("run %s: checkpoint is ahead of the log; starting over", run.id)
            checkpoint = None
        from_seq = checkpoint.next_seq if checkpoint is not None else 2
        if last >= from_seq:
            await writer.emit(
                "metadata",
                {"superseded": {"from_seq": from_seq, "to_seq": last}, "attempt": run.attempts},
            )
        return checkpoint

    async def _outcome(
        self, run: Run, writer: RunWriter, checkpoint: Checkpoint | None, control: RunControl
    ) -> Outcome:
        if run.cancel_requested_at is not None or await self.controls.cancel_requested(run.id):
            return Outcome("cancelled", error=CANCELLED_ERROR)
        if run.attempts - run.resumes > self.settings.max_run_attempts:
            return _failed(
                "too_many_attempts",
                f"the run was started {run.attempts - run.resumes - 1} times without finishing "
                f"(its worker died or handed it back each time); giving up after "
                f"RUNRELAY_MAX_RUN_ATTEMPTS={self.settings.max_run_attempts}",
            )
        try:
            catalog = AgentCatalog(self.store.engine, self.registry)
            agent = await asyncio.to_thread(catalog.pinned, run.agent_id, run.agent_revision)
        except LookupError as exc:  # AgentNotFound, RevisionNotFound
            return _failed("agent_not_found", str(exc))
        return await self._run_agent(run, agent, writer, checkpoint, control)

    def _deadline(self, run: Run, agent: AgentSpec) -> tuple[float, float]:
        """The run's timeout and the seconds left of it, counted from its first start."""
        timeout = run.timeout_s or agent.timeout_s or self.settings.run_timeout_s
        first_start = as_utc(run.started_at or utcnow())
        active_s = (utcnow() - first_start).total_seconds() - run.waited_s
        return timeout, timeout - active_s

    async def _run_agent(
        self,
        run: Run,
        agent: AgentSpec,
        writer: RunWriter,
        checkpoint: Checkpoint | None,
        control: RunControl,
    ) -> Outcome:
        timeout, remaining = self._deadline(run, agent)
        state = checkpoint.state if checkpoint else await self._first_state(run, agent, writer)
        task = asyncio.current_task()
        control.task = task
        run_id_token = current_run_id.set(run.id)
        try:
            if control.reason is not None:
                raise asyncio.CancelledError  # stopped before the loop began
            loop = self._build_loop(agent, run, writer)
            async with asyncio.timeout(max(remaining, 0)):
                outcome = await self._run_loop(loop, agent, state)
        except asyncio.CancelledError:
            if control.reason is None:
                raise
            if task is not None:
                task.uncancel()
            if control.reason is StopReason.LEASE_LOST:
                raise LeaseLost(run.id) from None
            await writer.resync()
            if control.reason is StopReason.CANCEL:
                return Outcome("cancelled", error=CANCELLED_ERROR)
            raise HandBack(run.id) from None
        except ProviderError as exc:
            return _failed(exc.code, exc.message)
        except RunBlocked as exc:
            return _failed("blocked", str(exc) or "a middleware stopped the run")
        except TimeoutError:
            await writer.resync()
            return _failed("run_timeout", f"the run took longer than its deadline, {timeout:g} s")
        except LeaseLost:
            raise
        except Exception as exc:  # a bug or a broken tool import: the run fails, visibly
            log.exception("run %s failed", run.id)
            return _failed("internal_error", f"{type(exc).__name__}: {exc}")
        finally:
            control.task = None
            current_run_id.reset(run_id_token)
        return outcome

    async def _first_state(self, run: Run, agent: AgentSpec, writer: RunWriter) -> LoopState:
        """A run's first attempt: announce the agent, checkpoint the opening messages (with
        its thread's history)."""
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
        threads = Threads(self.store.engine)
        history = await asyncio.to_thread(threads.history, run, agent.history)
        state = LoopState(
            messages=[
                {"role": "system", "content": agent.instructions},
                *history,
                {"role": "user", "content": _user_message(run)},
            ],
            history_len=len(history),
        )
        await writer.checkpoint(state)
        return state

    async def _run_loop(self, loop: AgentLoop, agent: AgentSpec, state: LoopState) -> Outcome:
        """The loop, with the tools of the agent's MCP servers open for this attempt."""
        try:
            async with open_mcp_tools(agent.mcp_servers, reserved=loop.tools) as mcp_tools:
                loop.tools.update((tool.name, tool) for tool in mcp_tools)
                result = await loop.run(state.messages, resume=state)
        except McpServerError as exc:
            return _failed("mcp_unavailable", str(exc))
        except McpToolConflict as exc:
            return _failed("mcp_tool_conflict", str(exc))
        # completed, or requires_action (paused for approval decisions)
        thread_messages = new_messages(state.messages, state.history_len)
        return Outcome(result.status, result.output, result, thread_messages=thread_messages)

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
            provider,
            settings,
            [import_tool(path) for path in agent.tools],
            emit=writer.emit,
            checkpoint=writer.checkpoint,
            middleware=[import_middleware(path) for path in agent.middleware],
            agent_name=agent.name,
            run_id=run.id,
            thread_id=run.thread_id,
            suggestions=[s.model_dump() for s in agent.suggestions],
        )

    async def _finish(
        self, run: Run, writer: RunWriter, outcome: Outcome, *, duration_ms: int
    ) -> None:
        """Write the outcome and the archive first, then `done`: a client that sees `done` finds
        the run finished in the database. Only the lease holder's write counts."""
        usage = recorded = None
        if outcome.result is not None:
            usage = outcome.result.usage.model_dump()
            # The run row keeps the usage per model too (`usage_by_model` in the API).
            recorded = {**usage, "by_model": outcome.result.usage_by_model}
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
        written = await asyncio.to_thread(
            self.store.finish_run,
            run.id,
            status=outcome.status,
            output=outcome.output,
            result={"output": outcome.output, "tool_calls": tool_calls} if outcome.result else None,
            usage=recorded,
            error=outcome.error,
            events=archive,
            lease_token=writer.lease.token,
            thread_messages=outcome.thread_messages if outcome.status == "completed" else (),
        )
        if not written:
            raise LeaseLost(run.id)
        await writer.events.append(
            run.id,
            done["seq"],
            "done",
            encode(done),
            token=writer.lease.token,
            ttl_s=self.settings.events_ttl_after_done_s,
        )
        await self.checkpoints.delete(run.id)
        await self.controls.forget(run.id)
        # TEMPORARY (issue 12): webhooks and schedule bookkeeping, until the lifecycle does it.
        await transitioned(self.store.engine, run.id, RunStatus.RUNNING, self.listeners)


def _user_message(run: Run) -> str:
    if run.message is not None:
        return run.message
    return json.dumps(run.input or {}, ensure_ascii=False, sort_keys=True)
