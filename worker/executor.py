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
import json
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from enum import Enum
from typing import TypeVar, cast

import httpx

from runrelay.agent._driver import AgentRun, Outcome, RunHooks, RunRequest
from runrelay.agent._loop import LoopState
from runrelay.agent.config import AgentSpec, Registry
from runrelay.agent.messages import ApprovalRequest, ChatMessage
from runrelay.server.approvals import PausedCalls, SavedCheckpoint, decisions
from runrelay.server.autopipeline import together
from runrelay.server.eventlog import EventLog, LeaseLost
from runrelay.server.lifecycle import Lifecycle
from runrelay.server.outages import TRANSIENT, retrying
from runrelay.server.revisions import AgentCatalog
from runrelay.server.run_table import Ending, SeqBlock
from runrelay.server.settings import Settings
from runrelay.server.store import Store
from runrelay.server.tables import Run, RunIdentity, RunRef, as_utc, utcnow
from runrelay.server.threads import Threads
from runrelay.types import ModelParams, RunStatus
from worker import logs
from worker.checkpoints import Checkpoint, Checkpoints
from worker.control import RunControl, RunControls, StopReason
from worker.lease import Lease, Leases
from worker.renewals import Renewals
from worker.slots import Slot, Slots
from worker.starts import Started, Starts
from worker.sweeper import Requeuer
from worker.writer import SEQ_BLOCK, RunWriter

log = logging.getLogger(__name__)
T = TypeVar("T")
# How long the last step of a finished run waits for the database to come back.
_FINISH_RETRY_S = 60.0
# How long a database write in the middle of a run waits before the run is handed back.
_STORE_RETRY_S = 10.0


class AttemptEnd(Enum):
    """How one attempt on a run came out, for `execute` to act on."""

    ENDED = "ended"  # finished through the lifecycle: slot, reservation and thread released
    NOT_STARTED = "not_started"  # finished or paused before this worker could mark it running
    PAUSE = "pause"  # waits for approval decisions: to be parked, with no worker
    HANDED_BACK = "handed_back"  # graceful shutdown: to be resumed by another worker
    LEASE_LOST = "lease_lost"  # another worker holds the run now


@dataclass(frozen=True)
class Attempt:
    end: AttemptEnd
    # For `PAUSE`: the calls awaiting a decision and the checkpoint to resume from.
    tool_calls: list[ApprovalRequest] = field(default_factory=list)
    checkpoint: SavedCheckpoint | None = None


