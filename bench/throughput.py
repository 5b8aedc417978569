"""Throughput and latency of runrelay end to end: shim → Celery → one worker → Redis Stream → SSE.

    python bench/throughput.py --runs 500 --concurrency 50 [--worker-concurrency 100] [--stream]
    python bench/throughput.py --floor 200 ...   # the floor first, back to back, then the ratio
    python bench/throughput.py --runs 1000 --rate 60  # open loop: 60 runs started a second

It starts its own stack as separate processes, like production: Redis from REDIS_URL (else an
embedded redis-server), the database from DATABASE_URL (else a temporary SQLite file), then
`runrelay migrate`, `runrelay keys create`, `runrelay api` and ONE `runrelay worker`. Every Redis
key lives under a fresh RUNRELAY_REDIS_PREFIX and, on PostgreSQL, every table in a fresh schema;
both are deleted at the end, as are the processes (also on Ctrl-C or error).

A closed-loop client keeps `--concurrency` runs in flight; with `--rate R` an open-loop client
starts R runs a second instead (latency at a load the stack can sustain). Per run: t0, POST
/v1/runs (202), then GET /v1/runs/{id}/events until `done`, checking the log is complete.
`--stream` uses POST /v1/runs/stream instead. The table goes to stdout and the JSON to
bench/results/.

It reports CPU per completed run of each server part (API, worker, Redis, and PostgreSQL: every
`postgres` process of the machine, so run it on a quiet one). `--floor N` first runs the stack's
floor (../shared/bench/floor.py: a bare Celery task writing 22 events to a Redis Stream, no HTTP,
no database) and prints runrelay's throughput and POST → done latency as ratios to it: on a shared
machine only ratios taken back to back in one session hold.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Coroutine
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import aiohttp
import httpx
import orjson
from bench_http import CLIENTS, Client, EventSource
from bench_stack import (
    BENCH_DIR,
    BenchError,
    Stack,
    backends,
    cpu_snapshot,
    cpu_used,
    log_findings,
    stack_up,
)

AGENT = "bench-analyst"
EXPECTED_DELTAS = 20
EXPECTED_TOOL_RESULTS = 1
WARMUP_TIMEOUT_S = 120.0

T = TypeVar("T")


# ---------------------------------------------------------------------------- one run


@dataclass
class Sample:
    """One run as the client saw it; times in seconds after t0 (just before the POST)."""

    ok: bool = False
    error: str | None = None
    run_id: str | None = None
    t0: float = 0.0
    response: float | None = None  # 202 (or, with --stream, the response headers)
    first_event: float | None = None
    run_started: float | None = None
    done: float | None = None
    events: int = 0
    worker_duration_ms: int | None = None
    late: bool = False  # open loop: due while `concurrency` runs were in flight, so it waited


def check_log(run_id: str, events: list[dict[str, Any]]) -> str | None:
    """None if the log is complete, else what is wrong with it."""
    seqs = [e.get("seq") for e in events]
    if seqs != list(range(1, len(events) + 1)):
        return f"seqs not 1..{len(events)}: {seqs[:5]}...{seqs[-5:]}"
    types = Counter(e.get("type") for e in events)
    dones = [e for e in events if e.get("type") == "done"]
    if len(dones) != 1 or events[-1].get("type") != "done":
        return f"{len(dones)} done events, last is {events[-1].get('type')!r}"
    if dones[0].get("status") != "completed":
        return f"done status {dones[0].get('status')!r}: {dones[0].get('error')}"
    if types["output_text_delta"] != EXPECTED_DELTAS:
        return f"{types['output_text_delta']} output_text_delta, expected {EXPECTED_DELTAS}"
    if types["tool_call_result"] != EXPECTED_TOOL_RESULTS:
        return f"{types['tool_call_result']} tool_call_result, expected {EXPECTED_TOOL_RESULTS}"
    if any(e.get("run_id") != run_id or "ts" not in e for e in events):
        return "an event has the wrong run_id or no ts"
    return None


async def _follow(source: EventSource, sample: Sample) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    async for sse_id, data in source.events():
        now = time.perf_counter() - sample.t0
        event = orjson.loads(data)
        if sse_id != str(event.get("seq")):
            raise BenchError(f"SSE id {sse_id!r} is not the event's seq {event.get('seq')!r}")
        events.append(event)
        if sample.first_event is None:
            sample.first_event = now
        if event["type"] == "run_started":
            sample.run_started = now
        if event["type"] == "done":
            sample.done = now
            sample.worker_duration_ms = event.get("duration_ms")
            break
    return events


async def one_run(http: Client, stream: bool, timeout_s: float, due: float | None = None) -> Sample:
    """`due`: when the open loop meant to start it (`time.perf_counter`); its latencies count
    from then, so that a start delayed by a full client counts against the server."""
    sample = Sample()
    body = {"agent": AGENT, "input": {"company": "ACME Corp", "query": "Assess credit risk"}}
    try:
        async with asyncio.timeout(timeout_s):
            sample.t0 = time.perf_counter() if due is None else due
            if stream:
                async with http.sse("POST", "/v1/runs/stream", body) as source:
                    sample.response = time.perf_counter() - sample.t0
                    events = await _follow(source, sample)
                    if source.response.status != 200:
                        raise BenchError(f"POST /v1/runs/stream: {source.response.status} "
                                         f"{source.response.text()}")
                    sample.run_id = source.response.headers.get("X-Run-ID")
            else:
                created = await http.post("/v1/runs", body)
                sample.response = time.perf_counter() - sample.t0
                if created.status != 202:
                    raise BenchError(f"POST /v1/runs: {created.status} {created.text()}")
                sample.run_id = json.loads(created.body)["id"]
                async with http.sse("GET", f"/v1/runs/{sample.run_id}/events") as source:
                    events = await _follow(source, sample)
                    if source.response.status != 200:
                        raise BenchError(f"GET events: {source.response.status} "
                                         f"{source.response.text()}")
        sample.events = len(events)
        sample.error = check_log(sample.run_id or "", events) if events else "no events"
    except TimeoutError:
        sample.error = f"no done within {timeout_s:g} s"
    except (httpx.HTTPError, aiohttp.ClientError, BenchError, OSError, ValueError, KeyError) as exc:
        sample.error = f"{type(exc).__name__}: {exc}"
    sample.ok = sample.error is None
    return sample


# ---------------------------------------------------------------------------- measurement


@contextlib.asynccontextmanager
async def _client(stack: Stack, args: argparse.Namespace) -> AsyncIterator[Client]:
    http = CLIENTS[args.client](stack, args.concurrency)
    try:
        yield http
    finally:
        await http.aclose()


async def warm_up(stack: Stack, args: argparse.Namespace) -> None:
    """The worker builds its runtime on its first task: wait until runs reach `done`."""
    async with _client(stack, args) as http:
        samples = await asyncio.gather(*(one_run(http, args.stream, WARMUP_TIMEOUT_S)
                                         for _ in range(args.warmup)))
    failed = [s.error for s in samples if not s.ok]
    if failed:
        stack.check_alive()
        raise BenchError(f"warm-up runs failed: {failed[:3]}; see {stack.tmp}")


async def measure(stack: Stack, args: argparse.Namespace) -> list[Sample]:
    if args.rate:
        return await measure_open(stack, args)
    samples: list[Sample] = []
    todo = iter(range(args.runs))

    async def slot(http: Client) -> None:
        for _ in todo:
            samples.append(await one_run(http, args.stream, args.run_timeout))

    async with _client(stack, args) as http:
        await asyncio.gather(*(slot(http) for _ in range(args.concurrency)))
    return samples


async def measure_open(stack: Stack, args: argparse.Namespace) -> list[Sample]:
    """Open loop: a run is due every 1/`rate` s whatever the earlier ones are doing (as
    independent callers would), up to `concurrency` in flight; a run that finds them all busy
    waits for one and counts as `late` (the server fell behind the offered rate). Latencies
    count from when a run was due."""
    samples: list[Sample] = []
    free = asyncio.Semaphore(args.concurrency)

    async def one(http: Client, due: float, late: bool) -> None:
        try:
            sample = await one_run(http, args.stream, args.run_timeout, due)
            sample.late = late
            samples.append(sample)
        finally:
            free.release()

    async with _client(stack, args) as http, asyncio.TaskGroup() as runs:
        start = time.perf_counter()
        for i in range(args.runs):
            due = start + i / args.rate
            if due > time.perf_counter():
                await asyncio.sleep(due - time.perf_counter())
            late = free.locked()
            await free.acquire()
            runs.create_task(one(http, due, late))
    return samples


# ---------------------------------------------------------------------------- report


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def distribution(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ms = [v * 1000 for v in values]
    return {"n": len(ms), "min_ms": min(ms), "p50_ms": percentile(ms, 50),
            "p90_ms": percentile(ms, 90), "p99_ms": percentile(ms, 99), "max_ms": max(ms),
            "mean_ms": sum(ms) / len(ms)}


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    return {"nproc": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
            "cpu_model": model, "python": platform.python_version(),
            "platform": platform.platform(), "loadavg_at_start": os.getloadavg()}


def summarize(samples: list[Sample]) -> dict[str, Any]:
    ok = [s for s in samples if s.ok]
    wall = 0.0
    if ok:
        wall = max(s.t0 + (s.done or 0) for s in ok) - min(s.t0 for s in samples)
    return {
        "runs": len(samples), "completed": len(ok), "failures": len(samples) - len(ok),
        "failure_reasons": dict(Counter(s.error for s in samples if s.error).most_common(10)),
        "wall_s": wall, "runs_per_s": len(ok) / wall if wall else 0.0,
        "events_per_run": sorted(Counter(s.events for s in ok).items()),
        "latency": {
            "post_to_response": distribution([s.response for s in ok if s.response is not None]),
            "post_to_first_event": distribution(
                [s.first_event for s in ok if s.first_event is not None]),
            "post_to_run_started": distribution(
                [s.run_started for s in ok if s.run_started is not None]),
            "post_to_done": distribution([s.done for s in ok if s.done is not None]),
            "worker_duration": distribution(
                [s.worker_duration_ms / 1000 for s in ok if s.worker_duration_ms is not None]),
        },
    }


def print_table(report: dict[str, Any]) -> None:
    m, r, s = report["machine"], report["results"], report["settings"]
    rds, db = report["backends"]["redis"], report["backends"]["database"]
    load = (f"open loop at {s['rate']:g} runs/s offered (at most {s['concurrency']} in flight; "
            f"{s['late_starts']} late starts)" if s.get("rate")
            else f"client concurrency {s['concurrency']}")
    print(f"\nrunrelay throughput — {report['mode']} mode, {s['runs']} runs, {load} "
          f"({s['client']}), {s['worker_processes']} worker process"
          f"{'es' if s['worker_processes'] > 1 else ''} x {s['worker_concurrency']} threads")
    print(f"machine: {m['nproc']} CPUs ({m['cpu_model']}), Python {m['python']}")
    print(f"redis: {rds['url']} {'(embedded) ' if rds['embedded'] else ''}v{rds['version']}; "
          f"database: {db['dialect']} {db['version']}")
    print(f"\ncompleted {r['completed']}/{r['runs']}, failures {r['failures']}, wall "
          f"{r['wall_s']:.2f} s, {r['runs_per_s']:.1f} runs/s")
    for reason, count in r["failure_reasons"].items():
        print(f"  failure x{count}: {reason}")
    labels = {"post_to_response": "POST → 200 headers" if report["mode"] == "stream"
              else "POST → 202",
              "post_to_first_event": "POST → first event", "post_to_run_started":
              "POST → run_started", "post_to_done": "POST → done",
              "worker_duration": "worker run_started→done"}
    print(f"\n{'latency (ms)':<26}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}")
    for key, label in labels.items():
        d = r["latency"][key]
        if d:
            print(f"{label:<26}{d['p50_ms']:>9.1f}{d['p90_ms']:>9.1f}{d['p99_ms']:>9.1f}"
                  f"{d['max_ms']:>9.1f}")
    cpu = report.get("cpu_s_during_measurement", {})
    if cpu:
        shares = ", ".join(f"{k} {v:.1f} s ({v / r['wall_s'] * 100:.0f}%)" for k, v in cpu.items()
                           if r["wall_s"])
        print(f"\nCPU during measurement (100% = one core of {m['nproc']}): {shares}")
    per_run = report.get("cpu_ms_per_run", {})
    if per_run:
        parts = ", ".join(f"{k} {v:.1f}" for k, v in per_run.items())
        print(f"CPU per completed run (ms): {parts}")
    floor = report.get("floor")
    if floor:
        print(f"\nfloor (same session, just before): {floor['runs_per_s']:.0f} runs/s, sequential "
              f"done p50 {floor['done_p50_ms']:.2f} ms")
        print(f"ratio to the floor: throughput {floor['throughput_ratio']:.3f}x; "
              f"POST → done p50 {floor['done_p50_ratio']:.1f}x the floor's sequential done p50")
        if not s.get("rate"):
            # Little's law: C runs always in flight at X runs/s take C / X s each on average.
            print(f"(a closed loop of {s['concurrency']} in flight takes {s['concurrency']} / "
                  "throughput per run: at the floor's own throughput, "
                  f"{s['concurrency'] / floor['runs_per_s'] * 1000:.0f} ms)")


SERVER_PARTS = ("api", "worker", "redis", "postgres")


def _is_worker(process: str) -> bool:
    return process == "worker" or (process.startswith("worker") and process[6:].isdigit())


def cpu_per_run(cpu: dict[str, float], completed: int) -> dict[str, float]:
    """CPU milliseconds per completed run of each server part, and their sum (`server`)."""
    if not completed:
        return {}
    per_run = {k: cpu[k] * 1000 / completed for k in SERVER_PARTS if k in cpu}
    if "worker" in per_run:  # every worker process's (worker, worker2, ...)
        per_run["worker"] = sum(v for k, v in cpu.items() if _is_worker(k)) * 1000 / completed
    per_run["server"] = sum(per_run.values())
    return per_run


FLOOR_SCRIPT = BENCH_DIR.parent.parent / "shared" / "bench" / "floor.py"


def measure_floor(script: Path, n: int) -> dict[str, Any]:
    """Run the stack's floor (`floor.py both N`) and read its two lines back."""
    if not script.exists():
        raise BenchError(f"no floor script at {script}; pass --floor-script")
    out = subprocess.run([sys.executable, str(script), "both", str(n)], capture_output=True,
                         text=True, timeout=600, check=False)
    seq = re.search(r"done p50 ([\d.]+) ms", out.stdout)
    rate = re.search(r"= ([\d.]+) runs/s", out.stdout)
    if out.returncode != 0 or not seq or not rate:
        raise BenchError(f"floor.py failed ({out.returncode}): {out.stdout[-400:]}"
                         f"{out.stderr[-400:]}")
    return {"script": str(script), "n": n, "runs_per_s": float(rate.group(1)),
            "done_p50_ms": float(seq.group(1)), "output": out.stdout.strip()}


