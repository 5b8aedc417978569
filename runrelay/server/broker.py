"""The Celery broker transport: kombu's Redis transport with one guard, so that a worker rides
out a Redis outage of any length instead of exiting, and one client per pool instead of one per
command.

When the broker connection drops, Celery closes it and connects again. kombu detaches the old
connection from its transport (`transport.client = None`) and the old channel's `connection`,
but two things still use the old channel afterwards: its close restores the messages not acked
yet (`QoS.restore_unacked_once`), and a task that finishes later acks its message on the channel
it came from. Both build a Redis pool from the detached connection (`None.hostname`,
`None.client`) and raise `AttributeError`, which is not a connection error: Celery lets it
through and the worker stops with "Unrecoverable error" (kombu issues #582 and #970 show the
same path).

The guard makes a detached channel raise redis-py's `ConnectionError` instead, which kombu and
Celery already treat as a lost connection: the close ignores it, the ack is logged and dropped.
Nothing is lost by it: an unacked message stays in the unacked hash (restored after the
visibility timeout, when the run's lease refuses the second task, or gone with Redis's data),
and the sweeper enqueues again every run whose worker no longer holds its lease.

kombu builds a new redis-py client (on the channel's pool) for each publish, ack and queue
command: building them was ~3% of the API's CPU samples under load (a publish per run).
A redis-py client is thread-safe (it takes a pool connection per command), so the channel keeps
one for its current pool and builds another only when the pool is replaced.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError


class Channel(kombu_redis.Channel):  # kombu ships no type hints
    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection is None or self.connection.client is None:
            raise RedisConnectionError("the broker connection of this channel was closed")
        return super()._connparams(asynchronous=asynchronous)  # type: ignore[no-untyped-call]

    _client_of_pool: Any = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        pool = self.pool  # a detached channel raises here (the guard above)
        kept = self._client_of_pool
        if kept is None or kept.connection_pool is not pool:
            kept = self._client_of_pool = self._create_client()  # type: ignore[no-untyped-call]
        yield kept


class Transport(kombu_redis.Transport):
    Channel = Channel
