"""The pool's check at checkout: a pooled PostgreSQL connection that the server closed while it
sat idle (a restart, `pg_terminate_backend`) is replaced before a statement is sent on it."""

from __future__ import annotations

import os

import pytest
from sqlalchemy import text

from runrelay.server.engine import make_engine
from runrelay.server.settings import Settings
from tests.postgres_admin import end_backend


def test_a_pooled_connection_the_server_closed_is_replaced_unnoticed(settings: Settings) -> None:
    if not settings.database_url.startswith("postgresql"):
        # SQLite opens its file: no server to close a pooled connection. CI runs PostgreSQL.
        if os.environ.get("CI"):
            pytest.fail("CI must run the suite against PostgreSQL (DATABASE_URL)")
        pytest.skip("PostgreSQL's pool check: needs DATABASE_URL=postgresql://...")
    engine = make_engine(settings)
    try:
        with engine.connect() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        end_backend(settings.database_url, pid)  # back in the pool, the server ends it

        with engine.connect() as conn:  # no error: the check replaced the dead connection
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar() != pid
    finally:
        engine.dispose()
