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

A worker takes its tasks in batches. kombu pops one message per round trip (BRPOP), then writes
it to the unacked hash and index in a second one (MULTI/EXEC): two round trips, both on the
worker's main thread, for every task. On Redis 7 and newer the channel pops up to as many
messages as the worker may still take (its prefetch limit, at most `MAX_BATCH`) in one BLMPOP
and writes them all to the unacked hash in one pipeline before handing any to the worker. A
message is in neither the queue nor the unacked hash between the pop and that write, as with
kombu's own BRPOP and write: a worker killed in that moment loses the messages of the batch, and
the sweeper enqueues their runs again (`RUNRELAY_STUCK_QUEUED_S`). The pop is atomic, so two
workers never take the same message. Older Redis servers (the embedded one is 6.2) get kombu's
BRPOP.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from queue import Empty
from time import monotonic, time
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from runrelay.server.json_codec import kombu_message_loads

log = logging.getLogger(__name__)

# The most messages one BLMPOP takes.
MAX_BATCH = 16
# The first Redis version with BLMPOP.
_BLMPOP_SINCE = (7, 0)


class QoS(kombu_redis.QoS):  # kombu ships no type hints
    """kombu's Redis QoS, which leaves out the unacked write for messages a batch wrote, and
    writes the acks of one turn of the worker's loop together."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self.written: set[str] = set()
        self.loop_thread: int | None = None  # the thread of the loop that flushes the acks
        self._acked: list[str] = []

    def ack(self, delivery_tag: str) -> None:
        """On the loop's thread, the message leaves the unacked hash with the other acks of
        this turn (`flush_acks`, before the loop waits again); elsewhere at once, as kombu's."""
        if self.loop_thread is None or self.loop_thread != threading.get_ident():
            super().ack(delivery_tag)  # type: ignore[no-untyped-call]
            return
        self._acked.append(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]  # in memory only

    def flush_acks(self) -> None:
        """Remove the messages acked since the last call from the unacked hash and index, in
        one round trip. A Redis that cannot be reached is logged, as kombu's failed ack is: the
        messages come back after the visibility timeout, and a run's lease or its end refuses
        the task again."""
        if not self._acked:
            return
        tags, self._acked = self._acked, []
        try:
            with self.pipe_or_acquire() as pipe:
                pipe.zrem(self.unacked_index_key, *tags)
                pipe.hdel(self.unacked_key, *tags)
                pipe.execute()
        except self.channel.connection_errors as exc:
            log.critical("Couldn't ack %d message(s), reason: %r", len(tags), exc)

    def append(self, message: Any, delivery_tag: str) -> None:
        if delivery_tag in self.written:
            self.written.discard(delivery_tag)
            virtual.QoS.append(self, message, delivery_tag)  # type: ignore[no-untyped-call]  # in memory only
        else:
            super().append(message, delivery_tag)  # type: ignore[no-untyped-call]


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

    QoS = QoS

    def close(self) -> None:
        if isinstance(self._qos, QoS):  # acks of the loop's last turn
            self._qos.flush_acks()
        super().close()  # type: ignore[no-untyped-call]

    _batch_pop: bool | None = None  # BLMPOP: the server is Redis 7 or newer
    _popping = 0  # the COUNT of the BLMPOP in flight, 0 for a BRPOP

    def _batch_size(self) -> int:
        if not isinstance(self.qos, QoS):  # ack emulation is off
            return 1
        if self._batch_pop is None:
            try:
                with self.conn_or_acquire() as client:
                    version = str(client.info("server")["redis_version"])
                major, minor = (int(part) for part in version.split(".")[:2])
                self._batch_pop = (major, minor) >= _BLMPOP_SINCE
            except (ResponseError, ValueError):  # INFO renamed away, or an odd version string
                self._batch_pop = False
        if not self._batch_pop:
            return 1
        room = self.qos.can_consume_max_estimate()  # type: ignore[no-untyped-call]
        return MAX_BATCH if room is None else max(1, min(room, MAX_BATCH))

    def _brpop_start(self, timeout: float | None = None) -> None:
        count = self._batch_size()
        if count == 1:
            self._popping = 0
            super()._brpop_start(timeout)  # type: ignore[no-untyped-call]
            return
        if timeout is None:
            timeout = self.brpop_timeout
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        keys = [
            self.global_keyprefix + self._q_for_pri(queue, pri)  # type: ignore[no-untyped-call]
            for pri in self.priority_steps
            for queue in queues
        ]
        self._in_poll = self.client.connection
        self._brpop_sent_at = monotonic()  # type: ignore[assignment]
        self._popping = count
        self.client.connection.send_command(
            "BLMPOP", timeout or 0, len(keys), *keys, "RIGHT", "COUNT", count
        )

    def _brpop_read(self, **options: Any) -> bool:
        if not self._popping:
            return bool(super()._brpop_read(**options))  # type: ignore[no-untyped-call]
        self._popping = 0
        try:
            try:
                reply = self.client.parse_response(self.client.connection, "BLMPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if not reply:
                raise Empty()
            key, items = reply
            name = bytes_to_str(key)  # type: ignore[no-untyped-call]
            queue = name[len(self.global_keyprefix) :].rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(queue)
            payloads = [kombu_message_loads(item) for item in items]
            self._write_unacked(items, payloads)
            failure: Exception | None = None
            for payload in payloads:  # one that fails does not keep the others from the worker
                try:
                    self.connection._deliver(payload, queue)
                except Exception as exc:
                    failure = failure or exc
            if failure is not None:
                raise failure
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]
            self._flush_brpop_reauth()  # type: ignore[no-untyped-call]

    def _write_unacked(self, items: list[bytes], payloads: list[dict[str, Any]]) -> None:
        """What kombu's `QoS.append` writes for each message, for all of them in one pipeline:
        `[message, exchange, routing_key]` in JSON, with the message as it was popped (not
        encoded again)."""
        now = time()
        entries = {}
        for item, payload in zip(items, payloads, strict=True):
            properties = payload["properties"]
            delivery = properties["delivery_info"]
            message = bytes_to_str(item)  # type: ignore[no-untyped-call]
            exchange, routing_key = (
                json.dumps(delivery["exchange"]),
                json.dumps(delivery["routing_key"]),
            )
            entries[properties["delivery_tag"]] = f"[{message}, {exchange}, {routing_key}]"
        with self.qos.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, dict.fromkeys(entries, now))
            pipe.hset(self.unacked_key, mapping=entries)
            pipe.execute()
        self.qos.written.update(entries)


class Transport(kombu_redis.Transport):
    Channel = Channel

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        """kombu's, and the acks of each turn of the loop written before it waits again."""
        super().register_with_event_loop(connection, loop)  # type: ignore[no-untyped-call]
        cycle: Any = self.cycle  # kombu's MultiChannelPoller: the connection's channels

        def flush_acks() -> None:
            for channel in list(cycle._channels):
                qos = channel._qos
                if isinstance(qos, QoS):
                    qos.loop_thread = threading.get_ident()
                    qos.flush_acks()

        loop.on_tick.add(flush_acks)
