"""Chaos: runs survive worker crashes.

    python bench/chaos.py --runs 200 --workers 2 --kill-every 4

It starts its own stack (bench_stack: Redis, database, `runrelay api`, `--workers` x
`runrelay worker`, all separate processes under a fresh prefix/schema), submits `--runs` runs of
`chaos-analyst` (bench/agents.yaml: the slow demo analyst's pace, 100 ms a chunk, with three tool
calls that record every execution in a file), `--concurrency` at a time, follows each run's SSE
stream from the client side, and meanwhile SIGKILLs a worker every `--kill-every` seconds and
restarts it: by default always the same one (`--victims 1`: "one of them is SIGKILLed every few
seconds"); `--victims N` kills the first N in turn.

Pass criteria, all checked: every run reaches `done` with status `completed` (none lost); every
log is seq 1..n with exactly one `done`, last; the output a client shows once it leaves
superseded deltas out equals `done.output`; every tool call id of every run was executed, its
result is in the log, and none ran again once its result was recorded; the database says
`completed` for every run.

A call whose worker was SIGKILLed after the tool returned but before its result reached Redis
runs again on resume: the at-least-once window the README states. The bench tells the two apart
(the tool logs its pid and the moment it returned; the log shows whether a result was recorded),
reports such re-runs with how long after the tool returned the kill came, and measures that
window for every call (the result event's time minus the tool's return). A re-run after a
recorded result, or without its worker having been killed, fails the bench.

Recovery time = from a kill to the resumed attempt's `run_started`; it is bounded by the lease
TTL + the sweep interval + pick-up. Exit status: 0 pass, 2 some check failed, 1 the bench could
not run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from bench_stack import BENCH_DIR, BenchError, Stack, log_findings, stack_up
from httpx_sse import aconnect_sse

AGENT = "chaos-analyst"
TOOL_CALLS_PER_RUN = 3
LOG_ENV = "RUNRELAY_CHAOS_TOOL_LOG"


async def follow(http: httpx.AsyncClient, run_id: str,
                 deadline: float) -> tuple[list[dict[str, Any]], int]:
    """All events of a run as a client sees them, reconnecting with Last-Event-ID if dropped."""
    events: list[dict[str, Any]] = []
    reconnects = 0
    while time.monotonic() < deadline:
        headers = {"Last-Event-ID": str(events[-1]["seq"])} if events else {}
        try:
            async with aconnect_sse(http, "GET", f"/v1/runs/{run_id}/events",
                                    headers=headers) as source:
                async for sse in source.aiter_sse():
                    if sse.data:
                        events.append(json.loads(sse.data))
            if events and events[-1]["type"] == "done":
                return events, reconnects
        except httpx.HTTPError:
            pass
        reconnects += 1
        await asyncio.sleep(0.5)
    return events, reconnects


async def one_run(http: httpx.AsyncClient, n: int, deadline: float) -> dict[str, Any]:
    response = await http.post("/v1/runs", json={"agent": AGENT, "message": f"portfolio {n}"})
    response.raise_for_status()
    run_id = response.json()["id"]
    events, reconnects = await follow(http, run_id, deadline)
    return {"run_id": run_id, "events": events, "reconnects": reconnects}


async def killer(stack: Stack, names: list[str], every_s: float, concurrency: int,
                 kills: list[dict[str, Any]], stop: asyncio.Event) -> None:
    n = 0
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every_s)
            return
        name = names[n % len(names)]
        n += 1
        proc = stack.procs[name]
        at = time.time()
        proc.kill()
        await asyncio.to_thread(proc.wait)
        kills.append({"worker": name, "pid": proc.pid, "at": at, "dead_at": time.time()})
        stack.spawn(name, "worker", "--concurrency", str(concurrency),
                    "--hostname", f"{stack.prefix.strip(':')}-{name}@%h")


def sweeper_reasons(stack: Stack) -> dict[str, int]:
    """How often the sweeper enqueued a run again, by reason (from the workers' logs)."""
    reasons: Counter[str] = Counter()
    for name in stack.procs:
        for line in stack.log(name).read_text(errors="replace").splitlines():
            if "enqueued again:" in line:
                reasons[line.rpartition("enqueued again: ")[2]] += 1
    return dict(reasons)


def visible_output(events: list[dict[str, Any]]) -> str:
    hidden: set[int] = set()
    for e in events:
        if e["type"] == "metadata" and "superseded" in e:
            hidden.update(range(e["superseded"]["from_seq"], e["superseded"]["to_seq"] + 1))
    return "".join(e["delta"] for e in events
                   if e["type"] == "output_text_delta" and e["seq"] not in hidden)


Executions = dict[tuple[str, str], list[tuple[int, float]]]  # (run, call) → [(pid, returned at)]


def read_executions(tool_log: Path) -> Executions:
    executions: Executions = {}
    for line in tool_log.read_text().splitlines():
        run_id, call_id, _, pid, at = line.split(" ")
        executions.setdefault((run_id, call_id), []).append((int(pid), float(at)))
    for runs in executions.values():
        runs.sort(key=lambda execution: execution[1])
    return executions


Kills = dict[int, tuple[float, float]]  # pid → (SIGKILL sent at, process reaped at)


def killed(kills: list[dict[str, Any]]) -> Kills:
    return {k["pid"]: (k["at"], k["dead_at"]) for k in kills}


def reruns(run: dict[str, Any], executions: Executions, kills: Kills) -> list[dict[str, Any]]:
    """Each tool call of the run executed more than once, and why: `killed_before_recorded` (its
    earlier executions' workers were killed after the tool returned, and no result of theirs is
    in the log) or `rerun_after_recorded` (a broken guarantee)."""
    found = []
    for (run_id, call_id), runs in executions.items():
        if run_id != run["run_id"] or len(runs) == 1:
            continue
        results = sum(1 for e in run["events"]
                      if e["type"] == "tool_call_result" and e["tool_call_id"] == call_id)
        earlier = runs[:-1]
        in_window = results == 1 and all(
            pid in kills and kills[pid][1] >= at for pid, at in earlier)
        found.append({
            "run_id": run_id, "call": call_id, "executions": len(runs),
            "kind": "killed_before_recorded" if in_window else "rerun_after_recorded",
            "killed_ms_after_return": [round((kills[pid][0] - at) * 1000, 1)
                                       for pid, at in earlier if pid in kills],
        })
    return found


def record_windows_ms(runs: list[dict[str, Any]], executions: Executions) -> list[float]:
    """For every recorded tool result: its event's time minus the moment the tool returned (the
    execution that produced it: the last one), i.e. how long a kill could make it run again."""
    windows = []
    for run in runs:
        for e in run["events"]:
            if e["type"] == "tool_call_result":
                returned = executions.get((run["run_id"], e["tool_call_id"]))
                if returned:
                    windows.append((e["ts"] - returned[-1][1]) * 1000)
    return windows


def check(run: dict[str, Any], executions: Executions, kills: Kills) -> list[str]:
    events, problems = run["events"], []
    seqs = [e["seq"] for e in events]
    if seqs != list(range(1, len(events) + 1)):
        problems.append("seqs are not 1..n")
    dones = [e for e in events if e["type"] == "done"]
    if not dones:
        return [*problems, "no done (lost)"]
    if len(dones) != 1 or events[-1]["type"] != "done":
        problems.append(f"{len(dones)} done events")
    if dones[-1]["status"] != "completed":
        problems.append(f"done status {dones[-1]['status']}: {dones[-1].get('error')}")
    if visible_output(events) != dones[-1]["output"]:
        problems.append("visible output differs from done.output")
    calls = [call for (run_id, call) in executions if run_id == run["run_id"]]
    if len(calls) != TOOL_CALLS_PER_RUN:
        problems.append(f"{len(calls)} distinct tool calls executed, not {TOOL_CALLS_PER_RUN}")
    announced = {e["tool_call_id"] for e in events if e["type"] == "tool_call_result"}
    if unannounced := sorted(set(calls) - announced):
        problems.append(f"tool calls executed with no tool_call_result in the log: {unannounced}")
    broken = [r for r in reruns(run, executions, kills) if r["kind"] != "killed_before_recorded"]
    if broken:
        problems.append(f"tool calls run again although their result was recorded: {broken}")
    return problems


def recovery_times(runs: list[dict[str, Any]], kills: list[dict[str, Any]]) -> list[float]:
    """For each attempt after a kill: its run_started time minus the time the worker of the
    previous attempt was killed (`run_started.worker` is host:pid)."""
    killed_at = {k["pid"]: k["at"] for k in kills}
    times = []
    for run in runs:
        starts = [e for e in run["events"] if e["type"] == "run_started"]
        for previous, current in itertools.pairwise(starts):
            pid = int(previous["worker"].rpartition(":")[2])
            if pid in killed_at:
                times.append(current["ts"] - killed_at[pid])
    return times


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 \
        else (values[0] if values else float("nan"))


async def scenario(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    names = ["worker", *[f"worker{n}" for n in range(2, args.workers + 1)]][: args.victims]
    kills: list[dict[str, Any]] = []
    stop = asyncio.Event()
    deadline = time.monotonic() + args.timeout
    limits = httpx.Limits(max_connections=args.runs + 20)
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=stack.base_url, headers=headers, limits=limits,
                                 timeout=httpx.Timeout(30, read=60)) as http:
        chaos = asyncio.create_task(killer(stack, names, args.kill_every,
                                           args.worker_concurrency, kills, stop))
        slots = asyncio.Semaphore(args.concurrency)

        async def limited(n: int) -> dict[str, Any]:
            async with slots:
                return await one_run(http, n, deadline)

        runs = await asyncio.gather(*(limited(n) for n in range(args.runs)))
        wall = time.monotonic() - started
        stop.set()
        await chaos
        statuses = Counter()
        for run in runs:
            statuses[(await http.get(f"/v1/runs/{run['run_id']}")).json()["status"]] += 1
    return {"runs": runs, "kills": kills, "wall_s": wall, "db_statuses": dict(statuses)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--kill-every", type=float, default=4.0, help="seconds between SIGKILLs")
    parser.add_argument("--concurrency", type=int, default=50,
                        help="runs in flight at once (a closed loop, so the chaos lasts longer)")
    parser.add_argument("--victims", type=int, default=1, help="how many workers get killed")
    parser.add_argument("--worker-concurrency", type=int, default=100)
    parser.add_argument("--lease-ttl", type=float, default=5.0, help="RUNRELAY_RUN_LEASE_TTL_S")
    parser.add_argument("--sweep-interval", type=float, default=1.0,
                        help="RUNRELAY_SWEEP_INTERVAL_S")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds for the whole run")
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args()
    if args.workers < 2 or not 1 <= args.victims <= args.workers:
        parser.error("need --workers >= 2 and 1 <= --victims <= --workers")
    tool_log = Path(tempfile.mkstemp(prefix="runrelay-chaos-tools-", suffix=".log")[1])
    env = {
        "RUNRELAY_RUN_LEASE_TTL_S": str(args.lease_ttl),
        "RUNRELAY_SWEEP_INTERVAL_S": str(args.sweep_interval),
        # A run whose task died with a worker before the run started is found by this bound.
        "RUNRELAY_STUCK_QUEUED_S": "20",
        "PYTHONPATH": str(BENCH_DIR),
        LOG_ENV: str(tool_log),
    }
    try:
        with stack_up(worker_concurrency=args.worker_concurrency, keep_logs=args.keep_logs,
                      workers=args.workers, env=env) as stack:
            result = asyncio.run(scenario(stack, args))
            findings = log_findings(stack)
            findings["sweeper"] = sweeper_reasons(stack)
            executions = read_executions(tool_log)
            kills = killed(result["kills"])
            failures = {run["run_id"]: problems for run in result["runs"]
                        if (problems := check(run, executions, kills))}
            if failures:
                stack.keep_tmp = True
    except BenchError as exc:
        print(f"chaos: {exc}", file=sys.stderr)
        return 1
    finally:
        tool_log.unlink(missing_ok=True)
    return report(args, result, failures, findings, executions)


def report(args: argparse.Namespace, result: dict[str, Any], failures: dict[str, list[str]],
           findings: dict[str, Any], executions: Executions) -> int:
    runs = result["runs"]
    completed = sum(1 for r in runs if r["events"] and r["events"][-1].get("status") == "completed")
    attempts = Counter(max((e["attempt"] for e in r["events"] if e["type"] == "run_started"),
                           default=0) for r in runs)
    superseded = sum(1 for r in runs for e in r["events"] if e["type"] == "metadata")
    recovery = recovery_times(runs, result["kills"])
    again = [r for run in runs for r in reruns(run, executions, killed(result["kills"]))]
    windows = record_windows_ms(runs, executions)
    lost = sum(1 for r in runs if not r["events"] or r["events"][-1]["type"] != "done")
    summary = {
        "runs": len(runs), "completed": completed, "lost": lost,
        "failed_checks": len(failures), "kills": len(result["kills"]),
        "runs_by_attempts": dict(sorted(attempts.items())),
        "superseded_markers": superseded,
        "tool_calls": len(executions),
        "tool_calls_run_more_than_once": len(again),
        "of_which_killed_before_recorded": sum(
            r["kind"] == "killed_before_recorded" for r in again),
        "reruns": again,
        "record_window_ms": {"count": len(windows), "p50": round(pct(windows, 50), 2),
                             "p99": round(pct(windows, 99), 2),
                             "max": round(max(windows, default=0), 2)},
        "client_reconnects": sum(r["reconnects"] for r in runs),
        "db_statuses": result["db_statuses"], "wall_s": round(result["wall_s"], 1),
        "recovery_s": {"count": len(recovery), "min": round(min(recovery, default=0), 2),
                       "p50": round(pct(recovery, 50), 2), "p95": round(pct(recovery, 95), 2),
                       "max": round(max(recovery, default=0), 2)},
        "settings": {"workers": args.workers, "victims": args.victims,
                     "concurrency": args.concurrency,
                     "kill_every_s": args.kill_every,
                     "lease_ttl_s": args.lease_ttl, "sweep_interval_s": args.sweep_interval,
                     "worker_concurrency": args.worker_concurrency,
                     "redis": "REDIS_URL" if os.environ.get("REDIS_URL") else "embedded",
                     "database": "postgresql" if os.environ.get("DATABASE_URL", "").startswith(
                         "postgres") else "sqlite"},
        "sweeper_requeues": findings.pop("sweeper"),
        "log_warnings_errors": {k: v["warnings_errors"] for k, v in findings.items()},
        "failures": dict(list(failures.items())[:20]),
    }
    out = BENCH_DIR / "results" / f"chaos-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "failures"}, indent=2))
    for r in again:
        if r["kind"] == "killed_before_recorded":
            print(f"NOTE {r['run_id']} {r['call']} ran again: its worker was killed "
                  f"{r['killed_ms_after_return']} ms after the tool returned, before its result "
                  "was recorded (the at-least-once window the README states)")
    for run_id, problems in list(failures.items())[:10]:
        print(f"FAIL {run_id}: {'; '.join(problems)}")
    print(f"results: {out}")
    all_completed = result["db_statuses"] == {"completed": len(runs)}
    ok = not failures and completed == len(runs) and all_completed
    print("PASS" if ok else "FAIL")
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
