"""Approvals at volume: many runs paused at once on a worker with few threads, then approved.

    python bench/approvals.py [--runs 200] [--worker-concurrency 4]

The bench stack of bench/throughput.py (separate `runrelay api` and `runrelay worker`
processes; REDIS_URL / DATABASE_URL or embedded Redis + SQLite). Each run of `bench-approver`
calls `send_payment` (approval required) at once. It reports how long until every run is
`requires_action` — with `--worker-concurrency` far below `--runs`, which only works because a
paused run holds no worker thread — then approves them all and reports decision → `done`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any

import httpx
from bench_stack import stack_up

BODY = {"agent": "bench-approver", "message": "Pay ACME"}


async def wait_all(http: httpx.AsyncClient, ids: list[str], status: str) -> dict[str, float]:
    """Poll until every run has `status`; when each was first seen so."""
    seen: dict[str, float] = {}
    while len(seen) < len(ids):
        for run_id in ids:
            if run_id in seen:
                continue
            run = (await http.get(f"/v1/runs/{run_id}")).json()
            if run["status"] == status:
                seen[run_id] = time.perf_counter()
            elif run["status"] in ("failed", "cancelled", "expired"):
                raise SystemExit(f"run {run_id} ended {run['status']}: {run.get('error')}")
        await asyncio.sleep(0.02)
    return seen


async def one_at_a_time(http: httpx.AsyncClient) -> float:
    """One run, nothing else going on: approve it, then ms until it is `completed`."""
    run_id = str((await http.post("/v1/runs", json=BODY)).json()["id"])
    await wait_all(http, [run_id], "requires_action")
    run = (await http.get(f"/v1/runs/{run_id}")).json()
    call_id = run["required_action"]["tool_calls"][0]["tool_call_id"]
    decided = time.perf_counter()
    await http.post(f"/v1/runs/{run_id}/approvals", json={"call_id": call_id, "approved": True})
    done = await wait_all(http, [run_id], "completed")
    return (done[run_id] - decided) * 1000


async def measure(base_url: str, key: str, runs: int) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base_url, timeout=60,
                                 headers={"Authorization": f"Bearer {key}"},
                                 limits=httpx.Limits(max_connections=20)) as http:
        gate = asyncio.Semaphore(20)

        async def create() -> str:
            async with gate:
                response = await http.post("/v1/runs", json=BODY)
                response.raise_for_status()
                return str(response.json()["id"])

        started = time.perf_counter()
        ids = list(await asyncio.gather(*(create() for _ in range(runs))))
        paused_at = await wait_all(http, ids, "requires_action")
        all_paused_s = max(paused_at.values()) - started

        decided: dict[str, float] = {}

        async def approve(run_id: str) -> None:
            run = (await http.get(f"/v1/runs/{run_id}")).json()
            call_id = run["required_action"]["tool_calls"][0]["tool_call_id"]
            async with gate:
                decided[run_id] = time.perf_counter()
                response = await http.post(f"/v1/runs/{run_id}/approvals",
                                           json={"call_id": call_id, "approved": True})
                response.raise_for_status()

        approving = time.perf_counter()
        await asyncio.gather(*(approve(run_id) for run_id in ids))
        done_at = await wait_all(http, ids, "completed")
        to_done = sorted((done_at[r] - decided[r]) * 1000 for r in ids)
        single = sorted([await one_at_a_time(http) for _ in range(20)])
        return {
            "single_decision_to_done_ms_p50": statistics.median(single),
            "single_decision_to_done_ms_max": single[-1],
            "all_paused_s": all_paused_s,
            "approve_all_to_all_done_s": max(done_at.values()) - approving,
            "decision_to_done_ms_p50": statistics.median(to_done),
            "decision_to_done_ms_p95": to_done[int(len(to_done) * 0.95) - 1],
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--worker-concurrency", type=int, default=4)
    args = parser.parse_args()
    with stack_up(worker_concurrency=args.worker_concurrency, keep_logs=False) as stack:
        result = asyncio.run(measure(stack.base_url, stack.api_key, args.runs))
    print(f"{args.runs} runs paused for approval on a worker with {args.worker_concurrency} "
          f"threads: all requires_action after {result['all_paused_s']:.2f} s; approving all "
          f"→ all completed in {result['approve_all_to_all_done_s']:.2f} s; decision → completed "
          f"(as polled) p50 {result['decision_to_done_ms_p50']:.0f} ms, "
          f"p95 {result['decision_to_done_ms_p95']:.0f} ms; one run at a time: decision → "
          f"completed p50 {result['single_decision_to_done_ms_p50']:.0f} ms, "
          f"max {result['single_decision_to_done_ms_max']:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
