"""Automatic pipelining for redis-py's asyncio client.

A worker with fifty runs in flight issues hundreds of small commands a second (appends, leases,
quota calls), each its own write, read and wake-up of Redis: on a loopback socket the system
calls cost more than the commands. `PipelinedRedis` sends the commands that the process's
coroutines issue while the event loop is busy together, as one pipeline (one write, one read,
one connection), and hands each caller its own reply or error. What ioredis calls
`enableAutoPipelining`; redis-py has no such option (redis/redis-py#3767).

- A caller sees what it would see without batching: its reply, or its command's error
  (`NoScriptError` included, so `Script` objects still load themselves).
- Each batch is a plain pipeline, not a transaction: the commands of other callers in it have
  no effect on one's atomicity, which stays that of one command or one Lua script.
- One batch is out at a time (`max_batches`, 1 by default; so as many connections): what is
  issued meanwhile waits for its replies and goes in the next batch, which grows with the load
  (group commit, as Nagle's algorithm does for a socket). Redis runs one command at a time, so a
  second batch out on another connection is not served sooner; it overlaps only the network's
  round trip (on a distant Redis, a command may now wait up to one more), and costs a batch
  more (a write, a read and a wake-up, on both sides). Under `bench/throughput.py` at 50 runs
  in flight, one batch out instead of four halved a worker's batches (3.3 → 1.4 per run) and
  cut ~10% of the server's CPU per run (bench/README.md, fifteenth round).
- A batch's connection stays the client's for the next batch, and its socket timeout bounds
  the whole batch once: per batch, no pool checkout (locks, a probe read) and no timer per
  reply, which cost more than a small batch's commands. A batch that timed out is not sent
  again (Redis may have run it); one whose connection Redis had closed is, once.
- Commands that block or hold a connection's state (BLPOP, XREAD BLOCK, MULTI, WATCH,
  SUBSCRIBE...) bypass the batches and take a pooled connection of their own, as before.
- A caller cancelled before its batch leaves is left out of it. A caller awaits a plain
  future, so a cancel always ends its wait (no cancel lost inside redis-py's socket calls).
- When a batch fails (Redis went away), each caller gets its own copy of the error. A command
  that cannot be encoded (a `bool` argument, say) fails alone, with redis-py's `DataError`.
- Commands are packed by hiredis's C packer, as redis-py's synchronous client does (its asyncio
  connection packs in Python, which was ~6% of a worker's CPU under load); the bytes are the
  same, and whatever hiredis refuses is packed by redis-py, which raises what it would raise.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import Awaitable
from typing import Any

from redis._parsers.encoders import Encoder
from redis.asyncio import Redis
from redis.connection import PythonRespSerializer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

try:
    import hiredis
except ImportError:  # the `hiredis` extra is not installed: redis-py packs everything
    hiredis = None  # type: ignore[assignment]

# Commands that must not share a pipeline: they block, or change the connection's state.
_DIRECT = frozenset(
    {
        "BLPOP", "BRPOP", "BRPOPLPUSH", "BLMOVE", "BLMPOP", "BZPOPMIN", "BZPOPMAX",
        "BZMPOP", "WAIT", "WAITAOF", "MULTI", "EXEC", "DISCARD", "WATCH", "UNWATCH",
        "SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "MONITOR", "SELECT", "AUTH", "HELLO",
        "RESET", "QUIT", "CLIENT", "READONLY", "READWRITE",
    }
)  # fmt: skip
_MAYBE_BLOCKING = frozenset({"XREAD", "XREADGROUP"})
MAX_BATCH = 512
_BUFFER_CUTOFF = 6000  # redis-py's: larger values are written as their own chunk

_Call = tuple[tuple[Any, ...], dict[str, Any], "asyncio.Future[Any]"]


def _direct(args: tuple[Any, ...]) -> bool:
    name = args[0]
    name = (name.decode() if isinstance(name, bytes) else str(name)).upper()
    if name in _DIRECT:
        return True
    if name in _MAYBE_BLOCKING:
        return any(isinstance(a, (str, bytes)) and a in ("BLOCK", b"BLOCK") for a in args)
    return False


class _Packer:
    """Commands in RESP, byte for byte what redis-py's encoder writes: by hiredis when it is
    installed and the encoding is its own (UTF-8, strict), else (and for any argument hiredis
    refuses, which redis-py then names in its `DataError`) by redis-py's serializer."""

    def __init__(self, encoder: Encoder) -> None:
        self._python = PythonRespSerializer(_BUFFER_CUTOFF, encoder.encode)
        utf8 = encoder.encoding.lower() in ("utf-8", "utf8") and encoder.encoding_errors == "strict"
        self._c = hiredis.pack_command if hiredis is not None and utf8 else None

    def pack(self, args: tuple[Any, ...]) -> bytes:
        if self._c is not None:
            name = args[0]
            if isinstance(name, str) and " " in name:  # "CONFIG GET": the server wants two words
                args = (*name.encode().split(), *args[1:])
            try:
                packed: bytes = self._c(args)
                return packed
            except TypeError:  # a bytearray or memoryview (as bytes), or what redis-py refuses
                plain = tuple(
                    bytes(a) if isinstance(a, (bytearray, memoryview)) else a for a in args
                )
                with contextlib.suppress(TypeError):
                    packed = self._c(plain)  # type: ignore[arg-type]
                    return packed
        return b"".join(self._python.pack(*args))  # type: ignore[no-untyped-call]


