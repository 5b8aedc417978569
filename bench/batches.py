"""Batches: ingest rate of a 100,000-line upload, the API's RSS while it ingests and while a
100,000-line file is downloaded, and batch throughput against the same runs POSTed one by one.

    python bench/batches.py [--lines 100000] [--run-lines 1000] [--cap 50]

On the bench stack of bench/throughput.py (separate `runrelay api` and `runrelay worker`
processes; REDIS_URL / DATABASE_URL or embedded Redis + SQLite), tenant `bench` with
`--cap` concurrent runs, the zero-latency bench agent.

1. Ingest: a `--lines` JSONL file is streamed to `POST /v1/batches`; lines/s from the first
   byte sent to the 202. The API's RSS is sampled every 20 ms meanwhile (psutil). The batch is
   then cancelled, which ends its 100,000 lines at once, and its errors file (one JSON line per
   line) is downloaded while RSS is sampled again.
2. Throughput: `--run-lines` runs as one batch (POST → `completed`), then the same runs POSTed
   one by one back to back (first POST → the last run ended), under the same cap.
Results go to stdout and bench/results/batches-<ts>.json.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
from bench_stack import BENCH_DIR, stack_up

AGENT = "bench-analyst"
MB = 1024 * 1024


class RssSampler:
    """Peak and first RSS of a process, sampled in a thread."""

    def __init__(self, pid: int, every_s: float = 0.02) -> None:
        self.process = psutil.Process(pid)
        self.every_s = every_s
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.process.memory_info().rss)
            self._stop.wait(self.every_s)

    def __enter__(self) -> RssSampler:
        self.samples.append(self.process.memory_info().rss)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def report(self) -> dict[str, float]:
        before, peak = self.samples[0], max(self.samples)
        return {
            "rss_before_mb": before / MB,
            "rss_peak_mb": peak / MB,
            "rss_growth_mb": (peak - before) / MB,
        }


def write_file(path: Path, lines: int) -> int:
    with path.open("w") as out:
        for i in range(lines):
            line = {"custom_id": f"line-{i}", "input": {"company": f"Company {i}"}}
            out.write(json.dumps(line) + "\n")
    return path.stat().st_size


def file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as source:
        while chunk := source.read(256 * 1024):
            yield chunk


def wait_ended(http: httpx.Client, batch_id: str, timeout_s: float = 3600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        batch = http.get(f"/v1/batches/{batch_id}").json()
        if batch["status"] in ("completed", "cancelled", "expired", "failed"):
            return batch
        if time.monotonic() > deadline:
            raise RuntimeError(f"batch {batch_id} still {batch['status']}")
        time.sleep(0.1)


def ingest(http: httpx.Client, api_pid: int, path: Path, lines: int) -> dict[str, Any]:
    with RssSampler(api_pid) as rss:
        started = time.perf_counter()
        response = http.post(
            "/v1/batches",
            content=file_chunks(path),
            params={"agent": AGENT},
            headers={"Content-Type": "application/jsonl"},
            timeout=httpx.Timeout(60, read=1800, write=1800),
        )
        elapsed = time.perf_counter() - started
    response.raise_for_status()
    batch = response.json()
    assert batch["request_counts"]["total"] == lines, batch
    return {
        "batch_id": batch["id"],
        "lines": lines,
        "bytes": path.stat().st_size,
        "seconds": elapsed,
        "lines_per_s": lines / elapsed,
        **rss.report(),
    }


def download(http: httpx.Client, api_pid: int, batch_id: str) -> dict[str, Any]:
    http.post(f"/v1/batches/{batch_id}/cancel").raise_for_status()
    final = wait_ended(http, batch_id)
    rows = size = 0
    with RssSampler(api_pid) as rss:
        started = time.perf_counter()
        with http.stream("GET", f"/v1/batches/{batch_id}/errors", timeout=600) as response:
            for line in response.iter_lines():
                rows += 1
                size += len(line) + 1
        elapsed = time.perf_counter() - started
    return {
        "status": final["status"],
        "rows": rows,
        "bytes": size,
        "seconds": elapsed,
        "rows_per_s": rows / elapsed,
        **rss.report(),
    }


def as_batch(http: httpx.Client, n: int) -> dict[str, Any]:
    lines = [{"custom_id": f"t-{i}", "input": {"company": f"Co {i}"}} for i in range(n)]
    body = "".join(json.dumps(line) + "\n" for line in lines)
    started = time.perf_counter()
    response = http.post(
        "/v1/batches",
        content=body,
        params={"agent": AGENT},
        headers={"Content-Type": "application/jsonl"},
    )
    response.raise_for_status()
    final = wait_ended(http, response.json()["id"])
    elapsed = time.perf_counter() - started
    assert final["request_counts"]["completed"] == n, final["request_counts"]
    return {"runs": n, "seconds": elapsed, "runs_per_s": n / elapsed}


def one_by_one(http: httpx.Client, n: int) -> dict[str, Any]:
    started = time.perf_counter()
    ids = []
    for i in range(n):
        response = http.post("/v1/runs", json={"agent": AGENT, "input": {"company": f"Co {i}"}})
        response.raise_for_status()
        ids.append(response.json()["id"])
    posted = time.perf_counter() - started
    pending = list(ids)
    while pending:  # newest last: once it ended, check the rest from the end
        run = http.get(f"/v1/runs/{pending[-1]}").json()
        if run["status"] in ("completed", "failed", "cancelled", "expired"):
            assert run["status"] == "completed", run
            pending.pop()
        else:
            time.sleep(0.05)
    elapsed = time.perf_counter() - started
    return {"runs": n, "seconds": elapsed, "runs_per_s": n / elapsed, "posting_s": posted}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--run-lines", type=int, default=1000)
    parser.add_argument("--cap", type=int, default=50, help="the tenant's max_concurrent_runs")
    parser.add_argument("--worker-concurrency", type=int, default=100)
    args = parser.parse_args()
    report: dict[str, Any] = {"args": vars(args)}
    with stack_up(worker_concurrency=args.worker_concurrency, keep_logs=False) as stack:
        stack.run_cli("tenants", "update", "bench", "--max-concurrent-runs", str(args.cap))
        api_pid = stack.procs["api"].pid
        headers = {"Authorization": f"Bearer {stack.api_key}"}
        with httpx.Client(base_url=stack.base_url, headers=headers, timeout=60) as http:
            path = stack.tmp / "batch.jsonl"
            write_file(path, args.lines)
            report["ingest"] = ingest(http, api_pid, path, args.lines)
            print("ingest", json.dumps(report["ingest"]), flush=True)
            report["download"] = download(http, api_pid, report["ingest"]["batch_id"])
            print("download", json.dumps(report["download"]), flush=True)
            report["batch"] = as_batch(http, args.run_lines)
            print("batch", json.dumps(report["batch"]), flush=True)
            report["one_by_one"] = one_by_one(http, args.run_lines)
            print("one_by_one", json.dumps(report["one_by_one"]), flush=True)
    out = BENCH_DIR / "results" / f"batches-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
