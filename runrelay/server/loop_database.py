"""PostgreSQL statements awaited on an event loop, for the hot path of a run.

The rest of the code runs its statements through SQLAlchemy in a thread (`asyncio.to_thread`).
Per statement that costs a thread hop (a future, a wake-up of the loop through its self-pipe,
the GIL passed back and forth) and SQLAlchemy's execution layer: ~500 µs of CPU on the 2-core
development machine, against ~80 µs for the same statement on one of psycopg's async
connections (bench/README.md). A run is four statements between the API and the worker.

So a process that serves many runs on one loop (the worker, the API) opens a `LoopDatabase` on
that loop for its engine (`LoopDatabase.attached`). A hot statement is still written with
SQLAlchemy Core (the same object the thread path executes), compiled once for psycopg, its
parameters and results converted by the same SQLAlchemy types; `on_loop(engine)` hands the
database to code running on that loop, and None anywhere else (SQLite, another loop or thread,
a process that opened none), where the thread path is taken as before.

Its connections run in autocommit (each statement stands alone, as on `autocommit(engine)`),
with server-side prepared statements: no transaction ends, so none is forgotten. An idle
connection is checked before use without a round trip, as the engine's are
(`engine._check_idle_connection`).

The worker and the API commit their statements in groups (`RUNRELAY_GROUP_COMMIT`, on by
default): those issued while the previous group was out go in one transaction on one
connection, sent as one pipeline (BEGIN, the statements, COMMIT): one round trip and one WAL
flush where each statement cost its own. Each statement still stands alone for its caller: its
own rows back, and its own error. A statement that fails rolls its group back, and the group's
statements are then executed one by one, so that only its caller sees the failure; a connection
that breaks fails the whole group, as it would have failed each statement. One group is out at
a time, so two groups of a process never wait for each other's row locks. Nor do groups of
different processes: the rows the hot statements lock are their runs' own (a run's statements
are awaited one after another, and a thread has one active run), and the API's lock none
(reads, and a run inserted with its new thread). At 50 runs in flight (`bench/throughput.py`)
WAL flushes per run went from 2.2 to 0.55, and PostgreSQL's CPU per run from ~1.3 to ~0.6 ms.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

import psycopg
from psycopg.pq import TransactionStatus
from sqlalchemy import Engine
from sqlalchemy.dialects.postgresql.psycopg import dialect as psycopg_dialect
from sqlalchemy.sql import ClauseElement, Select
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import UpdateBase

from runrelay.server.engine import IdleState, fast_json, idle_state
from runrelay.server.settings import Settings

_DIALECT = psycopg_dialect()  # type: ignore[no-untyped-call]
_EXPANDING = re.compile(r"__\[POSTCOMPILE_(\w+)\]")
_ATTACHED = "_runrelay_loop_database"

Processor = Callable[[Any], Any]


@dataclass
class Compiled:
    """A Core statement as psycopg takes it: the SQL, the parameters fixed when it was built
    (its constants, `IN` lists included), and how to convert the values bound and returned."""

    sql: str
    fixed: dict[str, Any]
    binds: dict[str, Processor | None]
    columns: tuple[Any, ...]  # the SQLAlchemy types of the columns it returns
    results: tuple[Processor | None, ...] | None = None  # known from the first rows' types

    def bound(self, params: Mapping[str, Any]) -> dict[str, Any]:
        values = dict(self.fixed)
        for name, processor in self.binds.items():
            try:
                value = params[name]
            except KeyError:
                raise TypeError(f"no value for bind parameter {name!r}") from None
            values[name] = value if processor is None else processor(value)
        return values

    def rows(
        self, found: Sequence[Sequence[Any]], cursor: psycopg.AsyncCursor[Any]
    ) -> list[tuple[Any, ...]]:
        """`found` as SQLAlchemy returns it (statuses as `RunStatus`, aware datetimes...)."""
        processors = self.results
        if processors is None:  # some types need the column's type as the server sent it
            processors = self.results = tuple(
                type_.dialect_impl(_DIALECT).result_processor(_DIALECT, column.type_code)
                for type_, column in zip(self.columns, cursor.description or [], strict=True)
            )
        return [
            tuple(
                value if processor is None or value is None else processor(value)
                for value, processor in zip(values, processors, strict=True)
            )
            for values in found
        ]


_COMPILED: dict[int, tuple[ClauseElement, Compiled]] = {}


def compiled(stmt: ClauseElement) -> Compiled:
    """`stmt` compiled for psycopg, once per statement object (hot statements are built once:
    module constants, or `functools.cache`d builders)."""
    found = _COMPILED.get(id(stmt))
    if found is not None and found[0] is stmt:
        return found[1]
    done = _compile(stmt)
    _COMPILED[id(stmt)] = (stmt, done)
    return done


def _compile(stmt: ClauseElement) -> Compiled:
    compiler = cast(SQLCompiler, stmt.compile(dialect=_DIALECT))
    fixed: dict[str, Any] = {}
    binds: dict[str, Processor | None] = {}
    expansions: dict[str, str] = {}
    for param, unescaped in compiler.bind_names.items():
        name = compiler.escaped_bind_names.get(unescaped, unescaped)
        processor = param.type.dialect_impl(_DIALECT).bind_processor(_DIALECT)
        if param.expanding:  # a constant `IN` list: one parameter per element
            elements = list(param.value or ())
            names = [f"{name}_{i}" for i in range(1, len(elements) + 1)]
            for element_name, element in zip(names, elements, strict=True):
                fixed[element_name] = element if processor is None else processor(element)
            # An empty list matches nothing (a subquery with no row: `IN ()` is not SQL).
            expansions[name] = ", ".join(f"%({n})s" for n in names) or "SELECT NULL WHERE false"
        elif param.value is not None or not param.required:  # a constant of the statement
            value = param.effective_value
            fixed[name] = value if processor is None or value is None else processor(value)
        else:
            binds[name] = processor
    sql = _EXPANDING.sub(lambda m: expansions[m.group(1)], compiler.string)
    if isinstance(stmt, Select):
        columns = list(stmt.selected_columns)
    elif isinstance(stmt, UpdateBase):
        columns = list(stmt.exported_columns)
    else:
        columns = []
    return Compiled(sql=sql, fixed=fixed, binds=binds, columns=tuple(c.type for c in columns))


class LoopDatabase:
    """Up to `max_size` psycopg async connections, used from the one loop it was opened on.

    Like the engine's pool (and unlike psycopg_pool, which makes connections in the background
    and has callers wait up to its timeout for one), a connection is made by the caller that
    needs it, so a database that is down fails the statement at once: a 503 for a request, a
    hand-back for a run (`runrelay.server.outages`), the same as on the thread path."""

    def __init__(self, settings: Settings, *, max_size: int, group_commit: bool = False) -> None:
        if not settings.database_url.startswith("postgresql"):
            raise ValueError(f"a LoopDatabase is for PostgreSQL, not {settings.database_url!r}")
        self._conninfo = _conninfo(settings.database_url)
        self._options: dict[str, Any] = {"autocommit": True, "prepare_threshold": 0}
        if settings.database_schema:
            self._options["options"] = f"-csearch_path={settings.database_schema}"
        self._max_size = max_size
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._slots: asyncio.Semaphore | None = None
        self._engine: Engine | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._group_commit = group_commit
        self._queue: list[_Call] = []
        self._batch: asyncio.Task[None] | None = None

    @classmethod
    async def attached(cls, engine: Engine, settings: Settings) -> LoopDatabase | None:
        """On PostgreSQL, a database opened on the running loop for `engine`'s hot statements
        (`RUNRELAY_LOOP_DATABASE_CONNECTIONS` connections, committing in groups unless
        `RUNRELAY_GROUP_COMMIT` is off); None on SQLite."""
        if engine.dialect.name != "postgresql":
            return None
        database = cls(
            settings,
            max_size=settings.loop_database_connections,
            group_commit=settings.group_commit,
        )
        await database.open(engine)
        return database

    async def open(self, engine: Engine) -> None:
        """Take the running loop as this database's, and have code on it run `engine`'s hot
        statements here; connections are made when first needed."""
        self.loop = asyncio.get_running_loop()
        self._slots = asyncio.Semaphore(self._max_size)
        self._engine = engine
        engine.__dict__[_ATTACHED] = self

    async def close(self) -> None:
        """Hand `engine`'s statements back to the thread path, and close the idle connections;
        one in use is closed when its statement is done."""
        if self._engine is not None and self._engine.__dict__.get(_ATTACHED) is self:
            del self._engine.__dict__[_ATTACHED]
        self._engine = self.loop = None
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection of the pool for one statement: an idle one that is still sound, else a
        new one. One that broke, or is left in a transaction, is closed afterwards."""
        assert self._slots is not None, "LoopDatabase.open() first"
        async with self._slots:
            conn = await self._idle_one()
            if conn is None:
                conn = await psycopg.AsyncConnection.connect(self._conninfo, **self._options)
                fast_json(conn)
            try:
                yield conn
            finally:
                status = conn.info.transaction_status
                if self.loop is None or conn.broken or status != TransactionStatus.IDLE:
                    await conn.close()
                else:
                    self._idle.append(conn)

    async def _idle_one(self) -> psycopg.AsyncConnection[Any] | None:
        while self._idle:
            conn = self._idle.pop()
            if await _sound(conn):
                return conn
            await conn.close()
        return None

    async def rows(self, stmt: ClauseElement, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Execute `stmt` with `params`; the rows it returned (none for a statement without
        RETURNING)."""
        done = compiled(stmt)
        if not self._group_commit:
            async with self.connection() as conn:
                return await _one(conn, done, done.bound(params))
        future: asyncio.Future[list[tuple[Any, ...]]] = asyncio.get_running_loop().create_future()
        self._queue.append((done, done.bound(params), future))
        if self._batch is None:
            self._batch = asyncio.ensure_future(self._batches())
        return await future

    async def _batches(self) -> None:
        """Group commit: the statements issued while the previous group was out go together,
        one group at a time (so two of this process's groups never wait for each other's
        locks)."""
        try:
            await asyncio.sleep(0)  # what the callbacks due now issue joins the first group
            while self._queue:
                calls = [call for call in self._queue if not call[2].done()]
                self._queue = []
                if calls:
                    await self._group(calls)
        finally:
            self._batch = None
            queued, self._queue = self._queue, []
            for _, _, future in queued:  # left by a cancellation of this task
                future.cancel()

    async def _group(self, calls: list[_Call]) -> None:
        """`calls` in one transaction on one connection, sent in one pipeline: one round trip
        and one WAL flush for all. A statement that fails rolls the group back; then each is
        executed on its own, so that only its caller gets its error. A connection that breaks
        fails every statement of the group, as it would have failed each (whether its COMMIT
        took is not known: no statement is sent again)."""
        try:
            async with self.connection() as conn:
                try:
                    if len(calls) == 1:
                        done, params, _ = calls[0]
                        results = [await _one(conn, done, params)]
                    else:
                        results = await _together(conn, calls)
                except psycopg.Error as exc:
                    if conn.broken:
                        raise
                    if len(calls) == 1:
                        _settle(calls[0][2], exc=exc)
                        return
                    results = None
        except Exception as exc:
            for _, _, future in calls:
                _settle(future, exc=exc)
            return
        except BaseException:  # cancelled: so are the callers still waiting
            for _, _, future in calls:
                future.cancel()
            raise
        if results is None:
            for call in calls:
                await self._group([call])
            return
        for (_, _, future), found in zip(calls, results, strict=True):
            _settle(future, found=found)

    async def first(self, stmt: ClauseElement, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        found = await self.rows(stmt, params)
        return found[0] if found else None


_Call = tuple[Compiled, dict[str, Any], "asyncio.Future[list[tuple[Any, ...]]]"]


def _settle(
    future: asyncio.Future[list[tuple[Any, ...]]],
    *,
    found: list[tuple[Any, ...]] | None = None,
    exc: BaseException | None = None,
) -> None:
    if future.done():  # its caller gave up meanwhile
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(found or [])


async def _one(
    conn: psycopg.AsyncConnection[Any], done: Compiled, params: dict[str, Any]
) -> list[tuple[Any, ...]]:
    return await _found(done, await conn.execute(done.sql, params, prepare=True))


async def _together(
    conn: psycopg.AsyncConnection[Any], calls: list[_Call]
) -> list[list[tuple[Any, ...]]]:
    """The statements in one transaction, sent in one pipeline."""
    cursors = []
    async with conn.pipeline(), conn.transaction():
        for done, params, _ in calls:
            cursors.append(await conn.execute(done.sql, params, prepare=True))
    return [await _found(done, cursor) for (done, _, _), cursor in zip(calls, cursors, strict=True)]


async def _found(done: Compiled, cursor: psycopg.AsyncCursor[Any]) -> list[tuple[Any, ...]]:
    """The rows `cursor` holds for `done` (none for a statement without RETURNING)."""
    result = cursor.pgresult
    if result is None or result.nfields == 0:
        return []
    return done.rows(await cursor.fetchall(), cursor)


def on_loop(engine: Engine) -> LoopDatabase | None:
    """The database to await `engine`'s hot statements on from the running code, if any: only
    on the loop it was opened on."""
    database: LoopDatabase | None = engine.__dict__.get(_ATTACHED)
    if database is None or database.loop is None:
        return None
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:  # a thread: the caller is on the thread path already
        return None
    return database if running is database.loop else None


def _conninfo(url: str) -> str:
    """The libpq URL of a SQLAlchemy one (`postgresql+psycopg://` → `postgresql://`)."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme.split('+', 1)[0]}{sep}{rest}"


async def _sound(conn: psycopg.AsyncConnection[Any]) -> bool:
    """Whether an idle connection is still usable (`engine.idle_state`; over TLS, a statement)."""
    idle = idle_state(conn)
    if idle is IdleState.UNKNOWN:
        try:
            await conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True
    return idle is IdleState.SOUND