def _cancel(calls: list[_Call]) -> None:
    for _, _, future in calls:
        future.cancel()


def _fail(calls: list[_Call], exc: Exception) -> None:
    for _, _, future in calls:
        if not future.done():
            future.set_exception(_own_copy(exc))


def _own_copy(exc: Exception) -> Exception:
    """`exc` for one caller. One instance raised in several tasks would gather all their frames
    in its traceback, and code that clears a traceback's frames (Celery does, for a task's
    error) would then finalise the other tasks' suspended coroutines."""
    try:
        copied = copy.copy(exc)
    except Exception:  # an exception that cannot be rebuilt from its args
        copied = RedisError(str(exc))
    copied.__cause__ = exc  # the batch's own traceback, in a finished task
    return copied


async def together(*steps: Awaitable[Any]) -> list[Any]:
    """Await `steps` issued in this order in one turn of the loop: on a `PipelinedRedis`, the
    first command of each leaves in the same batch, in that order (Redis runs them one after
    the other), one round trip for all. Each runs to its end whatever the others do; then the
    first error, if any, is raised. Their results, in order."""
    done = await asyncio.gather(*steps, return_exceptions=True)
    for outcome in done:
        if isinstance(outcome, BaseException):
            raise outcome
    return done


class PipelinedRedis(Redis):
    """A `redis.asyncio.Redis` whose commands go to Redis in automatic pipelines."""

    def __init__(self, *args: Any, max_batches: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_batches = max_batches
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: list[_Call] = []
        self._scheduled = False
        self._batches: set[asyncio.Task[None]] = set()
        self._packer: _Packer | None = None
        # Connections the batches keep between them: taking one from the pool and giving it
        # back cost more than a small batch (locks, a probe read, metrics). At most
        # `max_batches`, and one fewer than the pool holds: other commands need one too.
        self._idle: list[Any] = []

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if self.single_connection_client or _direct(args):
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # first use, or a new loop (the old one's state is gone)
            self._loop, self._queue, self._scheduled = loop, [], False
            self._batches, self._idle = set(), []
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((args, options, future))
        self._schedule()
        return await future

    def _schedule(self) -> None:
        if not self._scheduled and self._queue and len(self._batches) < self.max_batches:
            self._scheduled = True
            # After the callbacks already due: what they issue joins this batch.
            assert self._loop is not None
            self._loop.call_soon(self._start_batch)

    def _start_batch(self) -> None:
        self._scheduled = False
        packed, calls = self._packed([c for c in self._queue[:MAX_BATCH] if not c[2].done()])
        del self._queue[:MAX_BATCH]
        if calls:
            task = asyncio.ensure_future(self._send(calls, packed))
            self._batches.add(task)
            task.add_done_callback(self._batch_done)
        self._schedule()

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._batches.discard(task)
        self._schedule()

    async def _send(self, calls: list[_Call], packed: list[bytes]) -> None:
        """One batch: its packed commands in one write on the client's connection, then each
        reply read in order and handed to its caller (through the client's reply callbacks,
        as a pipeline would). Not redis-py's `Pipeline`: per batch it builds a command stack,
        times the call for observability, wraps it in a retry and resets itself under a
        shield, which cost more than the batch's commands.

        A connection found dead before any reply came (closed by Redis while idle: a restart,
        its `timeout`) is given back to the pool and the batch sent once more on one the pool
        checked, as redis-py's retry would. A batch that timed out is not sent again: Redis
        took it and may have run it (a stall, a slow script), and running an append or a quota
        call twice is not what its caller asked for. A failure reaches every caller not yet
        answered, who retries as it would without batching."""
        for attempt in (1, 2):
            conn = await self._connection(calls, kept=attempt == 1)
            if conn is None:
                return
            answered = [0]
            try:
                await self._exchange(conn, calls, packed, answered)
            except asyncio.CancelledError:
                await self._drop(conn)  # replies may be left unread on it
                _cancel(calls)
                raise
            except (RedisConnectionError, RedisTimeoutError) as exc:
                await self._drop(conn)
                if attempt == 1 and not answered[0] and not isinstance(exc, RedisTimeoutError):
                    continue
                _fail(calls, exc)
                return
            except Exception as exc:
                await self._drop(conn)
                _fail(calls, exc)
                return
            if len(self._idle) < self._kept_at_most():
                self._idle.append(conn)
            else:
                await self.connection_pool.release(conn)
            return

    async def _exchange(
        self, conn: Any, calls: list[_Call], packed: list[bytes], answered: list[int]
    ) -> None:
        """Send the batch on `conn` and hand each caller its reply, counting them in
        `answered`. The connection's `socket_timeout` bounds the whole batch, once: redis-py
        bounds each write with `wait_for` (a task) and each reply with a timer of its own."""
        bound = conn.socket_timeout
        conn.socket_timeout = None  # for the batch: its one bound is the `timeout` below
        try:
            async with asyncio.timeout(bound):
                await conn.send_packed_command(packed)
                for args, options, future in calls:
                    try:
                        reply = await self.parse_response(conn, args[0], **options)
                    except ResponseError as exc:  # this command's own error
                        if not future.done():
                            future.set_exception(exc)
                    else:
                        if not future.done():
                            future.set_result(reply)
                    answered[0] += 1
        except TimeoutError as exc:  # asyncio's, at the bound: redis-py's error for it
            raise RedisTimeoutError(f"Timeout reading from Redis ({bound} s)") from exc
        finally:
            conn.socket_timeout = bound

    def _kept_at_most(self) -> int:
        pool_size = getattr(self.connection_pool, "max_connections", None) or self.max_batches
        return min(self.max_batches, pool_size - 1)

    async def _drop(self, conn: Any) -> None:
        """A connection that failed goes back to the pool, closed (the pool reconnects it)."""
        try:
            await conn.disconnect()
        finally:
            await self.connection_pool.release(conn)

    def _packed(self, calls: list[_Call]) -> tuple[list[bytes], list[_Call]]:
        """The batch's commands packed, and the calls they are: one that cannot be encoded
        gets its own error now and is left out."""
        if self._packer is None:
            self._packer = _Packer(self.get_encoder())  # type: ignore[no-untyped-call]
        packed, sent = [], []
        for call in calls:
            try:
                packed.append(self._packer.pack(call[0]))
            except Exception as exc:  # DataError, UnicodeEncodeError: this caller's own error
                if not call[2].done():
                    call[2].set_exception(exc)
            else:
                sent.append(call)
        return packed, sent

    async def _connection(self, calls: list[_Call], *, kept: bool) -> Any:
        """A connection for the batch: one kept from an earlier batch if `kept`, else one from
        the pool, which checks it is alive; None, every caller failed, if there is none."""
        if kept and self._idle:
            return self._idle.pop()
        try:
            return await self.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        except asyncio.CancelledError:
            _cancel(calls)
            raise
        except Exception as exc:
            _fail(calls, exc)
            return None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        if self._batches:
            await asyncio.gather(*self._batches, return_exceptions=True)
        idle, self._idle = self._idle, []
        for conn in idle:
            await self.connection_pool.release(conn)
        await super().aclose(close_connection_pool)