# ---------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=500, help="measured runs")
    parser.add_argument("--concurrency", type=int, default=50,
                        help="runs in flight (client); with --rate, the most in flight")
    parser.add_argument("--rate", type=float, default=0.0, metavar="R",
                        help="open loop: start R runs a second, whatever the earlier ones do, "
                             "instead of keeping --concurrency in flight (a closed loop)")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes (each --worker-concurrency threads)")
    parser.add_argument("--worker-concurrency", type=int, default=100,
                        help="threads of each worker process")
    parser.add_argument("--stream", action="store_true", help="POST /v1/runs/stream instead")
    parser.add_argument("--client", choices=sorted(CLIENTS), default="raw",
                        help="the bench's HTTP client (default raw: HTTP/1.1 parsed by "
                             "httptools, the least client CPU per run, which leaves more of "
                             "the machine to the server)")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured runs first")
    parser.add_argument("--run-timeout", type=float, default=60.0, help="seconds per run")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temp dir and its logs")
    parser.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    parser.add_argument("--floor", type=int, metavar="N", default=0,
                        help="first run the stack's floor (floor.py both N, back to back) and "
                             "print runrelay's ratio to it")
    parser.add_argument("--floor-script", type=Path, default=FLOOR_SCRIPT,
                        help=f"the floor script (default {FLOOR_SCRIPT})")
    args = parser.parse_args(argv)
    if (args.runs < 1 or args.concurrency < 1 or args.worker_concurrency < 1 or args.warmup < 1
            or args.workers < 1):
        parser.error("--runs, --concurrency, --workers, --worker-concurrency and --warmup must be "
                     ">= 1")
    if args.rate < 0:
        parser.error("--rate must be > 0 (runs started a second)")
    return args


