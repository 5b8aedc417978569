"""A run's statuses in the database: which status may follow which, each change made by one
conditional UPDATE, and the errors a refused change raises.

    queued ──start──▶ running ──finish──▶ completed | failed | cancelled | expired
      │  ▲              │  ▲ resume (crash, hand back: attempts + 1)
      │  └──decide──┐   ▼  │
      │        requires_action ──cancel / expire──▶ cancelled | expired
      └──cancel / enqueue failure / expire──▶ cancelled | failed | expired

`TRANSITIONS` is that picture as a table (the README's "Run statuses" mirrors it). `RunTable`
makes every status change by one conditional UPDATE (`WHERE status IN sources(target)`, plus
the lease token for a worker), so a transition the table does not allow changes nothing, and
calls the `RunListener`s inside the transaction that made it. It is synchronous; the async
owner of the lifecycle (`runrelay.server.lifecycle.Lifecycle`) runs it in a thread, except a
start and an ending made in one statement (`start_async`, `end_async`), which it awaits on the
loop's database where the process attached one (`runrelay.server.loop_database`).

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
import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from psycopg.errors import UniqueViolation
from sqlalchemy import Engine, bindparam, func, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from runrelay.server.approvals import Decision, PausedCalls
from runrelay.server.engine import autocommit
from runrelay.server.errors import Conflict, Invalid, NotFound, ServerError
from runrelay.server.loop_database import LoopDatabase, on_loop
from runrelay.server.run_statements import (
    ANY_HOLDER,
    ARCHIVED_LOG,
    INSERT_LOG,
    RUN_EXISTS,
    STARTED,
    Computed,
    When,
    end_statement,
    locked_run,
    move_statement,
)
from runrelay.server.tables import Run, RunLog, run_of, utcnow
from runrelay.server.threads import append_messages
from runrelay.types import RunStatus, ToolApproval

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


class RunListener(Protocol):
    """What attaches to the lifecycle (webhooks, batches, schedules)."""

    def records(self, run: Run) -> bool:
        """Whether `in_transaction` may record anything for `run`, decided by what never
        changes on a run (its batch, schedule, webhook). A run's ending that no listener
        records for may be one statement with no transaction around it, and call no
        `in_transaction` (the end of most runs, on PostgreSQL). A listener without this
        method is taken to record for every run."""

    def in_transaction(self, session: Session, run: Run, previous: RunStatus) -> None:
        """`run` (as written, `run.status` the new status) just left `previous`; called inside
        that transaction. Raising rolls the transition back: record, don't call out. Not called
        for a start (→ running): that is one statement with no transaction around it."""

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


NO_SEQS = SeqBlock(0, 0)  # a start that reserves nothing (tests, tools)


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


def _records(listener: RunListener, run: Run) -> bool:
    """`listener.records(run)`; True for a listener written before that method existed, so
    that it is still called in every ending's transaction."""
    records = getattr(listener, "records", None)
    return True if records is None else bool(records(run))


