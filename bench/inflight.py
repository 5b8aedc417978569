"""Runs in flight on ONE worker process: how many five-second runs it holds at once, and what
that costs (issue 11, goal 3).

    REDIS_URL=redis://127.0.0.1:6379/0 DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test \
      .venv/bin/python bench/inflight.py --runs 2000 [--concurrency 2000] [--sigterm-runs 500]

The stack is bench_stack.py's (separate processes, a fresh key prefix and schema, all removed at
the end), but the worker starts only once every run is queued: `--runs` runs of
`inflight-analyst` (bench/agents.yaml: 5 text deltas 1 s apart, no tools) are POSTed first, then
ONE `runrelay worker --concurrency N` starts and takes them all at once. Until every run has
ended it samples, every 0.5 s: runs `running` in the database (max in flight), the worker's RSS
and its TCP connections to Redis (broker + runtime pool; psutil, i.e. what CLIENT LIST shows for
that process). Then, from the database and the worker's log: median run duration (started_at to
finished_at), failures, redelivered runs (`attempts` > 1: a lease lapsed and the sweeper sent
the run again, or its task was delivered twice), refused lease renewals.

Then the (idle) worker gets SIGTERM. SIGTERM phase: with no worker up, `--sigterm-runs` more runs
are queued; a second worker takes them all and, once they all run, gets SIGTERM, with
`RUNRELAY_SHUTDOWN_GRACE_S` = `--grace` (2 s: shorter than a run, so every one of them takes the
hand-back path). Reported: SIGTERM-to-exit time (goal: within the grace period; the hand-back
begins 1.5 s plus 2 ms per run held before it ends, so with 2 s and 500 runs at once; the exit
watchdog fires 15 s after the hand-back if the process is still up), then a third worker resumes
the handed-back runs, and all of them must complete.

Machine caveat: figures are from whatever machine runs it (the JSON records nproc, load average
and the CPU model). On the 2-core development machine, shared with other engineers' benches, one
worker process is one core at most (the asyncio loop is one thread): if `max_in_flight` reaches
`--runs` but the median duration is far above 5 s, the process is CPU-bound, and more worker
processes with a smaller `--concurrency` each are the answer (README "Running in production").
The table goes to stdout and the JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import secrets
import signal
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil
from bench_stack import BENCH_DIR, BenchError, Stack, backends, log_findings, stack_up
from sqlalchemy import Engine, bindparam, create_engine, text
from throughput import machine

from runrelay.server.settings import Settings

# The agents (bench/agents.yaml) and the seconds of work in each of their runs.
AGENTS = {"inflight-analyst": 5.0, "inflight-holder": 150.0}
POST_CONCURRENCY = 32
_IDS = bindparam("ids", expanding=True)


def _engine(stack: Stack) -> Engine:
    return create_engine(Settings(database_url=stack.database_url).database_url)


def _runs_table(stack: Stack) -> str:
    return f'"{stack.schema}".runs' if stack.schema else "runs"


async def post_runs(stack: Stack, count: int, agent: str) -> list[str]:
    body = {"agent": agent, "message": "hold on"}
    ids: list[str] = []
    limits = httpx.Limits(max_connections=POST_CONCURRENCY)
    async with httpx.AsyncClient(base_url=stack.base_url, limits=limits, timeout=60,
                                 headers={"Authorization": f"Bearer {stack.api_key}"}) as http:
        gate = asyncio.Semaphore(POST_CONCURRENCY)

        async def one() -> None:
            # Idempotent, so a POST retried after a dropped keep-alive connection is one run.
            headers = {"Idempotency-Key": secrets.token_hex(8)}
            async with gate:
                for attempt in range(3):
                    try:
                        created = await http.post("/v1/runs", json=body, headers=headers)
                        break
                    except httpx.TransportError:
                        if attempt == 2:
                            raise
            if created.status_code != 202:
                raise BenchError(f"POST /v1/runs: {created.status_code} {created.text[:200]}")
            ids.append(created.json()["id"])

        await asyncio.gather(*(one() for _ in range(count)))
    return ids


class Watch:
    """What the bench samples while runs are in flight."""

    def __init__(self, stack: Stack, engine: Engine) -> None:
        self.stack = stack
        self.engine = engine
        self.redis_port = urlsplit(stack.redis_url).port or 6379
        self.max_in_flight = 0
        self.peak_rss_mb = 0.0
        self.peak_redis_connections = 0
        self.worker_cpu_s = 0.0

    def statuses(self, ids: list[str]) -> dict[str, int]:
        query = text(f"SELECT status, count(*) FROM {_runs_table(self.stack)} "
                     "WHERE id IN :ids GROUP BY status").bindparams(_IDS)
        with self.engine.connect() as conn:
            rows = conn.execute(query, {"ids": ids}).all()
        return {str(status): int(n) for status, n in rows}

    def sample(self, worker: str, ids: list[str]) -> dict[str, int]:
        counts = self.statuses(ids)
        self.max_in_flight = max(self.max_in_flight, counts.get("running", 0))
        proc = self.stack.procs.get(worker)
        if proc is not None and proc.poll() is None:
            try:
                ps = psutil.Process(proc.pid)
                self.peak_rss_mb = max(self.peak_rss_mb, ps.memory_info().rss / 2**20)
                cpu = ps.cpu_times()
                self.worker_cpu_s = cpu.user + cpu.system
                redis_conns = [c for c in ps.net_connections("tcp")
                               if c.raddr and c.raddr.port == self.redis_port]
                self.peak_redis_connections = max(self.peak_redis_connections, len(redis_conns))
            except psutil.Error:
                pass
        return counts

    def until(self, worker: str, ids: list[str], done: Any, timeout_s: float) -> dict[str, int]:
        deadline = time.monotonic() + timeout_s
        while True:
            self.stack.check_alive()
            counts = self.sample(worker, ids)
            if done(counts):
                return counts
            if time.monotonic() > deadline:
                raise BenchError(f"timed out after {timeout_s:g} s at {counts}; see "
                                 f"{self.stack.tmp}")
            time.sleep(0.5)


def _ended(total: int) -> Any:
    terminal = ("completed", "failed", "cancelled", "expired")
    return lambda counts: sum(counts.get(s, 0) for s in terminal) >= total


def outcomes(stack: Stack, engine: Engine, ids: list[str]) -> dict[str, Any]:
    table = _runs_table(stack)
    with engine.connect() as conn:
        rows = conn.execute(text(f"SELECT id, status, attempts, started_at, finished_at, error "
                                 f"FROM {table} WHERE id IN :ids").bindparams(_IDS),
                            {"ids": ids}).all()
    durations = [(r.finished_at - r.started_at).total_seconds() for r in rows
                 if r.started_at and r.finished_at]
    errors: dict[str, int] = {}
    for r in rows:
        if r.status != "completed":
            code = (r.error or {}).get("code", r.status) if isinstance(r.error, dict) else r.status
            errors[str(code)] = errors.get(str(code), 0) + 1
    return {
        "runs": len(rows),
        "completed": sum(r.status == "completed" for r in rows),
        "failures": sum(r.status != "completed" for r in rows),
        "failures_by_code": errors,
        "redelivered_runs": sum(r.attempts > 1 for r in rows),
        "duration_s": {"p50": statistics.median(durations) if durations else None,
                       "p90": statistics.quantiles(durations, n=10)[-1]
                       if len(durations) > 1 else None,
                       "max": max(durations, default=None)},
    }


def log_counts(stack: Stack, name: str) -> dict[str, int]:
    text_ = stack.log(name).read_text(errors="replace")
    patterns = {"lease_renewals_refused": r"lease renewal refused",
                "renewal_redis_errors": r"renewals: Redis error",
                "sweeper_requeues": r"enqueued again",
                "no_connection_available": r"No connection available",
                "handed_back": r"handed back, to be resumed",
                "exit_watchdog": r"still not stopped"}
    return {k: len(re.findall(p, text_, flags=re.IGNORECASE)) for k, p in patterns.items()}


def spawn_worker(stack: Stack, name: str, concurrency: int) -> None:
    stack.spawn(name, "worker", "--concurrency", str(concurrency),
                "--hostname", f"{name}-{stack.prefix.strip(':')}@%h")


def stop_worker(stack: Stack, name: str, timeout_s: float) -> float | None:
    """SIGTERM the worker; seconds until it exited (None: still up after `timeout_s`, killed)."""
    proc = stack.procs.pop(name)  # an exited worker is not a failure of the stack
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None
    return time.monotonic() - sent


def sigterm_phase(stack: Stack, engine: Engine, args: argparse.Namespace) -> dict[str, Any]:
    """With no worker up, queue more runs; a fresh worker takes them all; once they all run it
    gets SIGTERM (time to exit measured); a third worker finishes the runs it handed back."""
    ids = asyncio.run(post_runs(stack, args.sigterm_runs, args.agent))
    watch = Watch(stack, engine)
    spawn_worker(stack, "worker2", args.concurrency)
    peak = 0

    def at_peak(counts: dict[str, int]) -> bool:
        """All started, or fewer running than at the last sample: as many as it will hold."""
        nonlocal peak
        running = counts.get("running", 0)
        started = len(ids) - counts.get("queued", 0)
        past = running < peak
        peak = max(peak, running)
        return started >= len(ids) or (past and peak > 0)

    at_sigterm = watch.until("worker2", ids, at_peak, args.timeout)
    exit_s = stop_worker(stack, "worker2", args.grace + 60)
    spawn_worker(stack, "worker3", args.concurrency)
    watch.until("worker3", ids, _ended(len(ids)), args.timeout)
    return {"runs": len(ids), "running_at_sigterm": at_sigterm.get("running", 0),
            "grace_s": args.grace, "sigterm_to_exit_s": exit_s,
            "outcomes": outcomes(stack, engine, ids),
            "stopped_worker_log": log_counts(stack, "worker2"),
            "third_worker_log": log_counts(stack, "worker3")}


def run(args: argparse.Namespace) -> dict[str, Any]:
    started_at = datetime.now(UTC)
    report: dict[str, Any] = {"started_at": started_at.isoformat(), "machine": machine()}
    env = {"RUNRELAY_SHUTDOWN_GRACE_S": str(args.grace),
           "RUNRELAY_WORKER_CONCURRENCY": str(args.concurrency)}
    with stack_up(worker_concurrency=args.concurrency, keep_logs=args.keep_logs, workers=0,
                  env=env) as stack:
        report["backends"], _ = backends(stack)
        engine = _engine(stack)
        try:
            t0 = time.monotonic()
            ids = asyncio.run(post_runs(stack, args.runs, args.agent))
            report["queue_s"] = round(time.monotonic() - t0, 1)
            watch = Watch(stack, engine)
            t0 = time.monotonic()
            spawn_worker(stack, "worker", args.concurrency)
            watch.until("worker", ids, _ended(len(ids)), args.timeout)
            report["all_ended_s"] = round(time.monotonic() - t0, 1)
            idle_exit_s = stop_worker(stack, "worker", args.grace + 60)
            report["in_flight"] = {
                "max_in_flight": watch.max_in_flight, "peak_worker_rss_mb": round(
                    watch.peak_rss_mb, 1),
                "peak_worker_redis_connections": watch.peak_redis_connections,
                "worker_cpu_ms_per_run": round(watch.worker_cpu_s * 1000 / len(ids), 1),
                "work_s": AGENTS[args.agent],
                **outcomes(stack, engine, ids), "worker_log": log_counts(stack, "worker"),
                "idle_sigterm_to_exit_s": idle_exit_s}
            print_table(report)
            if args.sigterm_runs:
                try:
                    report["sigterm"] = sigterm_phase(stack, engine, args)
                except BenchError as exc:
                    report["sigterm_error"] = str(exc)
        finally:
            engine.dispose()
        stack.stop_processes()
        report["logs"] = log_findings(stack)
        report["cleanup"] = stack.delete_data()
        flight = report["in_flight"]
        stack.keep_tmp = bool(flight["failures"] or flight["redelivered_runs"]
                              or flight["worker_log"]["lease_renewals_refused"])
        report["log_dir"] = str(stack.tmp) if args.keep_logs or stack.keep_tmp else None
    report["settings"] = {"runs": args.runs, "concurrency": args.concurrency, "agent": args.agent,
                          "sigterm_runs": args.sigterm_runs, "grace_s": args.grace}
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"inflight-{started_at:%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print()
    print_table(report)
    print(f"\nJSON: {path}")
    return report


def print_table(report: dict[str, Any]) -> None:
    flight = report["in_flight"]
    rows = [("runs (one worker)", flight["runs"]),
            ("max in flight", flight["max_in_flight"]),
            (f"median run duration s ({flight['work_s']:g} s of work)",
             flight["duration_s"]["p50"]),
            ("p90 run duration s", flight["duration_s"]["p90"]),
            ("failures", f"{flight['failures']} {flight['failures_by_code'] or ''}"),
            ("redelivered runs (attempts > 1)", flight["redelivered_runs"]),
            ("sweeper re-enqueues", flight["worker_log"]["sweeper_requeues"]),
            ("lease renewals refused", flight["worker_log"]["lease_renewals_refused"]),
            ("'No connection available'", flight["worker_log"]["no_connection_available"]),
            ("peak worker RSS MB", flight["peak_worker_rss_mb"]),
            ("worker CPU ms per run (start-up included)", flight["worker_cpu_ms_per_run"]),
            ("peak worker Redis connections", flight["peak_worker_redis_connections"]),
            ("worker start → all ended s", report["all_ended_s"]),
            ("SIGTERM → exit s (idle worker)", flight["idle_sigterm_to_exit_s"])]
    if "sigterm_error" in report:
        rows.append(("SIGTERM phase failed", report["sigterm_error"]))
    if "sigterm" in report:
        term = report["sigterm"]
        rows += [(f"SIGTERM → exit s ({term['running_at_sigterm']} running, "
                  f"grace {term['grace_s']:g} s)",
                  term["sigterm_to_exit_s"]),
                 ("handed back, then completed by another worker",
                  f"{term['stopped_worker_log']['handed_back']}, "
                  f"{term['outcomes']['completed']}/{term['runs']}"),
                 ("exit watchdog fired", term["stopped_worker_log"]["exit_watchdog"])]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2000, help="runs queued before the worker")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="the worker's --concurrency (default: --runs)")
    parser.add_argument("--sigterm-runs", type=int, default=500,
                        help="runs in flight when the worker gets SIGTERM (0: skip the phase)")
    parser.add_argument("--agent", choices=sorted(AGENTS), default="inflight-analyst",
                        help="inflight-analyst: 5 s runs; inflight-holder: 150 s runs")
    parser.add_argument("--grace", type=float, default=2.0, help="RUNRELAY_SHUTDOWN_GRACE_S")
    parser.add_argument("--timeout", type=float, default=900.0, help="s to wait for each phase")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temp dir and its logs")
    parser.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args(argv)
    args.concurrency = args.concurrency or args.runs
    if args.runs < 1 or args.concurrency < 1 or args.sigterm_runs < 0:
        parser.error("--runs and --concurrency must be >= 1, --sigterm-runs >= 0")
    if args.sigterm_runs > args.concurrency:
        parser.error("--sigterm-runs must not exceed --concurrency (all must be running)")
    return args


def _raise_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


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
    failed = report["in_flight"]["failures"] + report.get("sigterm", {}).get(
        "outcomes", {}).get("failures", 0)
    return 0 if failed == 0 else 2


if __name__ == "__main__":
    sys.exit(main())