def client_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run the bench's client on uvloop, as the API and the worker run (`asyncio` if uvloop is
    not installed): the client shares the machine, and what it burns the server does not get."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def _raise_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    started_at = datetime.now(UTC)
    report: dict[str, Any] = {"started_at": started_at.isoformat(),
                              "mode": "stream" if args.stream else "background",
                              "machine": machine()}
    if args.floor:
        report["floor"] = measure_floor(args.floor_script, args.floor)
    with stack_up(worker_concurrency=args.worker_concurrency, keep_logs=args.keep_logs,
                  workers=args.workers) as stack:
        report["backends"], redis_pid = backends(stack)
        client_loop(warm_up(stack, args))
        before = cpu_snapshot(stack, redis_pid)
        samples = client_loop(measure(stack, args))
        after = cpu_snapshot(stack, redis_pid)
        stack.check_alive()
        stack.stop_processes()
        report["cpu_s_during_measurement"] = cpu_used(before, after)
        report["machine"]["loadavg_at_end"] = os.getloadavg()
        report["logs"] = log_findings(stack)
        report["cleanup"] = stack.delete_data()
        stack.keep_tmp = any(not s.ok for s in samples) or any(
            f["warnings_errors"] for f in report["logs"].values())
        report["log_dir"] = str(stack.tmp) if args.keep_logs or stack.keep_tmp else None
    report["settings"] = {
        "runs": args.runs, "concurrency": args.concurrency, "warmup_runs": args.warmup,
        "rate": args.rate or None,
        "late_starts": sum(sample.late for sample in samples) if args.rate else None,
        "worker_processes": args.workers, "worker_concurrency": args.worker_concurrency,
        "client": args.client, "agent": AGENT, "agents_config": "bench/agents.yaml",
        "run_timeout_s": args.run_timeout,
        "runrelay_env": {k: v for k, v in os.environ.items() if k.startswith("RUNRELAY_")},
        "versions": {p: version(p) for p in ("runrelay", "celery", "kombu", "redis", "uvicorn",
                                             "fastapi", "sse-starlette", "httpx", "aiohttp",
                                             "httptools", "sqlalchemy")},
    }
    report["results"] = summarize(samples)
    report["cpu_ms_per_run"] = cpu_per_run(report["cpu_s_during_measurement"],
                                           report["results"]["completed"])
    floor = report.get("floor")
    if floor:
        done = report["results"]["latency"]["post_to_done"]
        floor["throughput_ratio"] = report["results"]["runs_per_s"] / floor["runs_per_s"]
        floor["done_p50_ratio"] = (done["p50_ms"] / floor["done_p50_ms"]) if done else 0.0
    report["failed_samples"] = [asdict(s) for s in samples if not s.ok][:20]
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"throughput-{started_at:%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print_table(report)
    print(f"\nJSON: {path}")
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        report = run(args)
    except KeyboardInterrupt:
        print("\ninterrupted; processes stopped and bench data deleted", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    return 0 if report["results"]["failures"] == 0 else 2


if __name__ == "__main__":
    sys.exit(main())