class RunTable:
    """Status changes in the database: each one a conditional UPDATE checked against
    `TRANSITIONS`, with the listeners called in its transaction."""

    def __init__(self, engine: Engine, listeners: Sequence[RunListener] = ()) -> None:
        self.engine = engine
        self.single = autocommit(engine)
        self.listeners = tuple(listeners)

    def move(
        self,
        session: Session,
        run_id: str,
        target: RunStatus,
        when: When = ANY_HOLDER,
        computed: Computed | None = None,
        params: dict[str, Any] | None = None,
        **values: Any,
    ) -> Moved | None:
        """Move the run to `target` in the caller's transaction, writing `values` (and
        `computed`, from `params`), if the table allows it from its current status and `when`
        holds; None (nothing changed) otherwise."""
        sqlite = session.get_bind().dialect.name == "sqlite"
        stmt, bound = _move_bound(sqlite, run_id, target, when, computed, params, values)
        moved = None
        if sqlite:
            locked = locked_run(session, run_id)
            previous = RunStatus(locked.status) if locked is not None else None
            run = session.execute(stmt, bound).scalars().first() if previous is not None else None
            if previous is not None and run is not None:
                moved = Moved(run, previous)
        else:
            row = session.connection().execute(stmt, bound).first()
            if row is not None:
                moved = _moved_of(row)
        if moved is None:
            if session.get(Run, run_id) is None:
                raise RunNotFound(f"no run {run_id!r}")
            return None
        if target is not RUNNING:  # a start has no transaction to record in
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
        self, run_id: str, lease_token: str | None, seqs: SeqBlock = NO_SEQS
    ) -> Moved | None:
        """queued (or running: resumed after a crash or hand-back) → running under
        `lease_token`, counting the attempt and reserving `seqs`. None when it is finished or
        paused for approval (a stray task must not resume it before the decisions).

        On PostgreSQL the move is one statement, run outside a transaction (`autocommit`):
        listeners see it, and record nothing on a start."""
        with Session(self.single, expire_on_commit=False) as session:
            moved = self.move(
                session,
                run_id,
                RUNNING,
                computed=STARTED,
                params={"c_now": utcnow(), "c_seq_last": seqs.last, "c_seq_size": seqs.size},
                lease_token=lease_token,
            )
            session.commit()
            return moved

    async def start_async(
        self, run_id: str, lease_token: str | None, seqs: SeqBlock = NO_SEQS
    ) -> Moved | None:
        """`start`, awaited: on the loop's database when the process attached one."""
        database = on_loop(self.engine)
        if database is None:
            return await asyncio.to_thread(self.start, run_id, lease_token, seqs)
        stmt, bound = _move_bound(
            False,
            run_id,
            RUNNING,
            ANY_HOLDER,
            STARTED,
            {"c_now": utcnow(), "c_seq_last": seqs.last, "c_seq_size": seqs.size},
            {"lease_token": lease_token},
        )
        return await _returned(database, run_id, await database.first(stmt, bound))

    def pause(self, run_id: str, lease_token: str, paused: PausedCalls) -> Moved | None:
        """running → requires_action, only for the holder of `lease_token` and not once a
        cancel was requested (the cancel wins)."""
        with Session(self.engine, expire_on_commit=False) as session:
            moved = self.move(
                session,
                run_id,
                REQUIRES_ACTION,
                When(lease_token=lease_token, not_cancelling=True),
                required_action=paused.stored(),
                lease_token=None,
            )
            session.commit()
            return moved

    def count_handback(self, run_id: str, lease_token: str) -> bool:
        """A worker holding `lease_token` handed the running run back (shutdown, a store
        outage): its next start is not a crash, so it does not count toward the attempts cap."""
        params = {"h_run_id": run_id, "h_lease_token": lease_token}
        with self.single.begin() as conn:  # commits on SQLite too
            return conn.execute(_COUNT_HANDBACK, params).first() is not None

    async def count_handback_async(self, run_id: str, lease_token: str) -> bool:
        """`count_handback`, awaited: on the loop's database when the process attached one (a
        worker hands back every run it holds at once at SIGTERM)."""
        database = on_loop(self.engine)
        if database is None:
            return await asyncio.to_thread(self.count_handback, run_id, lease_token)
        params = {"h_run_id": run_id, "h_lease_token": lease_token}
        return await database.first(_COUNT_HANDBACK, params) is not None

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
            run = locked_run(session, run_id)
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
        log: str,
        thread_messages: Sequence[dict[str, Any]] = (),
        known: Run | None = None,
        **values: Any,
    ) -> Moved | None:
        """Write the outcome and archive the whole event log (`log`, as `RunLog.events` holds
        it), in one transaction, if `ending` holds (the worker's lease token, or an expected
        status); None when it does not.
        `thread_messages` (a completed run's) join its thread's history in that transaction.

        `known`: the run as the caller read it. When no listener records anything for it
        (`RunListener.records`), the ending is one statement on PostgreSQL (`end_statement`):
        one round trip, no transaction around it."""
        when = When(lease_token=ending.lease_token, statuses=ending.from_statuses)
        values["finished_at"] = utcnow()
        if known is not None and self._at_once(known):
            stmt, bound = _end_bound(run_id, target, when, log, thread_messages, values)
            try:
                with self.single.connect() as conn:
                    row = conn.execute(stmt, bound).first()
                    if row is None and conn.execute(RUN_EXISTS, {"run_id": run_id}).first() is None:
                        raise RunNotFound(f"no run {run_id!r}")
                return None if row is None else _moved_of(row)
            except IntegrityError:  # its thread's seqs moved meanwhile: see `end_statement`
                pass
        with Session(self.engine, expire_on_commit=False) as session:
            moved = self.move(session, run_id, target, when, **values)
            if moved is None:
                session.rollback()
                return None
            session.execute(INSERT_LOG, {"run_id": run_id, "events": log})
            run = moved.run
            if thread_messages and run.thread_id is not None:
                append_messages(session, run.tenant_id, run.thread_id, run_id, thread_messages)
            session.commit()
            return moved

    async def end_async(
        self,
        run_id: str,
        target: RunStatus,
        *,
        ending: Ending,
        log: str,
        thread_messages: Sequence[dict[str, Any]] = (),
        known: Run | None = None,
        **values: Any,
    ) -> Moved | None:
        """`end`, awaited: its one statement on the loop's database when the process attached
        one; a transaction (a listener records for the run, or the thread's seqs moved) in a
        thread, as `end` makes it."""
        in_thread = functools.partial(
            self.end,
            run_id,
            target,
            ending=ending,
            log=log,
            thread_messages=thread_messages,
            known=known,
            **values,
        )
        database = on_loop(self.engine)
        if database is None or known is None or not self._at_once(known):
            return await asyncio.to_thread(in_thread)
        when = When(lease_token=ending.lease_token, statuses=ending.from_statuses)
        finished = {**values, "finished_at": utcnow()}
        stmt, bound = _end_bound(run_id, target, when, log, thread_messages, finished)
        try:
            return await _returned(database, run_id, await database.first(stmt, bound))
        except UniqueViolation:  # its thread's seqs moved meanwhile: see `end_statement`
            return await asyncio.to_thread(functools.partial(in_thread, known=None))

    def ended_by(
        self, run_id: str, target: RunStatus, lease_token: str
    ) -> tuple[Moved, int, str] | None:
        """The ending a worker holding `lease_token` already made: the run is `target` under
        that lease (an ending keeps the lease token; no other holder has it). Returns the move
        as it was made (a worker ends only a running run), and the archived `done` (its seq,
        its JSON); None when the run did not end that way. For a `finish` tried again after
        its ending committed: the reply was lost, or Redis failed right after it."""
        query = select(Run).where(
            col(Run.id) == run_id, col(Run.status) == target, col(Run.lease_token) == lease_token
        )
        with Session(self.single, expire_on_commit=False) as session:
            run = session.exec(query).first()
            found = {"run_id": run_id}
            text = session.execute(ARCHIVED_LOG, found).scalar() if run is not None else None
        if run is None or text is None:
            return None
        return Moved(run, RUNNING), *RunLog.last(text)

    def _at_once(self, run: Run) -> bool:
        """Whether `run`'s ending may be one statement: on PostgreSQL, with no listener
        recording anything for it."""
        return self.engine.dialect.name == "postgresql" and not any(
            _records(listener, run) for listener in self.listeners
        )


