"""`PipelinedRedis` against a real Redis: each caller gets its own reply or error, however many
share a batch; connections stay at `max_batches`; blocking commands do not hold up the others;
a caller cancelled before its batch leaves is not sent."""

from __future__ import annotations

import asyncio
import secrets
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
import redis
from redis.asyncio import BlockingConnectionPool
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from runrelay.server.autopipeline import PipelinedRedis, together
from runrelay.server.embedded_redis import free_port
from runrelay.server.lua import AsyncScript

T = TypeVar("T")

_BUSY_20_MS = """
local t0 = redis.call('TIME')
repeat
  local t = redis.call('TIME')
until (t[1] - t0[1]) * 1000000 + (t[2] - t0[2]) > 20000
return 1
"""



@pytest.fixture
def run(redis_url: str, prefix: str) -> Callable[[Callable[[PipelinedRedis], Awaitable[T]]], T]:
    def runner(scenario: Callable[[PipelinedRedis], Awaitable[T]]) -> T:
        async def main() -> T:
            pool = BlockingConnectionPool.from_url(
                redis_url, max_connections=50, client_name=prefix.rstrip(":")
            )
            client = PipelinedRedis.from_pool(pool)
            client.max_batches = 2
            try:
                return await scenario(client)
            finally:
                await client.aclose()

        return asyncio.run(main())

    return runner


def test_concurrent_callers_each_get_their_own_reply_over_at_most_max_batches_connections(
    run: Callable[..., Any], prefix: str, redis_url: str
) -> None:
    async def scenario(r: PipelinedRedis) -> tuple[list[Any], int]:
        await asyncio.gather(*(r.set(f"{prefix}k{i}", f"v{i}") for i in range(300)))
        replies = await asyncio.gather(*(r.get(f"{prefix}k{i}") for i in range(300)))
        sync = redis.Redis.from_url(redis_url)
        name = prefix.rstrip(":")
        connections = sum(1 for c in sync.client_list() if c["name"] == name)
        sync.close()
        return replies, connections

    replies, connections = run(scenario)
    assert replies == [f"v{i}".encode() for i in range(300)]
    # A plain client on this pool opens one connection per concurrent command (up to 50).
    assert 1 <= connections <= 2


@pytest.mark.parametrize(
    ("bad_call", "error_type", "says"),
    [
        (lambda r, p: r.incr(f"{p}list"), ResponseError, "WRONGTYPE"),  # Redis refuses it
        (lambda r, p: r.execute_command("SET", f"{p}b", True), DataError, "bool"),  # redis-py
    ],
    ids=["redis-error", "cannot-be-encoded"],
)
def test_one_callers_error_is_its_own(
    run: Callable[..., Any],
    prefix: str,
    bad_call: Callable[[PipelinedRedis, str], Awaitable[Any]],
    error_type: type[Exception],
    says: str,
) -> None:
    async def scenario(r: PipelinedRedis) -> list[Any]:
        await r.rpush(f"{prefix}list", "x")
        return await asyncio.gather(
            r.set(f"{prefix}a", "1"),
            bad_call(r, prefix),
            r.get(f"{prefix}a"),
            return_exceptions=True,
        )

    ok, error, value = run(scenario)
    assert ok is True
    assert isinstance(error, error_type) and says in str(error)
    assert value == b"1"


def test_what_is_sent_is_byte_for_byte_what_redis_py_writes(
    run: Callable[..., Any], prefix: str
) -> None:
    """Packed in C (hiredis) where redis-py's asyncio client packs in Python: the values Redis
    stores are the same, whatever their type."""
    values: list[Any] = [
        "plain", "é ☃", b"\x00\xff", bytearray(b"ba"), memoryview(b"mv"), 0, -3, 10**20,
        0.1, 1e-05, 1733212345.1234567, 1e300, float("inf"), "x" * 10_000,
    ]  # fmt: skip

    async def scenario(r: PipelinedRedis) -> list[Any]:
        await asyncio.gather(*(r.set(f"{prefix}v{i}", v) for i, v in enumerate(values)))
        # A two-word command name goes as two words, as redis-py sends it.
        assert await r.execute_command("OBJECT ENCODING", f"{prefix}v0") == b"embstr"
        return list(await r.mget([f"{prefix}v{i}" for i in range(len(values))]))

    expected = [b"".join(Connection().pack_command("X", v)).split(b"\r\n")[-2] for v in values]
    assert run(scenario) == expected


def test_a_script_not_yet_in_redis_loads_itself(run: Callable[..., Any], prefix: str) -> None:
    # A body no other test has sent: Redis answers NOSCRIPT to the first EVALSHA.
    body = f"-- {secrets.token_hex(8)}\nreturn redis.call('INCRBY', KEYS[1], ARGV[1])"

    async def scenario(r: PipelinedRedis) -> list[Any]:
        script = AsyncScript(r, body)  # what `lua.script` gives an asyncio client
        return await asyncio.gather(*(script(keys=[f"{prefix}n"], args=[2]) for _ in range(5)))

    assert sorted(run(scenario)) == [2, 4, 6, 8, 10]


