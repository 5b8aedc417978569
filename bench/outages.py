"""Outages: runs survive Redis restarted empty and the database stopped.

    python bench/outages.py --runs 100 --redis-restarts 3 --db-stops 1

Starts its own redis-server (no persistence: every restart is empty) and, where `initdb` is
available, its own PostgreSQL cluster (else SQLite, whose outage cannot be simulated: then the
database stop is skipped), then the bench stack (`runrelay api`, a worker) on them. It submits
`--runs` runs of `chaos-analyst` at once, follows each over SSE (reconnecting with
Last-Event-ID, waiting out 503s), and meanwhile kills Redis (SIGKILL) and starts it again empty
`--redis-restarts` times, and stops the database (`pg_ctl -m immediate`) for `--db-down` seconds
`--db-stops` times. Prints: completed / lost runs, tool calls run more than once, 5xx answers
(503 counted apart from other 5xx), and recovery time (from a store's return to the first 200
of `GET /v1/runs`). Exit status: 0 pass (all completed, no tool call twice, no 5xx but 503),
2 a check failed, 1 the bench could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from bench_stack import BENCH_DIR, BenchError, Stack, stack_up

sys.path.insert(0, str(BENCH_DIR.parent))
from tests.recovery.outage import PostgresServer, RedisServer

AGENT = "chaos-analyst"
LOG_ENV = "RUNRELAY_CHAOS_TOOL_LOG"


class Tally:
    def __init__(self) -> None:
        self.statuses: Counter[int] = Counter()


async def create(http: httpx.AsyncClient, n: int, tally: Tally) -> str | None:
    for _ in range(200):
        try:
            response = await http.post("/v1/runs", json={"agent": AGENT, "message": f"run {n}"})
        except httpx.HTTPError:
            await asyncio.sleep(0.5)
            continue
        tally.statuses[response.status_code] += 1
        if response.status_code < 300:
            return str(response.json()["id"])
        await asyncio.sleep(0.5)
    return None


async def follow(http: httpx.AsyncClient, run_id: str, tally: Tally, deadline: float) -> list[Any]:
    events: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        headers = {"Last-Event-ID": str(events[-1]["seq"])} if events else {}
        try:
            async with http.stream("GET", f"/v1/runs/{run_id}/events", headers=headers) as resp:
                tally.statuses[resp.status_code] += 1
                if resp.status_code != 200:
                    await asyncio.sleep(0.5)
                    continue
                async for line in resp.aiter_lines():
                    if line.startswith("data:"):
                        events.append(json.loads(line[5:]))
                        if events[-1]["type"] == "done":
                            return events
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.5)
    return events


async def recovered_after(http: httpx.AsyncClient, since: float) -> float:
    while True:
        try:
            if (await http.get("/v1/runs", params={"limit": 1})).status_code == 200:
                return time.monotonic() - since
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.1)


async def chaos(http: httpx.AsyncClient, redis: RedisServer, pg: PostgresServer | None,
                args: argparse.Namespace) -> list[dict[str, Any]]:
    outages: list[dict[str, Any]] = []
    plan = ["redis"] * args.redis_restarts + (["db"] * args.db_stops if pg else [])
    # The database outage between the Redis ones.
    if "db" in plan:
        plan.remove("db")
        plan.insert(min(1, len(plan)), "db")
    for store in plan:
        await asyncio.sleep(args.between)
        if store == "redis":
            redis.kill()
            await asyncio.sleep(args.redis_down)
            await asyncio.to_thread(redis.start)
        else:
            assert pg is not None
            await asyncio.to_thread(pg.stop)
            await asyncio.sleep(args.db_down)
            await asyncio.to_thread(pg.start)
        back = time.monotonic()
        outages.append({"store": store, "recovery_s": round(await recovered_after(http, back), 2)})
    return outages


async def scenario(stack: Stack, redis: RedisServer, pg: PostgresServer | None,
                   args: argparse.Namespace) -> dict[str, Any]:
    tally = Tally()
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    limits = httpx.Limits(max_connections=args.runs + 20)
    async with httpx.AsyncClient(base_url=stack.base_url, headers=headers, timeout=60,
                                 limits=limits) as http:
        run_ids = [r for r in await asyncio.gather(*(create(http, n, tally)
                                                     for n in range(args.runs))) if r]
        deadline = time.monotonic() + args.timeout
        follows = asyncio.gather(*(follow(http, r, tally, deadline) for r in run_ids))
        outages = await chaos(http, redis, pg, args)
        logs = await follows
    return {"run_ids": run_ids, "logs": logs, "outages": outages, "statuses": tally.statuses}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--redis-restarts", type=int, default=3)
    parser.add_argument("--redis-down", type=float, default=3.0)
    parser.add_argument("--db-stops", type=int, default=1)
    parser.add_argument("--db-down", type=float, default=10.0)
    parser.add_argument("--between", type=float, default=4.0)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--keep-logs", action="store_true", help="keep the stack's logs")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="runrelay-outages-"))
    tool_log = tmp / "tools.log"
    tool_log.touch()
    redis = RedisServer(tmp)
    redis.start()
    pg = PostgresServer() if shutil.which("initdb") else None
    try:
        os.environ["REDIS_URL"] = redis.url
        if pg is not None:
            pg.init()
            pg.start()
            os.environ["DATABASE_URL"] = pg.url
        else:
            os.environ.pop("DATABASE_URL", None)
        env = {"RUNRELAY_RUN_LEASE_TTL_S": "5", "RUNRELAY_SWEEP_INTERVAL_S": "1",
               "RUNRELAY_STUCK_QUEUED_S": "20", "PYTHONPATH": str(BENCH_DIR),
               LOG_ENV: str(tool_log)}
        with stack_up(worker_concurrency=args.runs, keep_logs=args.keep_logs, env=env) as stack:
            result = asyncio.run(scenario(stack, redis, pg, args))
            stack.check_alive()
    except BenchError as exc:
        print(f"outages: {exc}", file=sys.stderr)
        return 1
    finally:
        redis.kill()
        if pg is not None:
            try:
                pg.stop()
            finally:
                shutil.rmtree(pg.data.parent, ignore_errors=True)
    lines = tool_log.read_text().splitlines()
    calls: Counter[tuple[str, str]] = Counter(tuple(line.split(" ")[:2]) for line in lines)
    logs = result["logs"]
    completed = sum(1 for e in logs if e and e[-1]["type"] == "done"
                    and e[-1].get("status") == "completed")
    statuses: Counter[int] = result["statuses"]
    summary = {
        "runs": args.runs, "accepted": len(result["run_ids"]), "completed": completed,
        "lost": args.runs - completed,
        # Runs whose log ends otherwise: `done` with another status (its error code), or no `done`.
        "not_completed": dict(Counter(
            (f"{e[-1].get('status')}: {(e[-1].get('error') or {}).get('code')}"
             if e and e[-1]["type"] == "done" else "no done")
            for e in logs if not (e and e[-1]["type"] == "done"
                                  and e[-1].get("status") == "completed"))),
        "tool_calls": len(calls),
        "tool_calls_run_more_than_once": sum(c > 1 for c in calls.values()),
        "http_503": statuses[503],
        "http_5xx_other": sum(n for s, n in statuses.items() if s >= 500 and s != 503),
        "outages": result["outages"],
        "database": "postgresql (own pg_ctl cluster)" if pg else "sqlite (no database outage)",
    }
    print(json.dumps(summary, indent=2))
    ok = (completed == args.runs and summary["tool_calls_run_more_than_once"] == 0
          and summary["http_5xx_other"] == 0)
    print("PASS" if ok else "FAIL")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
