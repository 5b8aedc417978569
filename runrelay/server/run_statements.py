"""The SQL of a run's status changes, each statement built once per kind of move and then only
bound (`runrelay.server.run_table.RunTable` decides which move to make and calls the listeners).

A move is one conditional UPDATE: on PostgreSQL it locks the row in a CTE and returns the run as
written with the status it left (`move_statement`); on SQLite the row is read under the
database's write lock first (`locked_run`). A run's ending that no listener records for is one
PostgreSQL statement with the archive and the thread's messages (`end_statement`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    JSON,
    ColumnElement,
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
from sqlmodel import Session, col, select

from runrelay.server.tables import (
    RUN_COLUMNS,
    RUN_TABLE,
    Run,
    RunLog,
    Thread,
    ThreadMessage,
    table_of,
)
from runrelay.types import RunStatus


def locked_run(session: Session, run_id: str) -> Run | None:
    """The run, its row locked until the transaction ends (PostgreSQL's row lock; SQLite has
    none, so its write lock, taken by a no-op UPDATE): what is read is what the conditional
    UPDATE next sees, and concurrent changes of one run take turns."""
    query = select(Run).where(col(Run.id) == run_id).execution_options(populate_existing=True)
    if session.get_bind().dialect.name == "sqlite":
        session.exec(update(Run).where(col(Run.id) == run_id).values(status=col(Run.status)))
        return session.exec(query).first()
    return session.exec(query.with_for_update()).first()


INSERT_LOG = insert(table_of(RunLog))
ARCHIVED_LOG = select(RunLog.events).where(col(RunLog.run_id) == bindparam("run_id"))

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


ANY_HOLDER = When()  # only what the table allows


@dataclass(frozen=True, eq=False)
class Computed:
    """Values the database computes, from bind parameters passed with the move. Each one a
    module constant, so that the statement using it is built (and compiled) once."""

    exprs: dict[str, ColumnElement[Any]]


STARTED = Computed(
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
def move_statement(
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
    conditions: list[ColumnElement[bool]] = []
    if by_token:
        conditions.append(col(Run.lease_token) == bindparam("w_lease_token"))
    if not_cancelling:
        conditions.append(col(Run.cancel_requested_at).is_(None))
    values: dict[str, Any] = {"status": target, **(computed.exprs if computed else {})}
    values.update({name: bindparam(f"v_{name}") for name in names})
    if sqlite:
        # SQLite's RETURNING sees only the updated table: the status was read under the
        # database's write lock (`locked_run`) just before.
        return (
            update(Run)
            .where(
                col(Run.id) == bindparam("locked_id"),
                col(Run.status).in_(sorted(statuses)),
                *conditions,
            )
            .values(values)
            .returning(Run)
            .execution_options(populate_existing=True)
        )
    # One statement: lock the row, remember its status, update it, return it as written.
    # The UPDATE names the run's id itself and checks the status the CTE read under the row's
    # lock (nothing changes it until this statement ends): its only condition an index can
    # serve is then the primary key, whatever the table's statistics say. With the CTE as the
    # only way to the id and the status checked on `runs`, a plan made while the table was
    # small (a new deployment, not yet analyzed) read every row, or every run in that status,
    # on each move (seen in `bench/throughput.py`: a third of the starts and endings scanned
    # the whole table, and half scanned `ix_runs_status`).
    return (
        update(Run)
        .where(
            col(Run.id) == bindparam("locked_id"),
            col(Run.id) == _LOCKED.c.id,
            _LOCKED.c.previous.in_(sorted(statuses)),
            *conditions,
        )
        .values(values)
        .returning(*RUN_COLUMNS, _LOCKED.c.previous)
    )


_THREADS = table_of(Thread)
_MESSAGES = table_of(ThreadMessage)
RUN_EXISTS = sa_select(RUN_TABLE.c.id).where(RUN_TABLE.c.id == bindparam("run_id"))


@functools.cache
def end_statement(
    target: RunStatus,
    statuses: frozenset[RunStatus],
    by_token: bool,
    names: tuple[str, ...],
    messages: bool,
) -> Any:
    """A run's ending as one PostgreSQL statement (data-modifying CTEs): the conditional
    UPDATE of `move_statement`, then, only if it moved the run, its archived log and (with
    `messages`) its thread's new messages under the next seqs, the thread's `updated_at`
    moved. Returns the run as written and the status it left; no row when it did not move.

    What a statement reads is its start's snapshot: messages that another run of the thread
    committed while this one waited for the thread's row lock are not in its `max(seq)`, and
    its INSERT then collides with them (`RunTable.end` goes on in a transaction instead). One
    run at a time holds a thread (`ThreadGate`), so that is for when the gate was lost."""
    moved = move_statement(False, target, statuses, by_token, False, names, None).cte("moved")
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