_COUNT_HANDBACK = (
    update(Run)
    .where(
        col(Run.id) == bindparam("h_run_id"),
        col(Run.status) == RUNNING,
        col(Run.lease_token) == bindparam("h_lease_token"),
    )
    .values(resumes=col(Run.resumes) + 1)
    .returning(col(Run.id))
)


def _move_bound(
    sqlite: bool,
    run_id: str,
    target: RunStatus,
    when: When,
    computed: Computed | None,
    params: dict[str, Any] | None,
    values: dict[str, Any],
) -> tuple[Any, dict[str, Any]]:
    """The statement of a move (`move_statement`) and its parameters."""
    allowed = sources(target)
    if when.statuses is not None:
        allowed &= when.statuses
    stmt = move_statement(
        sqlite,
        target,
        allowed,
        when.lease_token is not None,
        when.not_cancelling,
        tuple(sorted(values)),
        computed,
    )
    bound = {f"v_{name}": value for name, value in values.items()}
    bound.update(params or {}, locked_id=run_id, w_lease_token=when.lease_token)
    return stmt, bound


def _end_bound(
    run_id: str,
    target: RunStatus,
    when: When,
    log_text: str,
    thread_messages: Sequence[dict[str, Any]],
    values: dict[str, Any],
) -> tuple[Any, dict[str, Any]]:
    """The statement of an ending made at once (`end_statement`) and its parameters."""
    assert when.statuses is not None
    stmt = end_statement(
        target,
        sources(target) & when.statuses,
        when.lease_token is not None,
        tuple(sorted(values)),
        bool(thread_messages),
    )
    bound = {f"v_{name}": value for name, value in values.items()}
    bound.update(locked_id=run_id, w_lease_token=when.lease_token, e_events=log_text)
    if thread_messages:
        bound.update(m_now=values["finished_at"], m_messages=json.dumps(list(thread_messages)))
    return stmt, bound


async def _returned(
    database: LoopDatabase, run_id: str, row: tuple[Any, ...] | None
) -> Moved | None:
    """The move a statement returned (the run as written, then the status it left); None when
    it did not move the run, `RunNotFound` when there is no such run."""
    if row is None:
        if await database.first(RUN_EXISTS, {"run_id": run_id}) is None:
            raise RunNotFound(f"no run {run_id!r}")
        return None
    return _moved_of(row)


def _moved_of(row: Sequence[Any]) -> Moved:
    """A move as its statement returns it: the run as written, then the status it left."""
    *fields, previous = row
    return Moved(run_of(fields), RunStatus(previous))