class RunExecutor:
    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        lifecycle: Lifecycle,
        events: EventLog,
        checkpoints: Checkpoints,
        leases: Leases,
        controls: RunControls,
        requeuer: Requeuer,
        registry: Registry,
        http: httpx.AsyncClient,
        worker_id: str,
        slots: Slots,
        renewals: Renewals,
    ) -> None:
        self.slots = slots
        self.renewals = renewals
        self.settings = settings
        self.store = store
        self.lifecycle = lifecycle
        self.events = events
        self.checkpoints = checkpoints
        self.leases = leases
        self.controls = controls
        self.requeuer = requeuer
        self.registry = registry
        self.http = http
        self.worker_id = worker_id
        self.threads = lifecycle.threads
        self.starts = Starts(leases, self.threads, slots.ttl_ms)
        self.catalog = AgentCatalog(store.engine, registry)

    async def execute(self, run_id: str, known: RunRef | None = None) -> None:
        """Run the run whose task arrived. `known`: its identity, when the task carried it (a
        run the API just created): then the run is not read before its start, whose conditional
        UPDATE refuses it if it finished or paused meanwhile (`AttemptEnd.NOT_STARTED`)."""
        logs.about_run(run_id)  # every log line of this run names it
        if self.controls.draining:
            log.info("run %s: this worker is shutting down; handed back", run_id)
            await self.requeuer.requeue(run_id, force=True)
            return
        taken = await self._take(run_id, known)
        if taken is None:
            return
        run, lease, slot, started = taken
        control = self.controls.add(run_id)  # only the lease holder: one control per run
        self.renewals.hold_lease(lease, control)  # renewed with the process's other leases
        attempt: Attempt | None = None
        try:
            attempt = await self._attempt(run_id, lease, slot, control, started)
        finally:
            self.controls.remove(control)
            self.renewals.drop_lease(lease)
            # The slot stays the run's unless the attempt ended it (the lifecycle released it)
            # or it will not start; an attempt that raised left it unfinished, to be resumed.
            await self.slots.stop_renewing(slot)
            if attempt is None:
                await self.leases.release(lease)
        await self._after(attempt, run, lease, slot)

    async def _take(
        self, run_id: str, known: RunRef | None
    ) -> tuple[RunIdentity, Lease, Slot, Started] | None:
        """The run, its lease, its slot (renewed from now on) and what its start found, if it
        is to start now; else None, with the lease given back: another worker holds it, or it
        is finished, paused for approval, or waiting for its thread.

        The lease comes first: from then on, if this process dies, the sweeper sees a run that
        a worker took (its fencing counter moved) without a live lease, and enqueues it again.
        A run `known` from its task is not read (the start's UPDATE tells whether it may go
        on): its lease, thread, slot and last seq are one Redis call (worker/starts.py)."""
        if known is not None:
            logs.about_run(run_id, known.tenant_id)
            started = await self.starts.start(known)
            if started.lease is None:
                log.info("run %s: another worker holds the lease, nothing to do", run_id)
                return None
            run: RunIdentity = known
            lease = started.lease
        else:
            acquired = await self.leases.acquire(run_id)
            if acquired is None:
                log.info("run %s: another worker holds the lease, nothing to do", run_id)
                return None
            lease = acquired
            read = await self._read(run_id, lease)
            if read is None:
                return None
            run = read
            started = await self._holding(self.starts.start(run, lease), lease)
        if started.holder is None:
            return run, lease, self.slots.held(run, started.period), started
        # Parked behind the run holding its thread: it waits, unless that run is finished
        # (its releaser died), in which case it takes the thread over, then the rest.
        entry = await self._holding(self.threads.enter(run), lease)
        if entry.holder is not None:
            log.info("run %s: waits for run %s, which holds its thread", run_id, entry.holder)
            await self.leases.release(lease)
            return None
        last = await self._holding(self.events.last_seq(run_id), lease)
        slot = await self._holding(self.slots.hold(run), lease)
        return run, lease, slot, Started(lease, None, entry.new_thread, slot.period, last)

    async def _holding(self, step: Awaitable[T], lease: Lease) -> T:
        """`step` of a start, the lease given back if it fails (the run is enqueued again by
        whoever sent it, or the sweeper)."""
        try:
            return await step
        except BaseException:
            await self.leases.release(lease)
            raise

    async def _after(self, attempt: Attempt, run: RunIdentity, lease: Lease, slot: Slot) -> None:
        """Act on how the attempt ended; the lease is given back on every way."""
        if attempt.end is AttemptEnd.PAUSE:
            await self._pause(run, lease, slot, attempt)
            return
        if attempt.end is AttemptEnd.NOT_STARTED:
            await self._not_started(run, lease, slot)
        elif attempt.end is AttemptEnd.ENDED:
            await self._ended(run, lease)
        else:
            await self.leases.release(lease)
        if attempt.end is AttemptEnd.HANDED_BACK:
            log.info("run %s: handed back, to be resumed by another worker", run.id)
            await self._count_handback(run, lease)
            await self.requeuer.requeue(run.id, force=True)
        elif attempt.end is AttemptEnd.LEASE_LOST:
            log.warning("run %s: lease lost, leaving the run to its new holder", run.id)

    async def _ended(self, run: RunIdentity, lease: Lease) -> None:
        """The run ended: its cancel flag, its `requeued` marker and its checkpoint go, then its
        lease, in one round trip. If Redis is away, each expires in its time."""
        forgot = self.controls.forget(run.id, also=self.checkpoints.key(run.id))
        try:
            await together(forgot, self.leases.release(lease))
        except TRANSIENT as exc:
            log.warning("run %s: ended; its lease and markers are left to expire (%r)", run.id, exc)

    async def _not_started(self, run: RunIdentity, lease: Lease, slot: Slot) -> None:
        """The start refused the run: it finished (cancelled while queued, say) or paused for
        approval since its task was sent. Give back what was taken for it, by its status now."""
        current = await self.store.get_run_async(run.id)
        if current is not None and current.status is RunStatus.REQUIRES_ACTION:
            log.info("run %s waits for approval; a decision will enqueue it", run.id)
            await self.slots.pause(slot)  # quotas: the slot only; the reservation stays its own
            await self.leases.release(lease)
            return  # it keeps its thread
        log.info("run %s: %s, not started", run.id, current.status if current else "no such run")
        if current is not None and current.status.is_terminal:
            await self.slots.stop_renewing(slot)
            await self.slots.forget(current)  # quotas: settled at what it used, as it ended
            await self.leases.release(lease)
            await self.threads.release(current)  # threads: taken for it, or its releaser died
        else:
            await self.slots.release(slot)
            await self.leases.release(lease)

    async def _count_handback(self, run: RunIdentity, lease: Lease) -> None:
        """A hand-back is not a crash: the next start must not count toward the attempts cap
        (a run handed back at each of several store outages would end `too_many_attempts`).
        Waits a little for a database that is down; if it stays down, the start counts."""
        try:
            await retrying(
                lambda: self.lifecycle.handed_back(run.id, lease_token=lease.token),
                what=f"run {run.id}: count the hand-back",
                for_s=_STORE_RETRY_S,
            )
        except TRANSIENT as exc:
            log.warning("run %s: hand-back not recorded (%s); it counts as an attempt", run.id, exc)

    async def _pause(self, run: RunIdentity, lease: Lease, slot: Slot, attempt: Attempt) -> None:
        """Park the run until its calls are decided. Everything this worker holds goes first
        (its slot, then its lease; the token reservation stays the run's), and only then does
        the run show `requires_action`: a decision can never meet a run a worker still holds.
        The checkpoint goes to the database too, so a decision taken days later still finds
        it, and the run's Redis log and checkpoint lose their TTL while it waits."""
        assert attempt.checkpoint is not None
        await self.checkpoints.keep(run.id)
        await self.slots.pause(slot)
        await self.leases.release(lease)
        paused = await self.lifecycle.pause(
            run.id,
            lease_token=lease.token,
            tool_calls=attempt.tool_calls,
            checkpoint=attempt.checkpoint,
        )
        if paused:
            return
        # Refused: a cancel was requested meanwhile (it wins), or another worker took the run.
        # Still ours in the database: a new attempt (any worker) ends it cancelled.
        current = await asyncio.to_thread(self.store.get_run, run.id)
        if current is not None and current.lease_token == lease.token:
            await self.requeuer.requeue(run.id, force=True)

    async def _read(self, run_id: str, lease: Lease) -> RunIdentity | None:
        """The run as the database has it, if it may start; else None, with the lease given
        back (it is finished, or paused for approval)."""
        read = await self.store.get_run_async(run_id)
        if read is not None:
            logs.about_run(run_id, read.tenant_id)
        if read is not None and read.status is RunStatus.REQUIRES_ACTION:
            log.info("run %s waits for approval; a decision will enqueue it", run_id)
        elif read is None or read.status.is_terminal:
            status = read.status if read else "no such run"
            log.info("run %s: %s, nothing to do", run_id, status)
            if read is not None:
                await self.slots.forget(read)  # quotas: free a slot dispatch gave it
                await self.threads.release(read)  # threads: in case its releaser died
        else:
            return read
        await self.leases.release(lease)
        return None

    async def _attempt(
        self, run_id: str, lease: Lease, slot: Slot, control: RunControl, started: Started
    ) -> Attempt:
        try:
            return await self._attempt_leased(run_id, lease, slot, control, started)
        except LeaseLost:  # an append or checkpoint refused: a newer holder runs it now
            return Attempt(AttemptEnd.LEASE_LOST)
        except TRANSIENT as exc:
            # Redis or the database went away mid-run: not the run's failure. Hand it back; it
            # resumes from its checkpoint (here or elsewhere) once the store is back; if the
            # hand-back itself cannot reach Redis, the lease lapses and the sweeper does it.
            log.warning("run %s: store unavailable (%s); handed back", run_id, exc)
            return Attempt(AttemptEnd.HANDED_BACK)

    async def _attempt_leased(
        self, run_id: str, lease: Lease, slot: Slot, control: RunControl, started: Started
    ) -> Attempt:
        """Run the run under `lease` until it ends, pauses, or is handed back. `started`: what
        its start found (the log's last seq; whether its thread is new, with no messages)."""
        last, new_thread = started.last_seq, started.new_thread
        run = await self.lifecycle.start(
            run_id, lease_token=lease.token, seqs=SeqBlock(last, SEQ_BLOCK)
        )
        if run is None:
            return Attempt(AttemptEnd.NOT_STARTED)
        # The log is gone if Redis lost it (emptied, restarted without persistence). It goes on
        # above every seq it may have reached (the database's `seq_reserved` before this start),
        # and says what it lost: a client holding any seq reads on consistently, never another
        # attempt's events under seqs it already has.
        reached = run.seq_reserved - SEQ_BLOCK
        lost = last == 0 and reached > 0
        next_seq = reached + 1 if lost else last + 1
        writer = RunWriter(
            self.events,
            self.checkpoints,
            run_id,
            lease,
            next_seq,
            reserved=run.seq_reserved,
            reserve=lambda upto: retrying(
                lambda: asyncio.to_thread(self.store.reserve_seqs, run_id, upto),
                what=f"run {run_id}: reserve seqs",
                for_s=_STORE_RETRY_S,
            ),
        )
        began = time.monotonic()
        if last == 0:  # the log is gone (Redis was emptied): the database still has the run
            await writer.emit(
                "run_queued",
                {"agent": run.agent_name, "agent_id": run.agent_id, "thread_id": run.thread_id},
            )
        await writer.emit("run_started", {"attempt": run.attempts, "worker": self.worker_id})
        if lost:
            log.warning("run %s: its log was lost from Redis; going on at seq %d", run_id, next_seq)
            await writer.emit(
                "metadata",
                {
                    "superseded": {"from_seq": 1, "to_seq": reached},
                    "attempt": run.attempts,
                },
            )
        checkpoint = await self._resume_point(run, writer, last, lost)
        outcome = await self._outcome(run, writer, checkpoint, control, new_thread)
        if isinstance(outcome, AttemptEnd):  # stopped: handed back, or the lease was lost
            return Attempt(outcome)
        await writer.flush()  # every event of the attempt is in the log before it ends
        if outcome.status is RunStatus.REQUIRES_ACTION:
            assert outcome.result is not None and outcome.result.required_action
            saved = await self.checkpoints.load(run.id)
            if saved is None:  # only a newer holder (or a Redis wipe) removes it
                return Attempt(AttemptEnd.LEASE_LOST)
            return Attempt(
                AttemptEnd.PAUSE,
                tool_calls=outcome.result.required_action,
                checkpoint=SavedCheckpoint(next_seq=saved.next_seq, state=saved.state.to_dict()),
            )
        if outcome.error is not None:
            await writer.emit("error", outcome.error)
        if outcome.status is not RunStatus.CANCELLED:
            completed = outcome.status is RunStatus.COMPLETED
            await writer.emit(
                "chat_completed",
                {
                    "thread_id": run.thread_id,
                    "status": RunStatus.COMPLETED if completed else RunStatus.FAILED,
                    "output": outcome.output,
                },
            )
        history = await writer.close()  # the log as it ends: what the database archives
        await self.slots.stop_renewing(slot)  # a renewal must not take back a released slot
        duration_ms = int((time.monotonic() - began) * 1000)
        # The run's work is done: a database blip here is waited out (the renewer keeps the
        # lease meanwhile) rather than handing the run back to do it again.
        ended = await retrying(
            lambda: self.lifecycle.finish(
                run,
                outcome,
                ending=Ending.by_worker(lease.token),
                duration_ms=duration_ms,
                used_tokens=slot.used_tokens,
                token_period=slot.period or "-",
                next_seq=writer.next_seq,
                history=history,
            ),
            what=f"run {run.id}: finish",
            for_s=_FINISH_RETRY_S,
        )
        if not ended:
            return Attempt(AttemptEnd.LEASE_LOST)
        log.info(  # the line's prefix names the run and its tenant (worker/logs.py)
            "ended %s in %d ms (attempt %d, last seq %d)",
            outcome.status,
            duration_ms,
            run.attempts,
            writer.next_seq - 1,
        )
        return Attempt(AttemptEnd.ENDED)

    async def _resume_point(
        self, run: Run, writer: RunWriter, last: int, lost: bool
    ) -> Checkpoint | None:
        """The checkpoint to continue from, having marked what came after it superseded, with
        the approval decisions taken while the run was paused. Redis's if it has one, else the
        newest the database kept (after a tool result, or at the pause): with Redis emptied,
        (`lost`: the whole lost log is already marked superseded) no finished tool runs again."""
        if run.attempts <= 1 or (last == 0 and not lost):
            return None
        checkpoint = await self.checkpoints.load(run.id)
        from_redis = checkpoint is not None
        paused = PausedCalls.of(run.required_action)
        if checkpoint is None:
            kept = [await self.checkpoints.kept(run.id)]
            if paused is not None:
                saved = paused.checkpoint
                kept.append(Checkpoint(saved.next_seq, LoopState.from_dict(saved.state)))
            checkpoint = max(
                (c for c in kept if c is not None), key=lambda c: c.next_seq, default=None
            )
        if checkpoint is not None:
            checkpoint.state.approvals.update(decisions(paused))
            # The budget counts tokens of every attempt, not only this one's.
            self.slots.carry(run.id, checkpoint.state.usage.total_tokens)
        if lost:
            return checkpoint
        if checkpoint is not None and checkpoint.next_seq > last + 1:
            log.warning("run %s: checkpoint is ahead of the log; starting over", run.id)
            checkpoint = None
        from_seq = checkpoint.next_seq if checkpoint is not None else 2
        if last >= from_seq:
            await writer.emit(
                "metadata",
                {"superseded": {"from_seq": from_seq, "to_seq": last}, "attempt": run.attempts},
            )
        if from_redis and checkpoint is not None and checkpoint.has_tool_results:
            # The database's copy lags if keeping it failed (the database was down): catch up
            # before Redis may lose this one.
            await self.checkpoints.to_database(run.id, writer.lease.token, checkpoint)
        return checkpoint

    async def _outcome(
        self,
        run: Run,
        writer: RunWriter,
        checkpoint: Checkpoint | None,
        control: RunControl,
        new_thread: bool,
    ) -> Outcome | AttemptEnd:
        if run.cancel_requested_at is not None or await self.controls.cancel_requested(run.id):
            return Outcome.cancelled()
        if run.attempts - run.resumes > self.settings.max_run_attempts:
            return Outcome.failed(
                "too_many_attempts",
                f"the run was started {run.attempts - run.resumes - 1} times without finishing "
                f"(its worker died or lost its lease each time); giving up after "
                f"RUNRELAY_MAX_RUN_ATTEMPTS={self.settings.max_run_attempts}",
            )
        try:
            agent = self.catalog.known(run.agent_id, run.agent_revision)
            if agent is None:  # a revision not read yet: a database read
                agent = await asyncio.to_thread(
                    self.catalog.pinned, run.agent_id, run.agent_revision
                )
        except LookupError as exc:  # AgentNotFound, RevisionNotFound
            return Outcome.failed("agent_not_found", str(exc))
        return await self._run_agent(run, agent, writer, checkpoint, control, new_thread)

    def _request(self, run: Run, agent: AgentSpec, history: list[ChatMessage]) -> RunRequest:
        """What the run asks of its agent; its deadline is counted from its first start, less
        the time it waited for approval decisions."""
        if run.timeout_s:
            timeout, whose = run.timeout_s, "the timeout_s it was given"
        elif agent.timeout_s:
            timeout, whose = agent.timeout_s, f"{agent.name}'s timeout_s"
        else:
            timeout, whose = self.settings.run_timeout_s, "RUNRELAY_RUN_TIMEOUT_S"
        first_start = as_utc(run.started_at or utcnow())
        active_s = (utcnow() - first_start).total_seconds() - run.waited_s
        params = run.model_params or {}
        return RunRequest(
            run_id=run.id,
            message=_user_message(run),
            timeout_s=timeout,
            timeout_name=whose,
            time_left_s=timeout - active_s,
            model_id=run.model_id,
            params=ModelParams(
                temperature=params.get("temperature"),
                max_tokens=params.get("max_tokens"),
                seed=params.get("seed"),
            ),
            thread_id=run.thread_id,
            history=history,
            resolved={
                "agent_revision": run.agent_revision,
                "agent_tag": run.agent_tag,
                "thread_id": run.thread_id,
            },
        )

    async def _run_agent(
        self,
        run: Run,
        agent: AgentSpec,
        writer: RunWriter,
        checkpoint: Checkpoint | None,
        control: RunControl,
        new_thread: bool,
    ) -> Outcome | AttemptEnd:
        """The agent through the driver, with this worker's log, checkpoints and token metering;
        a cancel (an outcome), a hand-back or a lost lease (how the attempt ends) stops it."""
        history: list[ChatMessage] = []
        # A first attempt starts with its thread's history (a new thread has none: no read).
        if checkpoint is None and not new_thread:
            threads = Threads(self.store.engine)
            stored = await threads.history_async(run, agent.history)
            history = cast(list[ChatMessage], stored)  # as the loop wrote them
        driver = AgentRun(agent, self.registry.provider(agent), self.http)
        hooks = RunHooks(
            emit=writer.emit,
            checkpoint=writer.checkpoint,
            wrap_provider=lambda provider: self.slots.metered(run.id, provider),  # quotas
            after_interrupt=writer.resync,
            propagate=(LeaseLost, *TRANSIENT),  # a store outage hands the run back
        )
        task = asyncio.current_task()
        control.task = task
        try:
            if control.reason is not None:
                raise asyncio.CancelledError  # stopped before the loop began
            return await driver.drive(
                self._request(run, agent, history),
                hooks,
                resume=checkpoint.state if checkpoint else None,
            )
        except asyncio.CancelledError:
            if control.reason is None:
                raise
            if task is not None:
                task.uncancel()
            if control.reason is StopReason.LEASE_LOST:
                return AttemptEnd.LEASE_LOST
            await writer.resync()
            if control.reason is StopReason.CANCEL:
                return Outcome.cancelled()
            return AttemptEnd.HANDED_BACK
        finally:
            control.task = None


def _user_message(run: Run) -> str:
    if run.message is not None:
        return run.message
    return json.dumps(run.input or {}, ensure_ascii=False, sort_keys=True)
