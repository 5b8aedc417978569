"""Fan-out: how many live SSE streams one API process serves, and how late their events arrive.

    python bench/fanout.py --clients 1000 [--runs 100] [--client-procs 3] [--measure-s 60]

It starts its own stack like `bench/throughput.py` (see bench_stack.py: Redis from REDIS_URL,
the database from DATABASE_URL, a fresh key prefix and schema, ONE `runrelay api` process and one
worker), creates `--runs` runs of `fanout-ticker` (bench/agents.yaml: one text delta a second
for ~11 minutes), started evenly over one second (`--start-spread-s`), then `--client-procs`
client processes open `--clients` streams (`GET /v1/runs/{id}/events`) spread evenly over the
runs. The clients are raw asyncio streams, not httpx, so that a client costs little next to the
server on a shared machine.

Once every client is connected (or the ramp gave up, `--ramp-timeout`, or made no progress for
30 s) and `--settle-s` later (the last streams opened may still be reading their history), it
measures for `--measure-s` seconds:

- delivery lag of every event received in the window: its `ts` (set by the worker when the event
  is made) to the moment the client read its line; p50, p99, p99.9, max;
- streams connected, and connect errors by kind (timeout, reset, refused, HTTP status, dropped);
- the API process: RSS (before the clients and in the window, so RSS per stream), CPU seconds,
  and its TCP connections to Redis (counted from the process's sockets; also `CLIENT LIST` by
  the shim's client name);
- the client processes' CPU (when it nears their share of the machine, they set the pace).

File descriptors: each stream is one socket in the API and one in a client, so 10,000 streams
need `ulimit -n` above 10,000 in the API's shell (plus a few hundred for its own files and
connections) and above clients/procs in each client's. Raise the soft limit with `ulimit -n 20000`
(up to the hard limit, `ulimit -Hn`; raise that in /etc/security/limits.conf or with systemd's
`LimitNOFILE=`, Docker's `--ulimit nofile=20000:20000`). The listen backlog (`runrelay api
--backlog`, uvicorn's default 2048) is capped by `net.core.somaxconn`; a burst of connects above
it waits in SYN retries. `runrelay api --limit-concurrency N` answers 503 above N connections
instead of running out of descriptors. The bench raises its own soft limit to the hard one.

`--gc-log` loads bench/gc_probe/ into the stack's processes and reports every full garbage
collection of the API (`api_full_collections`: when, relative to the window's start, and how
long); `--full-collection-at S [S ...]` (implies it) makes the API run one S seconds into the
window (negative: before it), to time the pause such a collection costs every stream without
waiting for the API's collector to run one.

The table goes to stdout and the JSON to bench/results/. Exit status: 0 every client connected,
2 some did not, 1 the bench could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import multiprocessing as mp
import os
import platform
import resource
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis
from bench_stack import BENCH_DIR, BenchError, Stack, backends, cpu_snapshot, cpu_used, stack_up

AGENT = "fanout-ticker"
CONNECT_TIMEOUT_S = 30.0
OPENING_PER_PROC = 200  # connects in flight per client process
STALL_S = 0.25  # a second of the window whose worst lag is above this is listed under `stalls`


# ---------------------------------------------------------------------------- client processes


def _ts_of(line: bytes) -> float | None:
    """The `ts` of an event's `data:` line, without parsing the whole JSON."""
    at = line.find(b'"ts":')
    if at < 0:
        return None
    start = end = at + 5 + (line[at + 5 : at + 6] == b" ")
    while end < len(line) and line[end] in b"0123456789.":
        end += 1
    return float(line[start:end])


