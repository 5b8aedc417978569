"""The database side of threads: creating a run on its thread, a thread's history, reading it.

A thread is a conversation of one tenant, named by the client (`thread_id`) or, for a run
created without one, by the shim (`thr_...`). Creating a run creates its thread if it is new.
Only a run that completes adds to the history, in one transaction with its outcome
(`Lifecycle.finish` calls `append_messages`); a failed or cancelled run adds nothing.

Creates and appends on one thread take turns on the thread's row: each transaction starts with
an upsert of that row, which holds its lock (PostgreSQL) or the database's write lock (SQLite)
until it commits. That is what makes `multitask_strategy: reject` exact under concurrent
creates, and history seqs gapless.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, bindparam, func, insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col, select

from runrelay.agent._history import HistoryPolicy, fit_history
from runrelay.server.engine import autocommit
from runrelay.server.errors import Conflict
from runrelay.server.loop_database import on_loop
from runrelay.server.tables import (
    RUN_TABLE,
    Run,
    Thread,
    ThreadMessage,
    run_row,
    table_of,
    utcnow,
)
from runrelay.types import RunStatus

Message = dict[str, Any]


class ThreadBusy(Conflict):
    """A run asked for `reject` on a thread that has an active run; nothing was created."""

    code = "thread_busy"
    param = "thread_id"

    def __init__(self, thread_id: str, active: Run) -> None:
        super().__init__(
            f"thread {thread_id!r} has an active run, {active.id} ({active.status}); "
            "wait for it to finish, or send multitask_strategy `enqueue` (run after it) or "
            "`interrupt` (cancel it)"
        )
        self.thread_id = thread_id
        self.active = active


@functools.cache
def _upsert_thread(dialect: str, touch: bool) -> Any:
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = insert(Thread).values(
        tenant_id=bindparam("tenant_id"),
        id=bindparam("thread_id"),
        created_at=bindparam("now"),
        updated_at=bindparam("now"),
    )
    # A conflict still updates (to the same value when not touching): that takes the row lock.
    updated_at = stmt.excluded.updated_at if touch else col(Thread.updated_at)
    return stmt.on_conflict_do_update(
        index_elements=["tenant_id", "id"], set_={"updated_at": updated_at}
    )


def _lock_thread(session: Session, tenant_id: str, thread_id: str, *, touch: bool) -> None:
    """Create the thread if it is new and lock its row until the transaction ends; `touch`
    moves its `updated_at` to now."""
    stmt = _upsert_thread(session.get_bind().dialect.name, touch)
    session.execute(stmt, {"tenant_id": tenant_id, "thread_id": thread_id, "now": utcnow()})


# Statements of the hot path, built once (see `run_statements.move_statement`).
_OF_THREAD = (
    col(ThreadMessage.tenant_id) == bindparam("tenant_id"),
    col(ThreadMessage.thread_id) == bindparam("thread_id"),
)
_LAST_SEQ = select(func.max(ThreadMessage.seq)).where(*_OF_THREAD)
_RECENT_RUNS = (
    select(ThreadMessage.run_id)
    .where(*_OF_THREAD)
    .order_by(col(ThreadMessage.seq).desc())
    .limit(bindparam("limit"))
)
_INSERT_MESSAGE = insert(table_of(ThreadMessage))
_INSERT_THREAD = insert(table_of(Thread))
_INSERT_RUN = insert(RUN_TABLE)  # the table: `run_row` gives values by column name
# A run with its new thread in one statement (PostgreSQL: a data-modifying CTE), so one round
# trip in autocommit instead of BEGIN, two INSERTs and COMMIT.
_INSERT_RUN_WITH_THREAD = _INSERT_RUN.add_cte(
    insert(table_of(Thread))
    .values(
        tenant_id=bindparam("t_tenant_id"),
        id=bindparam("t_id"),
        created_at=bindparam("t_now"),
        updated_at=bindparam("t_now"),
    )
    .cte("new_thread")
)


def _active(session: Session, tenant_id: str, thread_id: str) -> list[Run]:
    query = (
        select(Run)
        .where(
            Run.tenant_id == tenant_id,
            Run.thread_id == thread_id,
            col(Run.status).not_in([s for s in RunStatus if s.is_terminal]),
        )
        .order_by(col(Run.id))
    )
    return list(session.exec(query).all())


def append_messages(
    session: Session, tenant_id: str, thread_id: str, run_id: str, messages: Sequence[Message]
) -> None:
    """Add a completed run's messages to its thread, with the next seqs (in the caller's
    transaction), and move the thread's `updated_at`."""
    _lock_thread(session, tenant_id, thread_id, touch=True)
    last = session.execute(_LAST_SEQ, {"tenant_id": tenant_id, "thread_id": thread_id}).scalar()
    now = utcnow()
    rows = [
        {
            "tenant_id": tenant_id,
            "thread_id": thread_id,
            "seq": (last or 0) + n,
            "run_id": run_id,
            "role": str(message.get("role", "")),
            "message": message,
            "created_at": now,
        }
        for n, message in enumerate(messages, start=1)
    ]
    if rows:
        session.execute(_INSERT_MESSAGE, rows)


