"""The pool's check at checkout: a pooled PostgreSQL connection that the server closed while it
sat idle (a restart, `pg_terminate_backend`) is replaced before a statement is sent on it."""

from __future__ import annotations

import os
import time

import psycopg
import pytest
from sqlalchemy import text

from runrelay.server.engine import make_engine
from runrelay.server.settings import Settings


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
        # Back in the pool. The server ends that backend, as a restart would.
        admin_url = settings.database_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [pid])
            deadline = time.monotonic() + 10
            while admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid]
            ).fetchone() != (0,):
                assert time.monotonic() < deadline, "the backend did not end"
                time.sleep(0.05)

        with engine.connect() as conn:  # no error: the check replaced the dead connection
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar() != pid
    finally:
        engine.dispose()
