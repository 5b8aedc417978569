"""What a store outage looks like from the code: the exceptions that mean "Redis or the
database cannot be reached right now" (as opposed to a bug or a refused command), and a retry
for the steps worth waiting for."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from psycopg import OperationalError as PsycopgOperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import OperationalError as DatabaseOperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

log = logging.getLogger(__name__)
T = TypeVar("T")

TRANSIENT: tuple[type[Exception], ...] = (
    RedisConnectionError,  # refused, closed by server, and BusyLoadingError
    RedisTimeoutError,
    DatabaseOperationalError,  # server gone, connection refused
    PoolTimeoutError,
    PsycopgOperationalError,  # the same on the loop's own connections (loop_database.py)
)


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` says a store is unreachable for now."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, TRANSIENT)


async def retrying(step: Callable[[], Awaitable[T]], *, what: str, for_s: float) -> T:
    """`step()`, tried again while it fails transiently, for about `for_s` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + for_s
    delay = 0.2
    while True:
        try:
            return await step()
        except Exception as exc:
            if not is_transient(exc) or loop.time() + delay > deadline:
                raise
            log.warning("%s: store unavailable (%s); retrying in %.1f s", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
