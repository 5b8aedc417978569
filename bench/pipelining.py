"""Client CPU per Redis command through `PipelinedRedis`, the worker's and the API's client.

    REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/python bench/pipelining.py --callers 4 50

Each of `--callers` coroutines runs EVALSHA (a one-line INCR script, as small as a lease check)
`--commands` times, one after the other, on one client of the worker's kind (a blocking pool,
redis-py's default 5 s socket timeout), on uvloop's loop where it is installed. The batches are
as large as the callers: 4 is about the worker's batch under `throughput.py`, 50 a saturated
process. Prints the process's CPU per command and commands per second; the keys are
`rrbench-<hex>:*`, deleted afterwards. Without `REDIS_URL`, an embedded redis-server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from redis.asyncio import BlockingConnectionPool

from runrelay.server.autopipeline import PipelinedRedis
from runrelay.server.embedded_redis import EmbeddedRedis

_SCRIPT = "return redis.call('INCR', KEYS[1])"


async def measure(url: str, callers: int, commands: int) -> tuple[float, float]:
    prefix = f"rrbench-{secrets.token_hex(4)}:"
    client = PipelinedRedis.from_pool(BlockingConnectionPool.from_url(url, max_connections=100))
    sha = await client.script_load(_SCRIPT)

    async def caller(i: int, n: int) -> None:
        for _ in range(n):
            await client.evalsha(sha, 1, f"{prefix}{i}")

    try:
        await asyncio.gather(*(caller(i, 200) for i in range(callers)))  # warm-up
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(caller(i, commands) for i in range(callers)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        await client.delete(*(f"{prefix}{i}" for i in range(callers)))
        await client.aclose()
    total = callers * commands
    return cpu / total * 1e6, total / wall


@contextlib.contextmanager
def redis_url() -> Iterator[str]:
    """`REDIS_URL`, else an embedded redis-server for the bench's duration."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    with tempfile.TemporaryDirectory(prefix="runrelay-bench-") as tmp:
        server = EmbeddedRedis(Path(tmp) / "redis")
        try:
            yield server.url
        finally:
            server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, nargs="+", default=[4, 50])
    parser.add_argument("--commands", type=int, default=5000, help="per caller")
    args = parser.parse_args()
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    with redis_url() as url:
        for callers in args.callers:
            us, rate = run(measure(url, callers, args.commands))
            print(f"{callers:4d} callers: {us:6.1f} µs of client CPU per command, {rate:,.0f}/s")


if __name__ == "__main__":
    main()
