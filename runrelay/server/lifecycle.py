"""The run lifecycle: which status may follow which, and the one owner that moves a run.

    queued ──start──▶ running ──finish──▶ completed | failed | cancelled | expired
      │  ▲              │  ▲ resume (crash, hand back: attempts + 1)
      │  └──decide──┐   ▼  │
      │        requires_action ──cancel / expire──▶ cancelled | expired
      └──cancel / enqueue failure / expire──▶ cancelled | failed | expired

`TRANSITIONS` is that picture as a table (the README's "Run statuses" mirrors it). Every status
change is made here, by one conditional UPDATE (`WHERE status IN sources(target)`, plus the
lease token for a worker), so a transition the table does not allow changes nothing.

Who calls what: the shim creates runs (`create`), cancels them (`request_cancel`) and records
approval decisions (`decide`); the worker starts (`start`), pauses (`pause`) and ends them
(`finish`); the sweeper expires runs left waiting for approval (`expire`). Every ending goes
through `finish`: the outcome and the archived log in one transaction, then exactly one `done`
in the stream, then the tenant's slot and token reservation, then the thread.

Extension point: `RunListener`s given to the lifecycle are called once per transition, inside
the transaction that made it (so what they record is as durable as the new status), then once
after it committed. A run that ended (`run.status.is_terminal`) is seen exactly once.

Errors (the HTTP layer maps them to statuses, in `api_shim/errors.py`)::

    LifecycleError
    ├── RunNotFound
    ├── TransitionRefused          the table (or the lease, or a cancel) forbids the move
    ├── RunNotAwaitingApproval     a decision for a run that is not `requires_action`
    ├── UnknownCall                a decision for a call the run does not wait on
    └── AlreadyDecided             a contrary decision on a call already decided
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import ColumnElement, Engine, bindparam, case, func, insert, update
from sqlmodel import Session, col, select

from runrelay.agent._driver import Outcome
from runrelay.agent.config import AgentSpec
from runrelay.agent.events import encode, make_event
from runrelay.agent.messages import ApprovalRequest
from runrelay.server.approvals import Decision, PausedCalls, SavedCheckpoint
from runrelay.server.errors import Conflict, Invalid, NotFound, ServerError
from runrelay.server.eventlog import EventLog, LeaseLost
from runrelay.server.keys import RedisKeys
from runrelay.server.quota import QuotaStore
from runrelay.server.settings import Settings
from runrelay.server.store import Store, new_id
from runrelay.server.tables import RUN_COLUMNS, Run, RunLog, run_of, utcnow
from runrelay.server.thread_gate import ThreadGate
from runrelay.server.threads import Threads, append_messages
from runrelay.types import RunCreate, RunStatus, ToolApproval

log = logging.getLogger(__name__)

QUEUED, RUNNING, REQUIRES_ACTION = RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.REQUIRES_ACTION
COMPLETED, FAILED = RunStatus.COMPLETED, RunStatus.FAILED
CANCELLED, EXPIRED = RunStatus.CANCELLED, RunStatus.EXPIRED

TRANSITIONS: Final[dict[RunStatus, frozenset[RunStatus]]] = {
    QUEUED: frozenset({RUNNING, CANCELLED, FAILED, EXPIRED}),
    RUNNING: frozenset({RUNNING, REQUIRES_ACTION, COMPLETED, FAILED, CANCELLED, EXPIRED}),
    REQUIRES_ACTION: frozenset({QUEUED, CANCELLED, EXPIRED}),
    COMPLETED: frozenset(),
    FAILED: frozenset(),
    CANCELLED: frozenset(),
    EXPIRED: frozenset(),
}
TERMINAL: Final[frozenset[RunStatus]] = frozenset(s for s in RunStatus if s.is_terminal)
UNFINISHED: Final[frozenset[RunStatus]] = frozenset(s for s in RunStatus if not s.is_terminal)


def sources(target: RunStatus) -> frozenset[RunStatus]:
    """The statuses a run may move to `target` from."""
    return frozenset(s for s, targets in TRANSITIONS.items() if target in targets)


def queued_run(
    run_id: str, tenant_id: str, body: RunCreate, agent: AgentSpec, **extra: Any
) -> Run:
    """The row of a new run asked for by `body` (the API, a schedule's tick), `queued`; `extra`
    sets the columns the request does not give (request id, schedule)."""
    return Run(
        id=run_id,
        tenant_id=tenant_id,
        status=QUEUED,
        agent_name=agent.name,
        agent_id=agent.id,
        agent_revision=agent.revision,
        agent_tag=body.tag,
        thread_id=body.thread_id or new_id("thr"),
        input=body.input,
        message=body.message,
        model_id=body.model_id,
        model_params=body.model_params.model_dump(exclude_none=True) if body.model_params else None,
        end_user_id=body.end_user_id,
        run_metadata=body.metadata,
        timeout_s=body.timeout_s,
        webhook=body.webhook.model_dump(mode="json") if body.webhook else None,
        **extra,
    )


class RunListener(Protocol):
    """What attaches to the lifecycle (webhooks, batches, schedules)."""

    def in_transaction(self, session: Session, run: Run, previous: RunStatus) -> None:
        """`run` (as written, `run.status` the new status) just left `previous`; called inside
        that transaction. Raising rolls the transition back: record, don't call out."""

    async def after_commit(self, run: Run, previous: RunStatus) -> None:
        """The same transition, once committed: a place to kick off work (best effort; what
        must not be lost was recorded in `in_transaction`)."""


# Errors --------------------------------------------------------------------------------------


class LifecycleError(ServerError):
    """The lifecycle's errors (each also of a kind in `runrelay.server.errors`)."""

    param: str | None = "run_id"


class RunNotFound(LifecycleError, NotFound):
    code = "run_not_found"


class TransitionRefused(LifecycleError, Conflict):
    code = "transition_refused"

    def __init__(self, run_id: str, target: RunStatus, current: RunStatus | None) -> None:
        allowed = ", ".join(sorted(sources(target))) or "none"
        super().__init__(
            f"run {run_id} cannot become {target} from {current} (only from: {allowed})"
        )
        self.run_id, self.target, self.current = run_id, target, current


class RunNotAwaitingApproval(LifecycleError, Conflict):
    code = "run_not_awaiting_approval"


class UnknownCall(LifecycleError, Invalid):
    code = "unknown_call_id"
    param = "call_id"


class AlreadyDecided(LifecycleError, Conflict):
    code = "already_decided"
    param = "call_id"


# The database side (synchronous; the async `Lifecycle` runs it in a thread) --------------------


@dataclass(frozen=True)
class Ending:
    """Whose write `finish` is: the worker holding `lease_token`, or (no worker holds the run)
    whoever expects it in one of `from_statuses`."""

    lease_token: str | None = None
    from_statuses: frozenset[RunStatus] = UNFINISHED

    @classmethod
    def by_worker(cls, lease_token: str) -> Ending:
        return cls(lease_token=lease_token)

    @classmethod
    def from_(cls, *statuses: RunStatus) -> Ending:
        return cls(from_statuses=frozenset(statuses))


@dataclass(frozen=True)
class SeqBlock:
    """Seqs a worker reserves as it starts a run: `size` above the higher of `last` (the
    log's last seq in Redis) and what the database had reserved. When `last` is 0 (Redis lost
    the log), the run's `seq_reserved` minus `size` is what earlier attempts may have reached."""

    last: int
    size: int


@dataclass(frozen=True)
class Moved:
    """A transition that was made: the run as written, and the status it left."""

    run: Run
    previous: RunStatus


@dataclass(frozen=True)
class Decided:
    run: Run
    # True when this was the last decision: the run is queued again and must be enqueued.
    resumed: bool
    moved: Moved | None = None


def _locked(session: Session, run_id: str) -> Run | None:
    """The run, its row locked until the transaction ends (PostgreSQL's row lock; SQLite has
    none, so its write lock, taken by a no-op UPDATE): what is read is what the conditional
    UPDATE next sees, and concurrent changes of one run take turns."""
    query = select(Run).where(col(Run.id) == run_id).execution_options(populate_existing=True)
    if session.get_bind().dialect.name == "sqlite":
        session.exec(update(Run).where(col(Run.id) == run_id).values(status=col(Run.status)))
        return session.exec(query).first()
    return session.exec(query.with_for_update()).first()


# The row a PostgreSQL transition locks first, and the status it had.
_LOCKED = (
    select(col(Run.id).label("id"), col(Run.status).label("previous"))
    .where(col(Run.id) == bindparam("locked_id"))
    .with_for_update()
    .cte("locked")
)


def _move_sqlite(
    session: Session,
    run_id: str,
    target: RunStatus,
    where: list[ColumnElement[bool]],
    values: dict[str, Any],
) -> Moved | None:
    """`RunTable.move` on SQLite, whose RETURNING sees only the updated table: the status read
    under the database's write lock, then the conditional UPDATE."""
    locked = _locked(session, run_id)
    if locked is None:
        return None
    previous = RunStatus(locked.status)
    stmt = (
        update(Run)
        .where(col(Run.id) == run_id, *where)
        .values(status=target, **values)
        .returning(Run)
        .execution_options(populate_existing=True)
    )
    run = session.execute(stmt).scalars().first()
    return Moved(run, previous) if run is not None else None


class RunTable:
    """Status changes in the database: each one a conditional UPDATE checked against
    `TRANSITIONS`, with the listeners called in its transaction."""

    def __init__(self, engine: Engine, listeners: Sequence[RunListener] = ()) -> None:
        self.engine = engine
        self.listeners = tuple(listeners)

    def move(
        self,
        session: Session,
        run_id: str,
        target: RunStatus,
        *where: ColumnElement[bool],
        **values: Any,
    ) -> Moved | None:
        """Move the run to `target` in the caller's transaction, if the table allows it from
        its current status and `where` holds; None (nothing changed) otherwise."""
        allowed = [col(Run.status).in_(sources(target)), *where]
        if session.get_bind().dialect.name == "sqlite":
            moved = _move_sqlite(session, run_id, target, allowed, values)
        else:
            # One statement (Core: no ORM bookkeeping on the hot path): lock the row, remember
            # its status, update it, return it as written.
            stmt = (
                update(Run)
                .where(col(Run.id) == _LOCKED.c.id, *allowed)
                .values(status=target, **values)
                .returning(*RUN_COLUMNS, _LOCKED.c.previous)
            )
            row = session.connection().execute(stmt, {"locked_id": run_id}).first()
            moved = None
            if row is not None:
                *fields, previous = row
                moved = Moved(run_of(fields), RunStatus(previous))
        if moved is None:
            if session.get(Run, run_id) is None:
                raise RunNotFound(f"no run {run_id!r}")
            return None
        for listener in self.listeners:
            listener.in_transaction(session, moved.run, moved.previous)
        return moved

    def transition(self, run_id: str, target: RunStatus, **values: Any) -> Moved | None:
        """One transition in its own transaction (what the table test exercises)."""
        with Session(self.engine, expire_on_commit=False) as session:
            moved = self.move(session, run_id, target, **values)
            session.commit()
            return moved

    def start(
        self, run_id: str, lease_token: str | None, seqs: SeqBlock = SeqBlock(0, 0)
    ) -> Moved | None:
        """queued (or running: resumed after a crash or hand-back) → running under
        `lease_token`, counting the attempt and reserving `seqs`. None when it is finished or
        paused for approval (a stray task must not resume it before the decisions)."""
        reserved = col(Run.seq_reserved)
        with Session(self.engine, expire_on_commit=False) as session:
            moved = self.move(
                session,
                run_id,
                RUNNING,
                attempts=col(Run.attempts) + 1,
                started_at=func.coalesce(col(Run.started_at), utcnow()),
                lease_token=lease_token,
                seq_reserved=case((reserved > seqs.last, reserved), else_=seqs.last) + seqs.size,
            )
            session.commit()
            return moved

    def pause(self, run_id: str, lease_token: str, paused: PausedCalls) -> Moved | None:
        """running → requires_action, only for the holder of `lease_token` and not once a
        cancel was requested (the cancel wins)."""
        with Session(self.engine, expire_on_commit=False) as session:
            moved = self.move(
                session,
                run_id,
                REQUIRES_ACTION,
                col(Run.lease_token) == lease_token,
                col(Run.cancel_requested_at).is_(None),
                required_action=paused.stored(),
                lease_token=None,
            )
            session.commit()
            return moved

    def count_handback(self, run_id: str, lease_token: str) -> bool:
        """A worker holding `lease_token` handed the running run back (shutdown, a store
        outage): its next start is not a crash, so it does not count toward the attempts cap."""
        stmt = (
            update(Run)
            .where(
                col(Run.id) == run_id,
                col(Run.status) == RUNNING,
                col(Run.lease_token) == lease_token,
            )
            .values(resumes=col(Run.resumes) + 1)
        )
        with Session(self.engine) as session:
            counted = session.exec(stmt).rowcount > 0
            session.commit()
            return counted

    def flag_cancel(self, run_id: str) -> Run | None:
        """Record a cancel request (not a status change); None when the run already ended."""
        stmt = (
            update(Run)
            .where(col(Run.id) == run_id, col(Run.status).in_(UNFINISHED))
            .values(cancel_requested_at=func.coalesce(col(Run.cancel_requested_at), utcnow()))
        )
        with Session(self.engine, expire_on_commit=False) as session:
            if session.exec(stmt).rowcount == 0:
                return None
            session.commit()
            return session.get(Run, run_id)

    def decide(self, run_id: str, decision: Decision) -> Decided:
        """Record one decision; the last one moves the run back to `queued` (counting a resume,
        and the time spent waiting, which the run's deadline does not count).

        Sending a decision already recorded again is harmless (a client retrying after a lost
        answer): it returns the run as it is. Decisions on one run take turns on its row lock."""
        with Session(self.engine, expire_on_commit=False) as session:
            run = _locked(session, run_id)
            if run is None:
                raise RunNotFound(f"no run {run_id!r}")
            paused = PausedCalls.of(run.required_action)
            call = paused.call(decision.call_id) if paused else None
            repeated = call is not None and call.approved == decision.approved
            if repeated and run.status != REQUIRES_ACTION:
                return Decided(run=run, resumed=run.status == QUEUED)
            if run.status != REQUIRES_ACTION or paused is None:
                raise RunNotAwaitingApproval(
                    f"run {run_id} is {run.status}; approvals are taken only while it is "
                    "requires_action"
                )
            if call is None:
                waiting = ", ".join(repr(c.tool_call_id) for c in paused.tool_calls)
                raise UnknownCall(
                    f"call_id {decision.call_id!r} is not awaiting approval in run {run_id} "
                    f"(awaiting: {waiting})"
                )
            if call.approved is not None and call.approved != decision.approved:
                verb = "approved" if call.approved else "rejected"
                raise AlreadyDecided(f"call {decision.call_id} was already {verb}")
            return self._record(session, run, paused, decision)

    def _record(
        self, session: Session, run: Run, paused: PausedCalls, decision: Decision
    ) -> Decided:
        paused.tool_calls = [
            ToolApproval(
                **{**c.model_dump(), "approved": decision.approved, "reason": decision.reason}
            )
            if c.tool_call_id == decision.call_id
            else c
            for c in paused.tool_calls
        ]
        if not paused.all_decided:
            stmt = (
                update(Run)
                .where(col(Run.id) == run.id, col(Run.status) == REQUIRES_ACTION)
                .values(required_action=paused.stored())
            )
            session.exec(stmt)
            session.commit()
            run.required_action = paused.stored()
            return Decided(run=run, resumed=False)
        moved = self.move(
            session,
            run.id,
            QUEUED,
            required_action=paused.stored(),
            waited_s=(run.waited_s or 0.0) + paused.waited_s,
            resumes=(run.resumes or 0) + 1,
        )
        if moved is None:  # not reachable under the row lock; kept as the table's guard
            session.rollback()
            raise RunNotAwaitingApproval(f"run {run.id} stopped waiting for approval")
        session.commit()
        return Decided(run=moved.run, resumed=True, moved=moved)

    def end(
        self,
        run_id: str,
        target: RunStatus,
        *,
        ending: Ending,
        events: Iterable[tuple[int, str, str]],
        thread_messages: Sequence[dict[str, Any]] = (),
        **values: Any,
    ) -> Moved | None:
        """Write the outcome and archive the whole event log, in one transaction, if `ending`
        holds (the worker's lease token, or an expected status); None when it does not.
        `thread_messages` (a completed run's) join its thread's history in that transaction."""
        where: list[ColumnElement[bool]] = [col(Run.status).in_(ending.from_statuses)]
        if ending.lease_token is not None:
            where.append(col(Run.lease_token) == ending.lease_token)
        with Session(self.engine, expire_on_commit=False) as session:
            moved = self.move(session, run_id, target, *where, finished_at=utcnow(), **values)
            if moved is None:
                session.rollback()
                return None
            log_text = RunLog.join((seq, data) for seq, _type, data in events)
            session.execute(insert(RunLog).values(run_id=run_id, events=log_text))
            run = moved.run
            if thread_messages and run.thread_id is not None:
                append_messages(session, run.tenant_id, run.thread_id, run_id, thread_messages)
            session.commit()
            return moved


# The lifecycle (async: the shim's routes, the worker's executor, the sweeper) ------------------


class Lifecycle:
    """The one owner of run status changes; built once per process and passed in."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        events: EventLog,
        quotas: QuotaStore,
        threads: ThreadGate,
        listeners: Sequence[RunListener] = (),
    ) -> None:
        self.settings = settings
        self.table = RunTable(engine, listeners)
        self.events = events
        self.quotas = quotas
        self.threads = threads
        self.listeners = tuple(listeners)

    @classmethod
    def build(
        cls,
        settings: Settings,
        store: Store,
        redis: Redis,
        listeners: Sequence[RunListener] = (),
    ) -> Lifecycle:
        """A lifecycle on its own Redis parts (the sweeper's tests, tools)."""
        keys = RedisKeys(settings.redis_prefix)
        quotas = QuotaStore(redis, keys, dispatch_timeout_s=settings.dispatch_timeout_s)
        events = EventLog(redis, keys, settings.events_ttl_s)
        return cls(settings, store.engine, events, quotas, ThreadGate(quotas, store), listeners)

    async def _after_commit(self, moved: Moved | None) -> None:
        if moved is None:
            return
        for listener in self.listeners:
            try:
                await listener.after_commit(moved.run, moved.previous)
            except Exception:  # best effort by contract: the transition stands
                log.exception("run %s: listener %r failed after commit", moved.run.id, listener)

    async def create(
        self,
        run: Run,
        queued: dict[str, Any],
        *,
        reject_if_busy: bool = False,
        new_thread: bool = False,
    ) -> list[Run]:
        """Insert the queued run (and its thread, if new) and append `run_queued` (seq 1);
        returns its thread's runs that were active before it (`ThreadBusy` with
        `reject_if_busy` when there are some, and nothing is written). `new_thread`: its
        thread id was made for this run."""
        threads = Threads(self.table.engine)
        active = await asyncio.to_thread(
            threads.create_run, run, reject_if_busy=reject_if_busy, new_thread=new_thread
        )
        event = make_event(run.id, 1, "run_queued", queued)
        await self.events.append(run.id, 1, "run_queued", encode(event))
        return active

    async def start(
        self, run_id: str, *, lease_token: str, seqs: SeqBlock = SeqBlock(0, 0)
    ) -> Run | None:
        moved = await asyncio.to_thread(self.table.start, run_id, lease_token, seqs)
        await self._after_commit(moved)
        return moved.run if moved else None

    async def pause(
        self,
        run_id: str,
        *,
        lease_token: str,
        tool_calls: Sequence[ApprovalRequest],
        checkpoint: SavedCheckpoint,
    ) -> bool:
        """Park the run as `requires_action` (see `RunTable.pause`); whether it was."""
        paused = PausedCalls(
            tool_calls=[
                ToolApproval(
                    tool_call_id=call["tool_call_id"],
                    name=call["name"],
                    arguments=call["arguments"],
                )
                for call in tool_calls
            ],
            paused_at=utcnow(),
            checkpoint=checkpoint,
        )
        moved = await asyncio.to_thread(self.table.pause, run_id, lease_token, paused)
        await self._after_commit(moved)
        return moved is not None

    async def decide(self, run_id: str, decision: Decision) -> Decided:
        """Record a decision; on the last one the run goes back to the head of its tenant's
        queue, to be resumed from its checkpoint by whichever worker takes it."""
        decided = await asyncio.to_thread(self.table.decide, run_id, decision)
        if decided.moved is not None:
            await self.quotas.resume(decided.run.tenant_id, run_id)
        await self._after_commit(decided.moved)
        return decided

    async def handed_back(self, run_id: str, *, lease_token: str) -> bool:
        return await asyncio.to_thread(self.table.count_handback, run_id, lease_token)

    async def request_cancel(self, run: Run) -> Run | None:
        """Ask `run` to stop: a queued or paused one (no worker holds it) ends here, a running
        one is flagged and its worker stops it. None when it already ended."""
        requested = await asyncio.to_thread(self.table.flag_cancel, run.id)
        if requested is None:
            return None
        unstarted = requested.status in (QUEUED, REQUIRES_ACTION)
        if not (unstarted and await self._end_unstarted(requested, Outcome.cancelled())):
            # Running (or a worker took it just now): its worker sees the flag and stops it.
            flag = self.events.keys.cancel(run.id)
            await self.events.redis.set(flag, "1", ex=self.settings.events_ttl_s)
        return requested

    async def expire(self, run: Run, code: str, message: str) -> bool:
        """End a run no worker holds (paused for approval too long; queued past a window)
        `expired`; False when it moved on meanwhile."""
        outcome = Outcome(EXPIRED, error={"code": code, "message": message})
        return await self._end_unstarted(run, outcome)

    async def _end_unstarted(self, run: Run, outcome: Outcome) -> bool:
        paused = PausedCalls.of(run.required_action) if run.status == REQUIRES_ACTION else None
        return await self.finish(
            run,
            outcome,
            ending=Ending.from_(RunStatus(run.status)),
            used_tokens=paused.used_tokens if paused else 0,
            usage=paused.usage if paused else None,
        )

    async def finish(
        self,
        run: Run,
        outcome: Outcome,
        *,
        ending: Ending,
        duration_ms: int = 0,
        used_tokens: int = 0,
        usage: dict[str, Any] | None = None,
        token_period: str | None = None,
        next_seq: int = 0,
    ) -> bool:
        """End the run as `outcome` says, if `ending` holds; whether it did. `token_period`:
        the budget period its tokens were reserved in ("-" for none), if the caller knows it;
        `next_seq`: the seq after the last one its writer appended (the worker's).

        In this order, which is what clients and the other runs rely on: the outcome and the
        archived log (with `done`) in one transaction, so a client that sees `done` finds the
        run ended in the database; then `done` in the stream; then the tenant's slot and token
        reservation (settled at `used_tokens`); then the thread (its next run may start)."""
        history = await self.events.read(run.id)
        # Above the writer's last seq too: if Redis lost the log meanwhile, `done` must still
        # come after every seq a client may hold.
        seq = max((history[-1].seq if history else 0) + 1, next_seq)
        done = make_event(
            run.id, seq, "done", outcome.done_data(duration_ms=duration_ms, usage=usage)
        )
        archive = [(e.seq, e.type, e.data) for e in history] + [(seq, "done", encode(done))]
        result = recorded = None
        if outcome.result is not None:
            tool_calls = [vars(record) for record in outcome.result.tool_calls]
            result = {"output": outcome.output, "tool_calls": tool_calls}
            # The run row keeps the usage per model too (`usage_by_model` in the API).
            recorded = {
                **outcome.result.usage.model_dump(),
                "by_model": outcome.result.usage_by_model,
            }
        moved = await asyncio.to_thread(
            self.table.end,
            run.id,
            outcome.status,
            ending=ending,
            events=archive,
            thread_messages=outcome.thread_messages if outcome.status == COMPLETED else (),
            output=outcome.output,
            result=result,
            usage=recorded if outcome.result is not None else usage,
            error=outcome.error,
        )
        if moved is None:
            return False
        try:
            await self.events.append(
                run.id,
                seq,
                "done",
                encode(done),
                # Not fenced by the Redis lease: the database's conditional UPDATE already was
                # (a worker's lease token, or the expected status), and the lease key is gone if
                # Redis lost its data, which must not keep `done` from live clients.
                token="",
                ttl_s=self.settings.events_ttl_after_done_s,
            )
        except (LeaseLost, RedisError) as exc:  # the archive has `done`; replay falls back to it
            log.warning("run %s: ended, but `done` did not reach its stream: %r", run.id, exc)
        if moved.previous == RUNNING:
            await self.quotas.release(
                moved.run.tenant_id, run.id, used_tokens=used_tokens, period=token_period
            )
        else:  # it may still sit in its tenant's pending queue
            await self.quotas.abandon(moved.run.tenant_id, run.id, used_tokens=used_tokens)
        await self.threads.release(moved.run)
        await self._after_commit(moved)
        return True