def test_a_blocking_command_does_not_hold_up_the_others(
    run: Callable[..., Any], prefix: str
) -> None:
    async def scenario(r: PipelinedRedis) -> tuple[Any, bool, Any]:
        waiting = asyncio.ensure_future(r.blpop([f"{prefix}empty"], timeout=5))
        await asyncio.sleep(0.05)
        got = await r.set(f"{prefix}b", "1")
        still_waiting = not waiting.done()
        await r.rpush(f"{prefix}empty", "wake")
        return got, still_waiting, await waiting

    got, still_waiting, popped = run(scenario)
    assert got is True and still_waiting
    assert popped == (f"{prefix}empty".encode(), b"wake")


def test_a_caller_cancelled_before_its_batch_leaves_is_not_sent(
    run: Callable[..., Any], prefix: str
) -> None:
    async def scenario(r: PipelinedRedis) -> Any:
        cancelled = asyncio.ensure_future(r.set(f"{prefix}gone", "1"))
        kept = asyncio.ensure_future(r.set(f"{prefix}kept", "1"))
        await asyncio.sleep(0)  # both queued, their batch not yet sent
        cancelled.cancel()
        await kept
        return await r.mget(f"{prefix}gone", f"{prefix}kept")

    assert run(scenario) == [None, b"1"]


def test_a_connection_redis_closed_while_pooled_is_replaced_without_an_error(
    run: Callable[..., Any], prefix: str, redis_url: str
) -> None:
    """Redis dropped the pooled connection (a restart, `timeout`, CLIENT KILL): the batch goes
    again on a new one, and its callers see their replies, not the dropped connection."""

    async def scenario(r: PipelinedRedis) -> tuple[list[Any], int]:
        await r.set(f"{prefix}a", "1")  # one connection, now back in the pool
        sync = redis.Redis.from_url(redis_url)
        killed = 0
        name = prefix.rstrip(":")
        for client in sync.client_list():
            if client["name"] == name:
                killed += sync.client_kill_filter(_id=client["id"])
        sync.close()
        replies = await asyncio.gather(r.get(f"{prefix}a"), r.incr(f"{prefix}n"))
        return replies, killed

    replies, killed = run(scenario)
    assert killed >= 1, "the pooled connection was not found to close"
    assert replies == [b"1", 1], "the batch went exactly once, on a new connection"


def test_after_redis_closed_every_kept_connection_each_batch_goes_on_a_live_one(
    run: Callable[..., Any], prefix: str, redis_url: str
) -> None:
    """A batch's connection stays the client's for the next batch. Redis closed them all (a
    restart): batch after batch still gets its replies, each sent once, none an error."""

    async def scenario(r: PipelinedRedis) -> tuple[list[Any], int]:
        # Two batches out at once, so the client keeps two connections (max_batches=2): the
        # first holds Redis for 20 ms while the second is sent.
        async def second() -> Any:
            await asyncio.sleep(0.005)
            return await r.set(f"{prefix}b", "1")

        await asyncio.gather(r.eval(_BUSY_20_MS, 0), second())
        sync = redis.Redis.from_url(redis_url)
        killed = sum(
            sync.client_kill_filter(_id=c["id"])
            for c in sync.client_list()
            if c["name"] == prefix.rstrip(":")
        )
        sync.close()
        replies = [await r.incr(f"{prefix}n") for _ in range(4)]
        return replies, killed

    replies, killed = run(scenario)
    assert killed >= 1, "the kept connections were not found to close"
    assert replies == [1, 2, 3, 4], "each batch went exactly once, on a live connection"


def test_a_batch_redis_does_not_answer_within_the_socket_timeout_fails_its_callers() -> None:
    """The socket timeout bounds a batch: a server that takes the commands and never answers
    gives each caller redis-py's `TimeoutError` after it, not a wait without end."""

    async def scenario() -> tuple[list[Any], float]:
        accepted: list[asyncio.StreamWriter] = []

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(writer)  # takes the commands, never answers

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = PipelinedRedis.from_url(
            f"redis://127.0.0.1:{port}/0", socket_timeout=0.3, protocol=2
        )
        started = asyncio.get_running_loop().time()
        try:
            errors = await asyncio.gather(
                *(client.get(f"k{i}") for i in range(3)), return_exceptions=True
            )
            return errors, asyncio.get_running_loop().time() - started
        finally:
            await client.aclose()
            for writer in accepted:
                writer.close()
            server.close()
            await server.wait_closed()

    errors, took = asyncio.run(scenario())
    assert all(isinstance(e, RedisTimeoutError) for e in errors), errors
    assert took < 5, "the batch was not bounded by the socket timeout"


def test_when_redis_is_unreachable_every_caller_in_the_batch_sees_the_error() -> None:
    async def scenario() -> list[Any]:
        client = PipelinedRedis.from_url(
            f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1
        )
        try:
            return await asyncio.gather(
                *(client.get(f"k{i}") for i in range(3)), return_exceptions=True
            )
        finally:
            await client.aclose()

    errors = asyncio.run(scenario())
    assert len(errors) == 3 and all(isinstance(e, RedisConnectionError) for e in errors)