class Threads:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.single = autocommit(engine)

    def create_run(
        self, run: Run, *, reject_if_busy: bool = False, new_thread: bool = False
    ) -> list[Run]:
        """Insert `run` (and its thread, if new); returns the thread's runs that were active
        before it, oldest first. With `reject_if_busy`, raise `ThreadBusy` instead of creating
        anything when there is one. `new_thread`: the run's thread id was just made for it
        (nobody else can know it), so it is inserted with the run, with nothing to wait for."""
        if new_thread and run.thread_id is not None and self.engine.dialect.name == "postgresql":
            thread = {"t_tenant_id": run.tenant_id, "t_id": run.thread_id, "t_now": utcnow()}
            with self.single.connect() as conn:
                conn.execute(_INSERT_RUN_WITH_THREAD, {**run_row(run), **thread})
            return []
        with Session(self.engine, expire_on_commit=False) as session:
            active: list[Run] = []
            if new_thread and run.thread_id is not None:
                now = utcnow()
                session.execute(
                    _INSERT_THREAD,
                    {
                        "tenant_id": run.tenant_id,
                        "id": run.thread_id,
                        "created_at": now,
                        "updated_at": now,
                    },
                )
            elif run.thread_id is not None:
                _lock_thread(session, run.tenant_id, run.thread_id, touch=False)
                active = _active(session, run.tenant_id, run.thread_id)
                if active and reject_if_busy:
                    session.rollback()
                    raise ThreadBusy(run.thread_id, active[0])
            session.execute(_INSERT_RUN, run_row(run))  # Core: no ORM unit of work
            session.commit()
        return active

    async def create_run_async(
        self, run: Run, *, reject_if_busy: bool = False, new_thread: bool = False
    ) -> list[Run]:
        """`create_run`, awaited: a run on a new thread (most) is its one statement, on the
        loop's database when the process attached one."""
        database = on_loop(self.engine)
        if database is None or not new_thread or run.thread_id is None:
            return await asyncio.to_thread(
                self.create_run, run, reject_if_busy=reject_if_busy, new_thread=new_thread
            )
        thread = {"t_tenant_id": run.tenant_id, "t_id": run.thread_id, "t_now": utcnow()}
        await database.rows(_INSERT_RUN_WITH_THREAD, {**run_row(run), **thread})
        return []

    def get(self, tenant_id: str, thread_id: str) -> Thread | None:
        with Session(self.engine, expire_on_commit=False) as session:
            return session.get(Thread, (tenant_id, thread_id))

    def messages(
        self, tenant_id: str, thread_id: str, *, after_seq: int = 0, limit: int
    ) -> list[ThreadMessage]:
        """The thread's messages with seq > `after_seq`, in order, at most `limit`."""
        query = (
            select(ThreadMessage)
            .where(
                ThreadMessage.tenant_id == tenant_id,
                ThreadMessage.thread_id == thread_id,
                col(ThreadMessage.seq) > after_seq,
            )
            .order_by(col(ThreadMessage.seq))
            .limit(limit)
        )
        with Session(self.engine, expire_on_commit=False) as session:
            return list(session.exec(query).all())

    def active_run_ids(self, tenant_id: str, thread_id: str) -> list[str]:
        with Session(self.engine) as session:
            return [run.id for run in _active(session, tenant_id, thread_id)]

    def history(self, run: Run, policy: HistoryPolicy) -> list[Message]:
        """What `run` starts with: its thread's latest exchanges, trimmed by `policy`."""
        if run.thread_id is None:
            return []
        exchanges = self.exchanges(run.tenant_id, run.thread_id, max_messages=policy.max_messages)
        return fit_history(exchanges, policy)

    async def history_async(self, run: Run, policy: HistoryPolicy) -> list[Message]:
        """`history`, awaited: the first read (the only one for a new thread) on the loop's
        database when the process attached one."""
        database = on_loop(self.engine)
        if database is None:
            return await asyncio.to_thread(self.history, run, policy)
        if run.thread_id is None or policy.max_messages <= 0:
            return self.history(run, policy)  # no statement
        of_thread = {"tenant_id": run.tenant_id, "thread_id": run.thread_id}
        recent = await database.rows(_RECENT_RUNS, {**of_thread, "limit": policy.max_messages})
        run_ids = {run_id for (run_id,) in recent}
        if not run_ids:
            return fit_history([], policy)
        exchanges = await asyncio.to_thread(
            self._exchanges_of, run.tenant_id, run.thread_id, run_ids
        )
        return fit_history(exchanges, policy)

    def exchanges(
        self, tenant_id: str, thread_id: str, *, max_messages: int
    ) -> list[list[Message]]:
        """The latest exchanges of the thread, oldest first: each the messages of one run,
        whole. Enough of them to hold the last `max_messages` messages."""
        if max_messages <= 0:
            return []
        of_thread = {"tenant_id": tenant_id, "thread_id": thread_id}
        # Two reads, each its own snapshot (as under READ COMMITTED anyway): a run's messages
        # are written in one transaction, so the second read sees each run's whole or not.
        with self.single.connect() as conn:  # Core: no ORM session for the common, empty case
            recent = conn.execute(_RECENT_RUNS, {**of_thread, "limit": max_messages})
            run_ids = set(recent.scalars().all())
        if not run_ids:  # a new thread (most runs): one query only
            return []
        return self._exchanges_of(tenant_id, thread_id, run_ids)

    def _exchanges_of(
        self, tenant_id: str, thread_id: str, run_ids: set[str]
    ) -> list[list[Message]]:
        """The messages of `run_ids` in the thread, one list per run, in order."""
        where = (ThreadMessage.tenant_id == tenant_id, ThreadMessage.thread_id == thread_id)
        with Session(self.single) as session:
            rows = session.exec(
                select(ThreadMessage)
                .where(*where, col(ThreadMessage.run_id).in_(run_ids))
                .order_by(col(ThreadMessage.seq))
            ).all()
        exchanges: list[list[Message]] = []
        last_run = None
        for row in rows:
            if row.run_id != last_run:
                exchanges.append([])
                last_run = row.run_id
            exchanges[-1].append(row.message)
        return exchanges
