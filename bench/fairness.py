"""Fairness between tenants: tenant A submits a burst, then tenant B submits one run; how long
until B's run is done?

    python bench/fairness.py [--burst 300] [--a-cap 10] [--worker-concurrency 20]

The bench stack of bench/throughput.py (separate `runrelay api` and `runrelay worker`
processes; REDIS_URL / DATABASE_URL or embedded Redis + SQLite), the zero-latency bench agent.
Tenant A (`bench`) gets `--max-concurrent-runs A_CAP`; `--a-cap 0` leaves it effectively
unlimited (100000), which is what admission without tenant caps would do: A's whole burst goes
to the shared Celery queue and B's run waits behind it. B is a fresh tenant with the defaults.
It reports B's POST → done time (via POST /v1/runs/wait) and A's drain time.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import httpx
from bench_stack import stack_up

BODY = {"agent": "bench-analyst", "message": "go"}


async def measure(base_url: str, a_key: str, b_key: str, burst: int) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=base_url, timeout=300,
                                 limits=httpx.Limits(max_connections=40)) as http:
        a = {"Authorization": f"Bearer {a_key}"}
        gate = asyncio.Semaphore(20)

        async def one() -> str:
            async with gate:
                response = await http.post("/v1/runs", json=BODY, headers=a)
                response.raise_for_status()
                return str(response.json()["id"])

        started = time.perf_counter()
        ids = await asyncio.gather(*(one() for _ in range(burst)))
        submitted = time.perf_counter() - started
        b_started = time.perf_counter()
        b_auth = {"Authorization": f"Bearer {b_key}"}
        b = await http.post("/v1/runs/wait", json=BODY, headers=b_auth)
        b.raise_for_status()
        b_done = time.perf_counter() - b_started
        while True:  # A's drain
            run = (await http.get(f"/v1/runs/{ids[-1]}", headers=a)).json()
            if run["status"] in ("completed", "failed"):
                break
            await asyncio.sleep(0.2)
        return {"a_submit_s": submitted, "b_post_to_done_s": b_done,
                "a_drain_s": time.perf_counter() - started}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=300)
    parser.add_argument("--a-cap", type=int, default=10)
    parser.add_argument("--worker-concurrency", type=int, default=20)
    args = parser.parse_args()
    with stack_up(worker_concurrency=args.worker_concurrency, keep_logs=False) as stack:
        stack.run_cli("tenants", "update", "bench",
                      "--max-concurrent-runs", str(args.a_cap or 100_000))
        b_key = stack.run_cli("keys", "create", "--tenant", "fairness-b").strip()
        result = asyncio.run(measure(stack.base_url, stack.api_key, b_key, args.burst))
    print(f"A: {args.burst} runs (cap {args.a_cap or 'none'}) submitted in "
          f"{result['a_submit_s']:.2f} s, drained in {result['a_drain_s']:.2f} s; "
          f"B's run: POST -> done in {result['b_post_to_done_s']:.2f} s "
          f"(worker concurrency {args.worker_concurrency})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
