"""Admission cost per request: the quota Lua call alone, and the whole `POST /v1/runs`.

    python bench/admission.py [--lua-calls 5000] [--posts 300] [--concurrency 1]

1. The Lua call: `QuotaStore.admit` (one EVALSHA of runrelay/lua/quota_admit.lua, every limit
   on: rate, budget, concurrency, queue) from one asyncio client, one call at a time, against
   REDIS_URL (else an embedded redis-server), under a fresh key prefix deleted afterwards. Each
   call admits a new run id (limits high enough never to refuse) and, every other call, a run's
   slot is released, so the slot set stays small as in steady state.
2. The whole POST: the bench stack of bench/throughput.py (separate `runrelay api` and
   `runrelay worker` processes, REDIS_URL / DATABASE_URL or embedded Redis + SQLite), then
   `--posts` creates of the zero-latency bench agent, `--concurrency` at a time, timing
   POST → 202 on the client. The worker runs the runs meanwhile, as in production.
Percentiles are nearest-rank. Results go to stdout and bench/results/admission-<ts>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis
from bench_stack import BENCH_DIR, stack_up
from redis.asyncio import Redis

from runrelay.server.embedded_redis import EmbeddedRedis
from runrelay.server.keys import RedisKeys
from runrelay.server.quota import QuotaStore
from runrelay.server.tenants import TenantLimits


def summary(samples_s: list[float]) -> dict[str, float]:
    ordered = sorted(samples_s)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1e3

    return {"n": len(ordered), "mean_ms": statistics.fmean(ordered) * 1e3, "p50_ms": pct(50),
            "p90_ms": pct(90), "p99_ms": pct(99), "max_ms": ordered[-1] * 1e3}


async def lua_bench(redis_url: str, calls: int) -> dict[str, Any]:
    prefix = f"rrbench-adm-{secrets.token_hex(4)}:"
    client = Redis.from_url(redis_url)
    quotas = QuotaStore(client, RedisKeys(prefix), dispatch_timeout_s=60)
    limits = TenantLimits(max_concurrent_runs=1_000_000, max_queued_runs=1_000_000,
                          requests_per_minute=100_000_000, token_budget=10**15,
                          budget_period="month")
    samples: list[float] = []
    try:
        for n in range(calls + 200):
            started = time.perf_counter()
            decision = await quotas.admit("ten_bench", f"run_{n}", limits, reserve_tokens=1000,
                                          retry_after_s=5)
            elapsed = time.perf_counter() - started
            if not decision.admitted:
                raise RuntimeError(f"admission refused: {decision}")
            if n >= 200:  # warm-up left out
                samples.append(elapsed)
            if n % 2:
                await quotas.release("ten_bench", f"run_{n - 1}", used_tokens=500)
    finally:
        sync = redis.Redis.from_url(redis_url)
        for key in sync.scan_iter(match=f"{prefix}*"):
            sync.delete(key)
        sync.close()
        await client.aclose()
    return summary(samples)


async def post_bench(base_url: str, key: str, posts: int, concurrency: int) -> dict[str, Any]:
    samples: list[float] = []
    gate = asyncio.Semaphore(concurrency)
    body = {"agent": "bench-analyst", "message": "go"}
    async with httpx.AsyncClient(base_url=base_url, timeout=60,
                                 headers={"Authorization": f"Bearer {key}"},
                                 limits=httpx.Limits(max_connections=concurrency + 5)) as http:
        for _ in range(20):  # warm-up
            (await http.post("/v1/runs", json=body)).raise_for_status()

        async def one() -> None:
            async with gate:
                started = time.perf_counter()
                response = await http.post("/v1/runs", json=body)
                samples.append(time.perf_counter() - started)
                if response.status_code != 202:
                    raise RuntimeError(f"POST /v1/runs: {response.status_code} {response.text}")

        await asyncio.gather(*(one() for _ in range(posts)))
    return summary(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lua-calls", type=int, default=5000)
    parser.add_argument("--posts", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()
    result: dict[str, Any] = {"started_at": datetime.now(UTC).isoformat(),
                              "nproc": os.cpu_count(),
                              "redis": "REDIS_URL" if os.environ.get("REDIS_URL") else "embedded",
                              "database": "DATABASE_URL" if os.environ.get("DATABASE_URL")
                              else "sqlite"}
    embedded = None
    redis_url = os.environ.get("REDIS_URL")
    tmp = Path(BENCH_DIR / "results")
    tmp.mkdir(exist_ok=True)
    if not redis_url:
        embedded = EmbeddedRedis(Path(f"/tmp/rrbench-adm-{secrets.token_hex(3)}"))
        redis_url = embedded.url
    try:
        result["lua_admit"] = asyncio.run(lua_bench(redis_url, args.lua_calls))
    finally:
        if embedded is not None:
            embedded.close()
    with stack_up(worker_concurrency=50, keep_logs=False) as stack:
        result["post_202"] = asyncio.run(
            post_bench(stack.base_url, stack.api_key, args.posts, args.concurrency))
    result["concurrency"] = args.concurrency
    lua, post = result["lua_admit"], result["post_202"]
    print(f"admission Lua call (EVALSHA round trip): mean {lua['mean_ms']:.3f} ms, "
          f"p50 {lua['p50_ms']:.3f}, p99 {lua['p99_ms']:.3f} ({lua['n']} calls)")
    print(f"POST /v1/runs -> 202 (concurrency {args.concurrency}): mean {post['mean_ms']:.2f} ms, "
          f"p50 {post['p50_ms']:.2f}, p90 {post['p90_ms']:.2f}, p99 {post['p99_ms']:.2f} "
          f"({post['n']} posts)")
    print(f"the Lua call is {lua['p50_ms'] / post['p50_ms'] * 100:.1f} % of the median POST")
    out = BENCH_DIR / "results" / f"admission-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"results: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