class _Client:
    def __init__(self, host: str, port: int, api_key: str, window: Any, connected: Any) -> None:
        self.host, self.port, self.api_key = host, port, api_key
        self.window = window  # (start, stop) epoch seconds; 0 = not yet
        self.connected: Synchronized[int] = connected
        self.lags: list[float] = []
        self.errors: Counter[str] = Counter()
        self.opening = asyncio.Semaphore(OPENING_PER_PROC)

    async def open(self, run_id: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        writer.write(
            f"GET /v1/runs/{run_id}/events HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Authorization: Bearer {self.api_key}\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        status = await reader.readline()
        if status.split(b" ")[1:2] != [b"200"]:
            writer.close()
            raise _HTTPStatus(status.split(b" ")[1:2][0].decode() if status else "eof")
        while (await reader.readline()) not in (b"\r\n", b"\n", b""):
            pass
        return reader, writer

    async def stream(self, run_id: str) -> None:
        try:
            async with self.opening:
                reader, writer = await asyncio.wait_for(self.open(run_id), CONNECT_TIMEOUT_S)
        except TimeoutError:
            self.errors["connect_timeout"] += 1
            return
        except _HTTPStatus as exc:
            self.errors[f"http_{exc}"] += 1
            return
        except ConnectionResetError:
            self.errors["connect_reset"] += 1
            return
        except OSError as exc:
            self.errors[f"connect_{type(exc).__name__}"] += 1
            return
        with self.connected.get_lock():
            self.connected.value += 1
        try:
            while line := await reader.readline():
                if not line.startswith(b"data:"):
                    continue
                now = time.time()
                start, stop = self.window[0], self.window[1]
                if start and now >= start and (not stop or now < stop):
                    ts = _ts_of(line)
                    if ts is not None:
                        self.lags.append((now, now - ts))
            self.errors["dropped"] += 1
        except OSError:
            self.errors["dropped_reset"] += 1
        finally:
            with self.connected.get_lock():
                self.connected.value -= 1
            writer.close()


class _HTTPStatus(Exception):
    pass


def _client_main(
    host: str, port: int, api_key: str, run_ids: list[str], window: Any, connected: Any,
    out: Any,
) -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    # A client holds a third of the streams; its own full collections (~0.1 s at 10,000 streams
    # over 3 processes) would be counted as the API's lag. It lives for one bench.
    gc.disable()

    async def main() -> dict[str, Any]:
        client = _Client(host, port, api_key, window, connected)
        tasks = [asyncio.create_task(client.stream(run_id)) for run_id in run_ids]
        # The window is shared memory written by the parent process: nothing to await but time.
        while not (window[1] and time.time() > window[1] + 0.5):  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return {"lags": client.lags, "errors": dict(client.errors)}

    out.put(asyncio.run(main()))


# ---------------------------------------------------------------------------- the bench


def _create_runs(stack: Stack, n: int, spread_s: float) -> list[str]:
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    with httpx.Client(base_url=stack.base_url, headers=headers, timeout=30) as http:
        ids = []
        # Started evenly over `spread_s` (a second by default), the runs' events spread over
        # every second, as those of independent runs do; started as fast as they can be, they
        # would come in bursts of all runs at once, and how bunched they were would move the lag
        # from one bench to the next.
        began = time.monotonic()
        for i in range(n):
            time.sleep(max(0.0, began + spread_s * i / n - time.monotonic()))
            response = http.post("/v1/runs", json={"agent": AGENT, "message": "tick"})
            response.raise_for_status()
            ids.append(response.json()["id"])
        deadline = time.monotonic() + 120
        for run_id in ids:
            while http.get(f"/v1/runs/{run_id}").json()["status"] != "running":
                if time.monotonic() > deadline:
                    raise BenchError(f"run {run_id} not running after 120 s")
                time.sleep(0.2)
    return ids


def _redis_connections(stack: Stack, api: psutil.Process) -> dict[str, int]:
    port = redis.Redis.from_url(stack.redis_url).connection_pool.connection_kwargs.get("port")
    sockets = [c for c in api.net_connections(kind="tcp") if c.raddr and c.raddr.port == port]
    client = redis.Redis.from_url(stack.redis_url)
    try:
        named = sum(1 for c in client.client_list() if c.get("name") == f"{stack.prefix}shim")
    finally:
        client.close()
    return {"api_sockets_to_redis": len(sockets), "client_list_named_shim": named}


def _redis_lags(stack: Stack, run_ids: list[str], window: Any, lags: list[float]) -> None:
    """The same lag seen by a plain XREAD client (worker → Redis), to tell the API's share."""
    client = redis.Redis.from_url(stack.redis_url)
    keys = {f"{stack.prefix}run:{run_id}:events": "$" for run_id in run_ids}
    try:
        while not window[1]:
            for key, entries in client.xread(keys, block=1000) or []:  # type: ignore[arg-type]
                for entry_id, fields in entries:
                    keys[key.decode()] = entry_id
                    if window[0] and time.time() >= window[0]:
                        ts = _ts_of(b'"ts":' + fields[b"d"].split(b'"ts":', 1)[-1])
                        if ts is not None:
                            lags.append(time.time() - ts)
    finally:
        client.close()


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    api = psutil.Process(stack.procs["api"].pid)
    run_ids = _create_runs(stack, args.runs, args.start_spread_s)
    time.sleep(2)
    rss_before = api.memory_info().rss
    host, port = stack.base_url.removeprefix("http://").split(":")
    ctx = mp.get_context("spawn")
    window = ctx.Array("d", [0.0, 0.0], lock=False)
    out = ctx.Queue()
    counters = []
    procs = []
    for p in range(args.client_procs):
        mine = [run_ids[i % len(run_ids)] for i in range(p, args.clients, args.client_procs)]
        counter = ctx.Value("i", 0)
        counters.append(counter)
        proc = ctx.Process(target=_client_main, daemon=True,
                           args=(host, int(port), stack.api_key, mine, window, counter, out))
        proc.start()
        procs.append(proc)
    ramp_cpu_before = cpu_snapshot(stack, None)
    ramp_started = time.monotonic()
    best, best_at = 0, ramp_started
    while True:
        stack.check_alive()
        connected = sum(c.value for c in counters)
        now = time.monotonic()
        if connected > best:
            best, best_at = connected, now
        stalled = now - best_at > 30
        if connected >= args.clients or now - ramp_started > args.ramp_timeout or stalled:
            break
        time.sleep(0.5)
    ramp_s = time.monotonic() - ramp_started
    ramp_cpu = cpu_used(ramp_cpu_before, cpu_snapshot(stack, None))
    print(f"ramp: {connected} connected in {ramp_s:.1f} s", file=sys.stderr)
    # Streams opened last may still be receiving their history (the open cost is `ramp_s`).
    forcing = _force_full_collections(api.pid, time.time() + args.settle_s,
                                      args.full_collection_at)
    time.sleep(args.settle_s)
    cpu_before = cpu_snapshot(stack, None)
    redis_lags: list[float] = []
    probe = threading.Thread(target=_redis_lags, args=(stack, run_ids, window, redis_lags))
    probe.start()
    clients = [psutil.Process(proc.pid) for proc in procs]
    clients_cpu_before = sum(_cpu_s(c) for c in clients)
    window[0] = time.time()
    rss_samples, redis_samples, connected_samples = [], [], []
    deadline = time.monotonic() + args.measure_s
    while time.monotonic() < deadline:
        rss_samples.append(api.memory_info().rss)
        redis_samples.append(_redis_connections(stack, api))
        connected_samples.append(sum(c.value for c in counters))
        time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
    window[1] = time.time()
    for timer in forcing:
        timer.cancel()  # one due after the window (the window is short of it)
    clients_cpu = sum(_cpu_s(c) for c in clients) - clients_cpu_before
    probe.join(timeout=10)
    cpu = cpu_used(cpu_before, cpu_snapshot(stack, None))
    results = [out.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
    arrivals = [pair for r in results for pair in r["lags"]]
    lags = [lag for _, lag in arrivals]
    errors: Counter[str] = Counter()
    for r in results:
        errors.update(r["errors"])
    rss = max(rss_samples)
    streams = min(connected_samples)
    return {
        "clients": args.clients,
        "runs": args.runs,
        "client_procs": args.client_procs,
        "ramp_s": round(ramp_s, 1),
        "connected_after_ramp": connected,
        "connected_min_in_window": streams,
        "events_received_in_window": len(lags),
        "lag_ms": {
            "p50": _ms(_percentile(lags, 0.5)),
            "p99": _ms(_percentile(lags, 0.99)),
            "p999": _ms(_percentile(lags, 0.999)),
            "max": _ms(max(lags) if lags else None),
            "mean": _ms(statistics.fmean(lags) if lags else None),
        },
        "window": {"start": round(window[0], 3), "stop": round(window[1], 3)},
        "stalls": _stalls(arrivals, window[0]),
        "lag_ms_plain_xread_client": {
            "p50": _ms(_percentile(redis_lags, 0.5)),
            "p99": _ms(_percentile(redis_lags, 0.99)),
        },
        "errors": dict(errors),
        "api_rss_mb": {"before_clients": _mb(rss_before), "in_window_max": _mb(rss)},
        "api_rss_kb_per_stream": round((rss - rss_before) / 1024 / max(1, streams), 1),
        "api_cpu_s_in_window": round(cpu.get("api", 0.0), 2),
        "api_cpu_share_of_one_core": round(cpu.get("api", 0.0) / args.measure_s, 2),
        # The clients share the machine: this says whether they, not the API, set the pace.
        "clients_cpu_share_of_one_core": round(clients_cpu / args.measure_s, 2),
        # Figures that hold on a machine shared with others: the API's CPU per unit of work.
        "api_cpu_ms_per_stream_opened": round(
            ramp_cpu.get("api", 0.0) * 1000 / max(1, connected), 2
        ),
        "api_cpu_us_per_event_delivered": round(
            cpu.get("api", 0.0) * 1e6 / max(1, len(lags)), 1
        ),
        "machine_load_1m": round(psutil.getloadavg()[0], 1),
        "redis_connections_max": {
            k: max(s[k] for s in redis_samples) for k in redis_samples[0]
        },
        **_full_collections(args.gc_log_path, api.pid, window[0]),
    }


def _force_full_collections(
    api_pid: int, start: float, offsets: list[float]
) -> list[threading.Timer]:
    """SIGUSR2 to the API (bench/gc_probe: a full collection) `offsets` seconds after `start`
    (the window's start, `--settle-s` from now), or at once for one already past."""
    timers = []
    for offset in offsets:
        timer = threading.Timer(max(0.0, start + offset - time.time()),
                                os.kill, (api_pid, signal.SIGUSR2))
        timer.daemon = True
        timer.start()
        timers.append(timer)
    return timers


def _full_collections(log: Path | None, api_pid: int, start: float) -> dict[str, Any]:
    """The API's full collections that bench/gc_probe logged, relative to the window's start."""
    if log is None:
        return {}
    rows = [line.split() for line in log.read_text().splitlines()]
    return {"api_full_collections": [
        {"at_s": round(float(at) - start, 2), "ms": float(ms), "collected": int(collected),
         "kind": kind}
        for role, pid, at, ms, collected, kind in rows if role == "api" and int(pid) == api_pid
    ]}


def _stalls(arrivals: list[tuple[float, float]], start: float) -> list[dict[str, float]]:
    """The seconds of the window whose events arrived more than STALL_S late at the worst: a
    pause of the API (or of a client) shows here as one or two seconds, where a slow API shows
    as many."""
    worst: dict[int, float] = {}
    for now, lag in arrivals:
        second = int(now - start)
        worst[second] = max(worst.get(second, 0.0), lag)
    return [{"second": s, "max_lag_ms": round(lag * 1000, 1)}
            for s, lag in sorted(worst.items()) if lag > STALL_S]


def _cpu_s(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _mb(n: int) -> float:
    return round(n / 1024 / 1024, 1)


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--start-spread-s", type=float, default=1.0,
                        help="start the runs evenly over this long (0: as fast as they can be, "
                        "so that all runs' events come at about the same moment each second)")
    parser.add_argument("--client-procs", type=int, default=3)
    parser.add_argument("--measure-s", type=float, default=60.0)
    parser.add_argument("--ramp-timeout", type=float, default=300.0)
    parser.add_argument("--settle-s", type=float, default=10.0,
                        help="pause between the ramp and the measured window")
    parser.add_argument("--gc-log", action="store_true",
                        help="log the API's full garbage collections (bench/gc_probe)")
    parser.add_argument("--full-collection-at", type=float, nargs="+", default=[], metavar="S",
                        help="make the API run a full garbage collection S seconds into the "
                        "window (negative: before it); implies --gc-log")
    parser.add_argument("--label", default="", help="a tag for the results file (e.g. before)")
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args()
    _raise_fd_limit()
    env: dict[str, str] = {}
    args.gc_log_path = None
    if args.gc_log or args.full_collection_at:
        args.gc_log_path = Path(tempfile.mkstemp(prefix="runrelay-bench-gc-", suffix=".log")[1])
        probe = str(BENCH_DIR / "gc_probe")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [probe, os.environ.get("PYTHONPATH")]))
        env["RUNRELAY_BENCH_GC_LOG"] = str(args.gc_log_path)
    try:
        with stack_up(worker_concurrency=args.runs + 20, keep_logs=args.keep_logs,
                      env=env) as stack:
            info, _ = backends(stack)
            report = {"bench": "fanout", "label": args.label,
                      "at": datetime.now(UTC).isoformat(timespec="seconds"),
                      "machine": {"cpus": psutil.cpu_count(), "python": platform.python_version()},
                      "backends": info, **measure(stack, args)}
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.gc_log_path is not None:
            args.gc_log_path.unlink(missing_ok=True)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    name = f"fanout-{args.clients}-{args.label or 'run'}-{int(time.time())}.json"
    (args.results_dir / name).write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k not in ("backends", "machine")},
                     indent=2))
    return 0 if report["connected_min_in_window"] >= args.clients else 2


if __name__ == "__main__":
    sys.exit(main())
