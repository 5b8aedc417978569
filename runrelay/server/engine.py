"""The database engine: SQLite for embedded use, PostgreSQL in production.

A pooled PostgreSQL connection is checked at checkout without a round trip: one that the server
closed or wrote to while it sat idle in the pool (a restart, `pg_terminate_backend`, an idle
timeout) has a readable socket, and is replaced before any statement is sent on it. SQLAlchemy's
`pool_pre_ping` would send a statement on every checkout instead: several per run. A connection
that breaks mid-statement invalidates the pool as before (SQLAlchemy's disconnect handling).

A statement that stands alone (a read, one conditional UPDATE or INSERT) runs on
`autocommit(engine)`: no BEGIN before it and no COMMIT or ROLLBACK after it, one round trip
instead of three.
"""

from __future__ import annotations

import enum
import select
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, event
from sqlalchemy.exc import DisconnectionError
from sqlmodel import create_engine

from runrelay.server import json_codec
from runrelay.server.settings import Settings

if TYPE_CHECKING:
    import psycopg


def make_engine(settings: Settings) -> Engine:
    url = settings.database_url
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    # No server-side prepared statements: psycopg forgets them at every ROLLBACK (which ends
    # every read-only session) and then sends DEALLOCATE ALL, so they cost a round trip and
    # were rarely used.
    connect_args: dict[str, Any] = {"prepare_threshold": None}
    if settings.database_schema:
        connect_args["options"] = f"-csearch_path={settings.database_schema}"
    engine = create_engine(url, connect_args=connect_args, pool_size=10, max_overflow=20)
    event.listen(engine, "checkout", _check_idle_connection)
    event.listen(engine, "connect", lambda dbapi_conn, _record: fast_json(dbapi_conn))
    return engine


def fast_json(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    """JSON and JSONB values of `conn`, both ways, by orjson (`runrelay.server.json_codec`): the
    same values as psycopg's default, the standard library's `json`, in a fraction of the time
    (a run's start and end read and write several)."""
    from psycopg.types.json import set_json_dumps, set_json_loads

    set_json_dumps(json_codec.dumps, conn)
    set_json_loads(json_codec.loads, conn)


def autocommit(engine: Engine) -> Engine:
    """`engine` for statements that each stand alone: on PostgreSQL, its connections run in
    autocommit (psycopg sends BEGIN, and COMMIT or ROLLBACK, as round trips of their own; a
    single statement is atomic without them). Shares `engine`'s pool. SQLite (embedded, no
    round trips) keeps its transactions. Never for two writes that must commit together."""
    if engine.dialect.name == "sqlite":
        return engine
    single: Engine | None = engine.__dict__.get(_AUTOCOMMIT)  # made once per engine
    if single is None:
        single = engine.__dict__[_AUTOCOMMIT] = engine.execution_options(
            isolation_level="AUTOCOMMIT"
        )
    return single


_AUTOCOMMIT = "_runrelay_autocommit"


def _check_idle_connection(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
    """Refuse a pooled connection that is closed, or that the server closed or wrote to while it
    sat idle (`idle_state`, no round trip): the pool then opens a new one. Over TLS it is pinged
    with a statement instead, as `pool_pre_ping` would."""
    idle = idle_state(dbapi_conn)
    if idle is IdleState.GONE:
        raise DisconnectionError("the server closed or wrote to the connection while pooled")
    if idle is IdleState.UNKNOWN:
        try:
            dbapi_conn.execute("SELECT 1")
            dbapi_conn.rollback()
        except dbapi_conn.OperationalError as exc:
            raise DisconnectionError("connection lost while pooled") from exc


class IdleState(enum.Enum):
    SOUND = "sound"
    GONE = "gone"  # closed, broken, or the server wrote to it (its goodbye, end of file)
    UNKNOWN = "unknown"  # over TLS: only a statement can tell


def idle_state(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> IdleState:
    """What a psycopg connection sitting idle in a pool is worth, without a round trip: a poll
    of its socket, which has nothing to read unless the server closed it or wrote to it (a
    restart, `pg_terminate_backend`, an idle timeout). Over TLS a readable socket proves
    nothing (a TLS 1.3 server sends session tickets after the handshake)."""
    if conn.closed or conn.broken:
        return IdleState.GONE
    if conn.pgconn.ssl_in_use:
        return IdleState.UNKNOWN
    return IdleState.GONE if _readable(conn.fileno()) else IdleState.SOUND


def _readable(fd: int) -> bool:
    """Whether the socket has something to read (or hung up), without waiting. `poll`, not
    `select`: `select` cannot take a descriptor at or above FD_SETSIZE (1024), and an API
    process serving thousands of streams opens its database connections above that."""
    if not hasattr(select, "poll"):  # Windows
        readable, _, _ = select.select([fd], [], [], 0)
        return bool(readable)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))  # POLLIN, or POLLHUP / POLLERR, which poll always reports
