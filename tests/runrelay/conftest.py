"""Fixtures of the tests that drive Redis directly (quota scripts, thread gate, pipelining),
and of those that need PostgreSQL itself."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from runrelay.server.settings import Settings
from runrelay.server.store import Store, new_id
from runrelay.server.tables import Run
from tests.environment import unavailable


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of the test's own; its keys are deleted afterwards (only them)."""
    prefix = f"rrkeys:{secrets.token_hex(4)}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)
    client.close()


@pytest.fixture
def postgres(settings: Settings) -> Settings:
    """The session's settings, for a test that needs PostgreSQL (its server, its loop database):
    skipped on SQLite, except in CI, which runs PostgreSQL and fails without it."""
    if not settings.database_url.startswith("postgresql"):
        unavailable("the database is not PostgreSQL (DATABASE_URL=postgresql://...)")
    return settings


@pytest.fixture
def make_run(store: Store) -> Callable[..., Run]:
    """Queued runs of a tenant of the test's own, written straight to the database, one per
    millisecond (creation order is the order a thread's waiters are served in)."""
    tenant = store.create_tenant(f"runs-{secrets.token_hex(6)}")

    def make(thread_id: str | None = "chat-1") -> Run:
        time.sleep(0.002)
        run = Run(
            id=new_id("run"),
            tenant_id=tenant.id,
            status="queued",
            agent_name="slow-analyst",
            agent_id="bank.slow-analyst",
            thread_id=thread_id,
        )
        return store.create_run(run)

    return make
