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
owner of the lifecycle (`runrelay.server.lifecycle.Lifecycle`) runs it in a thread.

Errors (the HTTP layer maps them to statuses, in `api_shim/errors.py`)::

    LifecycleError
    ├── RunNotFound
    ├── TransitionRefused          the table (or the lease, or a cancel) forbids the move
    ├── RunNotAwaitingApproval     a decision for a run that is not `requires_action`
    ├── UnknownCall                a decision for a call the run does not wait on
    └── AlreadyDecided             a contrary decision on a call already decided
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from sqlalchemy import (
    JSON,
    ColumnElement,
    Engine,
    String,
    bindparam,
    case,
    func,
    insert,
    inspect,
    true,
    update,
)
from sqlalchemy import select as sa_select  # Core's: typed for any number of columns
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from runrelay.server.approvals import Decision, PausedCalls
from runrelay.server.engine import autocommit
from runrelay.server.errors import Conflict, Invalid, NotFound, ServerError
from runrelay.server.tables import (
    RUN_COLUMNS,
    RUN_TABLE,
    Run,
    RunLog,
    Thread,
    ThreadMessage,
    run_of,
    table_of,
    utcnow,
)
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
        that transaction. Raising rolls the transition back: record, don't call out. A start
        (→ running) is one statement with no transaction around it: record nothing there."""

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


def _locked(session: Session, run_id: str) -> Run | None:
    """The run, its row locked until the transaction ends (PostgreSQL's row lock; SQLite has
    none, so its write lock, taken by a no-op UPDATE): what is read is what the conditional
    UPDATE next sees, and concurrent changes of one run take turns."""
    query = select(Run).where(col(Run.id) == run_id).execution_options(populate_existing=True)
    if session.get_bind().dialect.name == "sqlite":
        session.exec(update(Run).where(col(Run.id) == run_id).values(status=col(Run.status)))
        return session.exec(query).first()
    return session.exec(query.with_for_update()).first()


_INSERT_LOG = insert(table_of(RunLog))

# The row a PostgreSQL transition locks first, and the status it had.
_LOCKED = (
    select(col(Run.id).label("id"), col(Run.status).label("previous"))
    .where(col(Run.id) == bindparam("locked_id"))
    .with_for_update()
    .cte("locked")
)


@dataclass(frozen=True)
class When:
    """What a move requires beyond the table allowing it."""

    lease_token: str | None = None  # the worker holding this lease token is making it
    statuses: frozenset[RunStatus] | None = None  # the run is in one of these
    not_cancelling: bool = False  # no cancel was requested


@dataclass(frozen=True, eq=False)
class Computed:
    """Values the database computes, from bind parameters passed with the move. Each one a
    module constant, so that the statement using it is built (and compiled) once."""

    exprs: dict[str, ColumnElement[Any]]


_STARTED = Computed(
    {
        "attempts": col(Run.attempts) + 1,
        "started_at": func.coalesce(
            col(Run.started_at), bindparam("c_now", type_=inspect(Run).columns["started_at"].type)
        ),
        "seq_reserved": case(
            (col(Run.seq_reserved) > bindparam("c_seq_last"), col(Run.seq_reserved)),
            else_=bindparam("c_seq_last"),
        )
        + bindparam("c_seq_size"),
    }
)


@functools.cache
def _move_statement(
    sqlite: bool,
    target: RunStatus,
    statuses: frozenset[RunStatus],
    by_token: bool,
    not_cancelling: bool,
    names: tuple[str, ...],
    computed: Computed | None,
) -> Any:
    """The conditional UPDATE of one kind of move, built once: its values and conditions are
    bind parameters (`v_<column>`, `w_lease_token`, `locked_id`), so executing it again only
    binds them (no statement to build, no cache key to compute)."""
    conditions: list[ColumnElement[bool]] = [col(Run.status).in_(sorted(statuses))]
    if by_token:
        conditions.append(col(Run.lease_token) == bindparam("w_lease_token"))
    if not_cancelling:
        conditions.append(col(Run.cancel_requested_at).is_(None))
    values: dict[str, Any] = {"status": target, **(computed.exprs if computed else {})}
    values.update({name: bindparam(f"v_{name}") for name in names})
    if sqlite:
        # SQLite's RETURNING sees only the updated table: the status was read under the
        # database's write lock (`_locked`) just before.
        return (
            update(Run)
            .where(col(Run.id) == bindparam("locked_id"), *conditions)
            .values(values)
            .returning(Run)
            .execution_options(populate_existing=True)
        )
    # One statement: lock the row, remember its status, update it, return it as written.
    return (
        update(Run)
        .where(col(Run.id) == _LOCKED.c.id, *conditions)
        .values(values)
        .returning(*RUN_COLUMNS, _LOCKED.c.previous)
    )


def _records(listener: RunListener, run: Run) -> bool:
    """`listener.records(run)`; True for a listener written before that method existed, so
    that it is still called in every ending's transaction."""
    records = getattr(listener, "records", None)
    return True if records is None else bool(records(run))


_THREADS = table_of(Thread)
_MESSAGES = table_of(ThreadMessage)
_RUN_EXISTS = sa_select(RUN_TABLE.c.id).where(RUN_TABLE.c.id == bindparam("run_id"))


