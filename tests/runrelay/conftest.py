"""Fixtures of the tests that drive Redis directly (quota scripts, thread gate, pipelining),
and of those that need PostgreSQL itself."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
import redis

from runrelay.server.settings import Settings
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