def test_clearing_one_callers_error_leaves_the_other_callers_alone() -> None:
    """Each caller of a failed batch gets its own error. One shared instance carries the frames
    of whoever raised it last in its traceback, and clearing them (Celery does, for a task's
    error) would finalise that other caller's suspended coroutine."""

    async def scenario() -> tuple[str, bool]:
        client = PipelinedRedis.from_url(
            f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1
        )
        raised, cleared = asyncio.Event(), asyncio.Event()

        async def clearer() -> BaseException:
            try:
                await client.get("a")
            except RedisConnectionError as exc:
                await raised.wait()  # the other caller raised its error, and is suspended
                traceback.clear_frames(exc.__traceback__)
                cleared.set()
                return exc
            raise AssertionError("Redis is not there")

        async def survivor() -> str:
            try:
                await client.get("b")
            except RedisConnectionError:
                raised.set()
                await cleared.wait()
            return "alive"

        try:
            first = asyncio.ensure_future(clearer())
            second = asyncio.ensure_future(survivor())
            error = await first
            return await asyncio.wait_for(second, 5), isinstance(error.__cause__, Exception)
        finally:
            await client.aclose()

    assert asyncio.run(scenario()) == ("alive", True)


def test_by_default_what_is_issued_while_a_batch_is_out_goes_in_the_next_one(
    redis_url: str, prefix: str
) -> None:
    """One batch out at a time (group commit): the commands issued while Redis is busy with a
    batch wait for it and leave together, on the same one connection."""

    async def scenario() -> tuple[list[Any], int]:
        pool = BlockingConnectionPool.from_url(
            redis_url, max_connections=50, client_name=prefix.rstrip(":")
        )
        client = PipelinedRedis.from_pool(pool)
        try:

            async def later(i: int) -> Any:
                await asyncio.sleep(0.005)  # while the first batch holds Redis for 20 ms
                return await client.set(f"{prefix}k{i}", "1")

            replies = await asyncio.gather(
                client.eval(_BUSY_20_MS, 0), *(later(i) for i in range(100))
            )
            sync = redis.Redis.from_url(redis_url)
            name = prefix.rstrip(":")
            connections = sum(1 for c in sync.client_list() if c["name"] == name)
            sync.close()
            return replies, connections
        finally:
            await client.aclose()

    replies, connections = asyncio.run(scenario())
    assert replies == [1] + [True] * 100
    assert connections == 1, "a second batch went out while the first was out"



def test_steps_issued_together_leave_in_one_batch_in_order_and_each_runs_to_its_end(
    run: Callable[..., Any], prefix: str
) -> None:
    """`together` (a run's `done`, slot and thread at its end): one round trip, Redis runs the
    steps in the order given, and a step that fails neither stops the others nor goes unseen."""

    async def scenario(r: PipelinedRedis) -> tuple[list[int], list[Any], str]:
        await r.set(f"{prefix}text", "not a number")
        batches: list[int] = []
        send = r._send

        async def counted(calls: Any, packed: Any) -> None:
            batches.append(len(calls))
            await send(calls, packed)

        r._send = counted  # type: ignore[method-assign]
        order = f"{prefix}order"
        with pytest.raises(ResponseError) as failed:
            await together(r.rpush(order, "a"), r.incr(f"{prefix}text"), r.rpush(order, "b"))
        sent = list(batches)
        return sent, await r.lrange(order, 0, -1), str(failed.value)

    batches, order, error = run(scenario)
    assert batches == [3]
    assert order == [b"a", b"b"]
    assert "not an integer" in error


def test_a_batch_that_timed_out_is_not_sent_again(redis_url: str, prefix: str) -> None:
    """Redis took the batch but did not answer within the socket timeout (writes paused, as in
    a stall): the caller gets redis-py's `TimeoutError`, and the batch is not sent again, so its
    command runs at most once. Sent again on a new connection, it could run twice (an append, a
    quota call done twice)."""
    key = f"{prefix}n"
    sync = redis.Redis.from_url(redis_url)

    async def scenario() -> str:
        pool = BlockingConnectionPool.from_url(redis_url, max_connections=4, socket_timeout=0.4)
        client = PipelinedRedis.from_pool(pool)
        try:
            await client.ping()  # its connection is made before the pause
            # Writes wait 600 ms: past the timeout, and not much longer, so that a batch sent
            # again at the timeout would be answered.
            sync.client_pause(600, all=False)
            try:
                await client.incr(key)
            except RedisTimeoutError:
                return "timed out"
            return "answered"
        finally:
            await client.aclose()

    try:
        outcome = asyncio.run(scenario())
        time.sleep(0.5)  # the pause is over
        assert outcome == "timed out", "the timed-out batch was sent again"
        assert sync.get(key) in (None, b"1"), "the INCR ran more than once"
    finally:
        sync.close()
