"""The broker transport against a real Redis: messages published through kombu with runrelay's
transport arrive, its channel builds one redis-py client per pool rather than one per command,
a channel whose connection was closed raises a connection error, not AttributeError, and a
consumer takes its messages in batches (Redis 7+) without losing any it has not acked."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.asynchronous import Hub
from redis.exceptions import ConnectionError as RedisConnectionError

from runrelay.server.broker import Channel


@pytest.fixture
def connection(redis_url: str, prefix: str) -> Iterator[Connection]:
    options = {"global_keyprefix": prefix}
    with Connection(
        redis_url, transport="runrelay.server.broker:Transport", transport_options=options
    ) as conn:
        yield conn


def test_publishes_share_one_client_per_pool(
    connection: Connection, prefix: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[Any] = []
    create = Channel._create_client

    def counting(self: Channel, asynchronous: bool = False) -> Any:
        client = create(self, asynchronous)
        if not asynchronous:  # the channel's own consuming client is built once anyway
            built.append(client)
        return client

    monkeypatch.setattr(Channel, "_create_client", counting)
    queue = Queue("runs", Exchange("runs"), routing_key="runs")
    channel = connection.channel()
    producer = Producer(channel)
    for n in range(5):
        producer.publish({"n": n}, exchange=queue.exchange, routing_key="runs", declare=[queue])

    with redis.Redis.from_url(redis_url) as r:
        bodies = r.lrange(f"{prefix}runs", 0, -1)
    assert len(bodies) == 5
    assert len(built) == 1, "one client for the five publishes"

    channel._disconnect_pools()  # what kombu does when the connection drops
    producer.publish({"n": 5}, exchange=queue.exchange, routing_key="runs")
    assert len(built) == 2, "a new pool, a new client"

    channel.connection = None  # detached, as after Celery reconnects (then an ack comes)
    channel._disconnect_pools()
    with pytest.raises(RedisConnectionError), channel.conn_or_acquire():
        pass


def _server_version(redis_url: str) -> tuple[int, int]:
    with redis.Redis.from_url(redis_url) as r:
        major, minor = str(r.info("server")["redis_version"]).split(".")[:2]
    return int(major), int(minor)


def test_a_consumer_takes_up_to_its_prefetch_limit_at_once_and_loses_none_unacked(
    connection: Connection, prefix: str, redis_url: str
) -> None:
    """On Redis 7 a pop takes as many messages as the consumer may still hold, each recorded as
    unacked before it is handed over; on older servers kombu's one-at-a-time BRPOP. Either way,
    what was taken and not acked goes back to the queue when the channel closes."""
    queue = Queue("runs", Exchange("runs"), routing_key="runs")
    channel = connection.channel()
    producer = Producer(channel)
    for n in range(5):
        producer.publish({"n": n}, exchange=queue.exchange, routing_key="runs", declare=[queue])
    batched = _server_version(redis_url) >= (7, 0)
    received: list[Any] = []
    r = redis.Redis.from_url(redis_url)

    def on_message(body: Any, message: Any) -> None:
        if not received:  # what Redis holds as the first message is handed over
            unacked = r.hlen(f"{prefix}unacked")
            assert unacked == (3 if batched else 1)
            assert r.zcard(f"{prefix}unacked_index") == unacked
            assert r.llen(f"{prefix}runs") == 5 - unacked
        received.append((body, message))

    consumer_channel = connection.channel()
    with Consumer(consumer_channel, queues=[queue], callbacks=[on_message], prefetch_count=3):
        while len(received) < 3:
            connection.drain_events(timeout=2)
        assert [body["n"] for body, _ in received] == [0, 1, 2], "in the order they were sent"
        assert r.llen(f"{prefix}runs") == 2, "no more than the prefetch limit taken"
        received[0][1].ack()
        assert r.hlen(f"{prefix}unacked") == 2
        assert r.zcard(f"{prefix}unacked_index") == 2
    consumer_channel.close()  # the two unacked messages go back to the queue

    with Consumer(channel, queues=[queue], callbacks=[lambda body, m: received.append((body, m))],
                  prefetch_count=10):
        while len(received) < 7:
            connection.drain_events(timeout=2)
    assert sorted(body["n"] for body, _ in received[3:]) == [1, 2, 3, 4]
    r.close()


def test_a_message_that_fails_does_not_keep_the_rest_of_its_batch_from_the_consumer(
    connection: Connection, prefix: str, redis_url: str
) -> None:
    queue = Queue("runs", Exchange("runs"), routing_key="runs")
    channel = connection.channel()
    producer = Producer(channel)
    for n in range(3):
        producer.publish({"n": n}, exchange=queue.exchange, routing_key="runs", declare=[queue])
    received: list[int] = []

    def on_message(body: Any, message: Any) -> None:
        received.append(body["n"])
        if body["n"] == 0:
            raise RuntimeError("the first message's handler failed")
        message.ack()

    with Consumer(connection.channel(), queues=[queue], callbacks=[on_message], prefetch_count=3):
        with pytest.raises(RuntimeError, match="first message"):
            connection.drain_events(timeout=2)
        if _server_version(redis_url) >= (7, 0):
            assert received == [0, 1, 2], "the batch's other messages were handed over"
        while len(received) < 3:
            connection.drain_events(timeout=2)
    assert received == [0, 1, 2]
    with redis.Redis.from_url(redis_url) as r:
        assert r.hlen(f"{prefix}unacked") == 1, "only the failed one is still unacked"


def test_acks_of_one_turn_of_the_loop_leave_the_unacked_hash_together(
    connection: Connection, prefix: str, redis_url: str
) -> None:
    """A worker's acks come on its event loop (kombu's hub): those of one turn are written in one
    round trip once the turn's callbacks have run, before the loop waits again. An ack from
    another thread is written at once, as kombu's."""
    queue = Queue("runs", Exchange("runs"), routing_key="runs")
    producer = Producer(connection.channel())
    for n in range(4):
        producer.publish({"n": n}, exchange=queue.exchange, routing_key="runs", declare=[queue])
    received: list[Any] = []
    channel = connection.channel()
    with Consumer(channel, queues=[queue], callbacks=[lambda body, m: received.append(m)],
                  prefetch_count=4):
        while len(received) < 4:
            connection.drain_events(timeout=2)
    r = redis.Redis.from_url(redis_url)
    assert r.hlen(f"{prefix}unacked") == 4

    hub = Hub()
    connection.transport.register_with_event_loop(connection.connection, hub)
    in_turn: list[int] = []

    def ack_three() -> None:
        for message in received[:3]:
            message.ack()
        in_turn.append(r.hlen(f"{prefix}unacked"))

    hub.run_once()  # the loop's first turn: its thread is known from then on
    hub.call_soon(ack_three)
    try:
        hub.run_once()
    finally:
        hub.close()
    assert in_turn[-1] == 4, "not written while the turn's callbacks run"
    assert r.hlen(f"{prefix}unacked") == 1, "the turn's three acks written before it ends"
    assert r.zcard(f"{prefix}unacked_index") == 1

    other = threading.Thread(target=received[3].ack)
    other.start()
    other.join()
    assert r.hlen(f"{prefix}unacked") == 0, "an ack off the loop's thread is written at once"
    assert r.zcard(f"{prefix}unacked_index") == 0
    r.close()
