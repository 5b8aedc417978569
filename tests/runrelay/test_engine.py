"""The pool's check at checkout: a pooled PostgreSQL connection that the server closed while it
sat idle (a restart, `pg_terminate_backend`) is replaced before a statement is sent on it, also
when the process holds thousands of sockets (an API serving SSE streams)."""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from runrelay.server.engine import make_engine
from runrelay.server.settings import Settings
from tests.environment import unavailable
from tests.postgres_admin import end_backend


@pytest.fixture(params=["few", "above 1024"])
def descriptors(request: pytest.FixtureRequest) -> Iterator[str]:
    """The process's open files: few, or over 1,100 (its next socket above FD_SETSIZE)."""
    held: list[int] = []
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if request.param == "above 1024":
        if hard != resource.RLIM_INFINITY and hard < 1200:
            unavailable(f"the file-descriptor hard limit ({hard}) is below 1,200 (ulimit -Hn)")
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
        while not held or held[-1] < 1100:
            held.extend(os.pipe())
    try:
        yield request.param
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))  # as the session had it


def test_a_pooled_connection_the_server_closed_is_replaced_unnoticed(
    postgres: Settings, descriptors: str
) -> None:
    settings = postgres
    engine = make_engine(settings)
    try:
        with engine.connect() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
            if descriptors == "above 1024":
                assert conn.connection.dbapi_connection.fileno() > 1024  # type: ignore[union-attr]
        with engine.connect() as conn:  # sound while pooled: the same one again
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar() == pid
        end_backend(settings.database_url, pid)  # back in the pool, the server ends it

        with engine.connect() as conn:  # no error: the check replaced the dead connection
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar() != pid
    finally:
        engine.dispose()
