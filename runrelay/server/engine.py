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

import select
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.exc import DisconnectionError
from sqlmodel import create_engine

from runrelay.server.settings import Settings


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
    return engine


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
    """Refuse a pooled connection that is closed, or whose socket has something to read while
    no statement is running on it (the server's goodbye, or end of file): the pool then opens
    a new one. A poll with no timeout: no round trip to the server.

    Over TLS a readable socket proves nothing (a TLS 1.3 server sends session tickets after the
    handshake), so such a connection is pinged with a statement instead, as `pool_pre_ping`
    would."""
    if dbapi_conn.closed or dbapi_conn.broken:
        raise DisconnectionError("connection closed while pooled")
    if dbapi_conn.pgconn.ssl_in_use:
        try:
            dbapi_conn.execute("SELECT 1")
            dbapi_conn.rollback()
        except dbapi_conn.OperationalError as exc:
            raise DisconnectionError("connection lost while pooled") from exc
        return
    readable, _, _ = select.select([dbapi_conn.fileno()], [], [], 0)
    if readable:
        raise DisconnectionError("the server closed or wrote to the connection while pooled")
