"""The broker transport against a real Redis: messages published through kombu with runrelay's
transport arrive, its channel builds one redis-py client per pool rather than one per command,
and a channel whose connection was closed raises a connection error, not AttributeError."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange, Producer, Queue
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