@functools.cache
def _end_statement(
    target: RunStatus,
    statuses: frozenset[RunStatus],
    by_token: bool,
    names: tuple[str, ...],
    messages: bool,
) -> Any:
    """A run's ending as one PostgreSQL statement (data-modifying CTEs): the conditional
    UPDATE of `_move_statement`, then, only if it moved the run, its archived log and (with
    `messages`) its thread's new messages under the next seqs, the thread's `updated_at`
    moved. Returns the run as written and the status it left; no row when it did not move.

    What a statement reads is its start's snapshot: messages that another run of the thread
    committed while this one waited for the thread's row lock are not in its `max(seq)`, and
    its INSERT then collides with them (`RunTable.end` goes on in a transaction instead). One
    run at a time holds a thread (`ThreadGate`), so that is for when the gate was lost."""
    moved = _move_statement(False, target, statuses, by_token, False, names, None).cte("moved")
    archived = insert(table_of(RunLog)).from_select(
        ["run_id", "events"], sa_select(moved.c.id, bindparam("e_events", type_=String))
    )
    ctes: list[Any] = [archived.cte("archived")]
    if messages:
        now = bindparam("m_now", type_=_THREADS.c.updated_at.type)
        upsert = pg_insert(_THREADS).from_select(
            ["tenant_id", "id", "created_at", "updated_at"],
            sa_select(moved.c.tenant_id, moved.c.thread_id, now, now).where(
                moved.c.thread_id.is_not(None)
            ),
        )
        touched = (
            upsert.on_conflict_do_update(
                index_elements=["tenant_id", "id"], set_={"updated_at": upsert.excluded.updated_at}
            )
            .returning(_THREADS.c.tenant_id, _THREADS.c.id)
            .cte("touched")
        )
        listed = (
            func.json_array_elements(bindparam("m_messages", type_=String).cast(JSON))
            .table_valued("value", with_ordinality="n")
            .render_derived()
        )
        last = (
            sa_select(func.coalesce(func.max(_MESSAGES.c.seq), 0))
            .where(
                _MESSAGES.c.tenant_id == touched.c.tenant_id,
                _MESSAGES.c.thread_id == touched.c.id,
            )
            .scalar_subquery()
        )
        appended = insert(_MESSAGES).from_select(
            ["tenant_id", "thread_id", "seq", "run_id", "role", "message", "created_at"],
            sa_select(
                touched.c.tenant_id,
                touched.c.id,
                last + listed.c.n,
                moved.c.id,
                func.coalesce(listed.c.value.op("->>")("role"), ""),
                listed.c.value,
                now,
            )
            .select_from(touched)
            .join(moved, true())
            .join(listed, true()),
        )
        ctes += [touched, appended.cte("appended")]
    return sa_select(*moved.c).add_cte(*ctes)


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
        when: When = When(),
        computed: Computed | None = None,
        params: dict[str, Any] | None = None,
        **values: Any,
    ) -> Moved | None:
        """Move the run to `target` in the caller's transaction, writing `values` (and
        `computed`, from `params`), if the table allows it from its current status and `when`
        holds; None (nothing changed) otherwise."""
        allowed = sources(target)
        if when.statuses is not None:
            allowed &= when.statuses
        sqlite = session.get_bind().dialect.name == "sqlite"
        stmt = _move_statement(
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
        moved = None
        if sqlite:
            locked = _locked(session, run_id)
            previous = RunStatus(locked.status) if locked is not None else None
            run = session.execute(stmt, bound).scalars().first() if previous is not None else None
            if previous is not None and run is not None:
                moved = Moved(run, previous)
        else:
            row = session.connection().execute(stmt, bound).first()
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
                computed=_STARTED,
                params={"c_now": utcnow(), "c_seq_last": seqs.last, "c_seq_size": seqs.size},
                lease_token=lease_token,
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
                When(lease_token=lease_token, not_cancelling=True),
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
        known: Run | None = None,
        **values: Any,
    ) -> Moved | None:
        """Write the outcome and archive the whole event log, in one transaction, if `ending`
        holds (the worker's lease token, or an expected status); None when it does not.
        `thread_messages` (a completed run's) join its thread's history in that transaction.

        `known`: the run as the caller read it. When no listener records anything for it
        (`RunListener.records`), the ending is one statement on PostgreSQL (`_end_statement`):
        one round trip, no transaction around it."""
        when = When(lease_token=ending.lease_token, statuses=ending.from_statuses)
        log_text = RunLog.join((seq, data) for seq, _type, data in events)
        values["finished_at"] = utcnow()
        if (
            known is not None
            and self.engine.dialect.name == "postgresql"
            and not any(_records(listener, known) for listener in self.listeners)
        ):
            try:
                return self._end_at_once(run_id, target, when, log_text, thread_messages, values)
            except IntegrityError:  # its thread's seqs moved meanwhile: see `_end_statement`
                pass
        with Session(self.engine, expire_on_commit=False) as session:
            moved = self.move(session, run_id, target, when, **values)
            if moved is None:
                session.rollback()
                return None
            session.execute(_INSERT_LOG, {"run_id": run_id, "events": log_text})
            run = moved.run
            if thread_messages and run.thread_id is not None:
                append_messages(session, run.tenant_id, run.thread_id, run_id, thread_messages)
            session.commit()
            return moved

    def _end_at_once(
        self,
        run_id: str,
        target: RunStatus,
        when: When,
        log_text: str,
        thread_messages: Sequence[dict[str, Any]],
        values: dict[str, Any],
    ) -> Moved | None:
        assert when.statuses is not None
        stmt = _end_statement(
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
        with self.single.connect() as conn:
            row = conn.execute(stmt, bound).first()
            if row is None:
                if conn.execute(_RUN_EXISTS, {"run_id": run_id}).first() is None:
                    raise RunNotFound(f"no run {run_id!r}")
                return None
        *fields, previous = row
        return Moved(run_of(fields), RunStatus(previous))
