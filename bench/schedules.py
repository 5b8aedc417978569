"""Schedules and webhooks, measured on a real stack (API, one worker, `runrelay beat`):

1. firing accuracy: `scheduled_for` → the run's creation (its `run_queued`), p50/p99 over
   >= 100 fires of every-second schedules;
2. webhook latency: the run's `finished_at` (`done`) → the receiver has the signed POST;
3. 1,000 schedules due in the same second: how long until every run exists, and lag p50/p99/max.

    python bench/schedules.py [--fires 100] [--burst 1000] [--webhooks 50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_stack import stack_up

AGENT = {"agent": "bench-analyst", "message": "tick"}


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))], 3)


def summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50_s": pct(values, 50),
        "p99_s": pct(values, 99),
        "max_s": round(max(values), 3),
        "mean_s": round(statistics.mean(values), 3),
    }


def when(text: str) -> datetime:
    return datetime.fromisoformat(text)


def runs_of(http: httpx.Client, schedule_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"schedule_id": schedule_id, "limit": 100}
        if cursor:
            params["cursor"] = cursor
        page = http.get("/v1/runs", params=params).json()
        found += page["data"]
        if not page["has_more"]:
            return found
        cursor = page["next_cursor"]


def accuracy(http: httpx.Client, fires: int) -> dict[str, Any]:
    count = 5
    ids = [
        http.post(
            "/v1/schedules", json={**AGENT, "cron": "* * * * * *", "overlap": "enqueue"}
        ).json()["id"]
        for _ in range(count)
    ]
    time.sleep(fires / count + 2)
    for schedule_id in ids:
        http.post(f"/v1/schedules/{schedule_id}/pause")
    lags = [
        (when(r["created_at"]) - when(r["scheduled_for"])).total_seconds()
        for schedule_id in ids
        for r in runs_of(http, schedule_id)
    ]
    return summary(lags)


def webhook_latency(http: httpx.Client, count: int) -> dict[str, Any]:
    received: dict[str, float] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received[json.loads(body)["data"]["run"]["id"]] = time.time()
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        run_ids = [
            http.post("/v1/runs", json={**AGENT, "webhook": url}).json()["id"] for _ in range(count)
        ]
        deadline = time.monotonic() + 120
        while len(received) < count and time.monotonic() < deadline:
            time.sleep(0.2)
        lags = []
        for run_id in run_ids:
            run = http.get(f"/v1/runs/{run_id}").json()
            if run_id in received and run["finished_at"]:
                lags.append(received[run_id] - when(run["finished_at"]).timestamp())
        return {**summary(lags), "delivered": len(received), "sent": count}
    finally:
        server.shutdown()
        server.server_close()


def burst(http: httpx.Client, count: int) -> dict[str, Any]:
    target = (datetime.now(UTC) + timedelta(seconds=40 + count / 50)).replace(microsecond=0)
    cron = f"{target.second} {target.minute} {target.hour} * * *"
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        ids = list(
            pool.map(
                lambda _: http.post("/v1/schedules", json={**AGENT, "cron": cron}).json()["id"],
                range(count),
            )
        )
    created_s = time.monotonic() - started
    if datetime.now(UTC) >= target:
        return {"error": f"creating {count} schedules took {created_s:.0f} s, past the tick"}
    time.sleep(max(0.0, (target - datetime.now(UTC)).total_seconds()))
    deadline = time.monotonic() + 300
    statuses: dict[str, int] = {}
    while time.monotonic() < deadline:
        time.sleep(2)
        with ThreadPoolExecutor(8) as pool:
            shown = list(pool.map(lambda i: http.get(f"/v1/schedules/{i}").json(), ids))
        statuses = {}
        for s in shown:
            statuses[str(s["last_status"])] = statuses.get(str(s["last_status"]), 0) + 1
        if "None" not in statuses:
            break
    with ThreadPoolExecutor(8) as pool:
        runs = [r for rs in pool.map(lambda i: runs_of(http, i), ids) for r in rs]
    lags = [(when(r["created_at"]) - when(r["scheduled_for"])).total_seconds() for r in runs]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: http.delete(f"/v1/schedules/{i}").status_code, ids))
    return {
        "schedules": count,
        "create_s": round(created_s, 1),
        "runs_made": len(runs),
        "last_status": statuses,
        "lag": summary(lags),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fires", type=int, default=100)
    parser.add_argument("--webhooks", type=int, default=50)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args()
    env = {
        "RUNRELAY_SCHEDULE_ALLOW_SECONDS": "true",
        "RUNRELAY_WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",
    }
    with stack_up(worker_concurrency=100, keep_logs=args.keep_logs, env=env) as stack:
        stack.spawn("beat", "beat")
        headers = {"Authorization": f"Bearer {stack.api_key}"}
        with httpx.Client(base_url=stack.base_url, headers=headers, timeout=60) as http:
            for name, part in [
                ("firing_accuracy", lambda: accuracy(http, args.fires)),
                ("webhook_latency_after_done", lambda: webhook_latency(http, args.webhooks)),
                ("same_second_burst", lambda: burst(http, args.burst)),
            ]:
                print(json.dumps({name: part()}, indent=2), flush=True)


if __name__ == "__main__":
    main()
