"""What tests do to PostgreSQL as its administrator would."""

from __future__ import annotations

import time

import psycopg


def end_backend(database_url: str, pid: int) -> None:
    """End the server process behind one connection, as a restart would, and wait until it is
    gone. `database_url` may be SQLAlchemy's (`postgresql+psycopg://`)."""
    admin_url = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        deadline = time.monotonic() + 10
        while admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid]
        ).fetchone() != (0,):
            assert time.monotonic() < deadline, "the backend did not end"
            time.sleep(0.05)
