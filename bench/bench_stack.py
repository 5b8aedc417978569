"""The bench's own runrelay stack: Redis, database, migrations, an API key, `runrelay api` and
one `runrelay worker` as separate processes, under a fresh Redis key prefix (and PostgreSQL
schema), and their clean removal; plus what can be observed of them (versions, CPU, logs).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
from sqlalchemy import create_engine, text

from runrelay.server.embedded_redis import EmbeddedRedis, free_port

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
STOP_TIMEOUT_S = 15.0
READY_TIMEOUT_S = 60.0


class BenchError(Exception):
    """The bench could not set up or measure; the message says what and where the logs are."""


# ---------------------------------------------------------------------------- the stack


@dataclass
class Stack:
    """The processes and data of one bench run, and how to take them down."""

    tmp: Path
    prefix: str
    redis_url: str
    database_url: str
    schema: str | None
    embedded_redis: EmbeddedRedis | None = None
    env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    base_url: str = ""
    api_key: str = ""
    keep_tmp: bool = False

    def log(self, name: str) -> Path:
        return self.tmp / f"{name}.log"

    def run_cli(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "runrelay", *args], env=self.env,
                              cwd=REPO_DIR, capture_output=True, text=True, timeout=120,
                              check=False)
        if done.returncode != 0:
            raise BenchError(f"`runrelay {' '.join(args)}` exited {done.returncode}:\n"
                             f"{done.stderr}")
        return done.stdout

    def spawn(self, name: str, *args: str) -> None:
        with self.log(name).open("ab") as log_file:
            # A session of its own: Ctrl-C reaches only the bench, which then stops it in order.
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "runrelay", *args], env=self.env, cwd=REPO_DIR,
                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise BenchError(f"{name} exited with {proc.returncode}; see {self.log(name)}")

    def stop_processes(self) -> None:
        """SIGTERM to all, then SIGKILL to whatever is still up STOP_TIMEOUT_S after the
        workers' grace period (within which they hand back the runs still going)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        grace_s = float(self.env.get("RUNRELAY_SHUTDOWN_GRACE_S", "20"))
        deadline = time.monotonic() + grace_s + STOP_TIMEOUT_S
        for name, proc in self.procs.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"{name} still up {grace_s + STOP_TIMEOUT_S:g} s after SIGTERM; SIGKILL",
                      file=sys.stderr)
                proc.kill()
                proc.wait()

    def delete_data(self) -> dict[str, Any]:
        """Delete our Redis keys (SCAN on our prefix only) and our PostgreSQL schema."""
        report: dict[str, Any] = {}
        client = redis.Redis.from_url(self.redis_url)
        try:
            deleted = 0
            batch: list[bytes] = []
            for key in client.scan_iter(match=f"{self.prefix}*", count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    deleted += client.unlink(*batch)
                    batch = []
            if batch:
                deleted += client.unlink(*batch)
            report["redis_keys_deleted"] = deleted
            if self.embedded_redis is not None:
                # Nobody else uses this server: a key outside the prefix leaked out of it.
                outside = [k.decode() for k in client.scan_iter(count=1000)]
                report["redis_keys_outside_prefix"] = sorted(outside)[:50]
        finally:
            client.close()
        if self.schema:
            engine = create_engine(_sqlalchemy_url(self.database_url))
            try:
                with engine.begin() as conn:
                    conn.execute(text(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))
                report["schema_dropped"] = self.schema
            finally:
                engine.dispose()
        return report


def _sqlalchemy_url(url: str) -> str:
    for plain in ("postgres://", "postgresql://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain):]
    return url


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        userinfo, _, host = rest.rpartition("@")
        rest = userinfo.partition(":")[0] + ":***@" + host if ":" in userinfo else rest
    return scheme + sep + rest


@contextlib.contextmanager
def stack_up(*, worker_concurrency: int, keep_logs: bool, workers: int = 1,
             env: dict[str, str] | None = None) -> Iterator[Stack]:
    """Everything the measurement needs, up and ready; torn down on the way out, come what may.

    `workers` worker processes (named worker, worker2, ...); `env` overrides settings."""
    tmp = Path(tempfile.mkdtemp(prefix="runrelay-bench-"))
    tag = secrets.token_hex(4)
    database_url = os.environ.get("DATABASE_URL") or f"sqlite:///{tmp / 'bench.db'}"
    is_sqlite = database_url.startswith("sqlite")
    stack = Stack(tmp=tmp, prefix=f"rrbench-{tag}:", redis_url=os.environ.get("REDIS_URL", ""),
                  database_url=database_url, schema=None if is_sqlite else f"rrbench_{tag}")
    failed = True
    try:
        if not stack.redis_url:
            stack.embedded_redis = EmbeddedRedis(tmp / "redis")
            stack.redis_url = stack.embedded_redis.url
        stack.env = {**os.environ, "REDIS_URL": stack.redis_url, "DATABASE_URL": database_url,
                     "RUNRELAY_REDIS_PREFIX": stack.prefix,
                     "RUNRELAY_AGENTS_CONFIG": str(BENCH_DIR / "agents.yaml")}
        # Runs still going at the end (fan-out's tickers) are handed back within this; a bench
        # that measures the shutdown sets its own.
        stack.env["RUNRELAY_SHUTDOWN_GRACE_S"] = "5"
        stack.env.update(env or {})
        stack.env.pop("RUNRELAY_DATABASE_SCHEMA", None)
        if stack.schema:
            stack.env["RUNRELAY_DATABASE_SCHEMA"] = stack.schema
        stack.run_cli("migrate")
        # Limits far above what the bench asks for: it measures the run path, not the quotas.
        stack.run_cli("tenants", "create", "bench", "--max-concurrent-runs", "100000",
                      "--max-queued-runs", "100000", "--requests-per-minute", "10000000")
        stack.api_key = stack.run_cli("keys", "create", "--tenant", "bench").strip()
        port = free_port()
        stack.base_url = f"http://127.0.0.1:{port}"
        stack.spawn("api", "api", "--port", str(port))
        for n in range(1, workers + 1):
            name = "worker" if n == 1 else f"worker{n}"
            stack.spawn(name, "worker", "--concurrency", str(worker_concurrency),
                        "--hostname", f"bench-{tag}-{n}@%h")
        _wait_ready(stack)
        yield stack
        failed = False
    finally:
        stack.stop_processes()
        with contextlib.suppress(Exception):  # best effort: report what could not be cleaned
            stack.delete_data()
        if stack.embedded_redis is not None:
            stack.embedded_redis.close()
        if failed or keep_logs or stack.keep_tmp:
            print(f"logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _wait_ready(stack: Stack) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    with httpx.Client(base_url=stack.base_url, timeout=5) as http:
        while True:
            stack.check_alive()
            with contextlib.suppress(httpx.HTTPError):
                if http.get("/readyz").status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise BenchError(f"/readyz not 200 after {READY_TIMEOUT_S:g} s; see {stack.tmp}")
            time.sleep(0.2)


def _cpu_ticks(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy() -> float | None:
    """CPU seconds all processes of the machine spent so far (Linux /proc/stat, non-idle)."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, first[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _postgres_ticks() -> dict[int, float]:
    """CPU seconds so far of every `postgres` process of the machine (the server and all its
    backends: on a shared machine, other users' queries too), by pid."""
    found: dict[int, float] = {}
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError, ValueError):
            if comm.read_text().strip() == "postgres":
                pid = int(comm.parent.name)
                ticks = _cpu_ticks(pid)
                if ticks is not None:
                    found[pid] = ticks
    return found


def cpu_snapshot(stack: Stack, redis_pid: int | None) -> dict[str, float | None]:
    pids = {name: proc.pid for name, proc in stack.procs.items()}
    if redis_pid:
        pids["redis"] = redis_pid
    snapshot = {name: _cpu_ticks(pid) for name, pid in pids.items()}
    if not stack.database_url.startswith("sqlite"):
        # Summed over pids in `cpu_used`: backends come and go between two snapshots.
        snapshot.update({f"postgres:{pid}": t for pid, t in _postgres_ticks().items()})
    times = os.times()
    snapshot["client"] = times.user + times.system
    snapshot["machine"] = _machine_busy()
    return snapshot


def cpu_used(before: dict[str, float | None], after: dict[str, float | None]) -> dict[str, float]:
    """CPU seconds per process between two snapshots; `other` is the rest of the machine (the
    database server, other users' processes)."""
    used = {k: v - b for k, v in after.items()
            if v is not None and (b := before.get(k)) is not None and ":" not in k}
    postgres = [v - before.get(k, 0.0) for k, v in after.items()  # new backends count whole
                if k.startswith("postgres:") and v is not None]
    if postgres:
        used["postgres"] = sum(postgres)
    if "machine" in used:
        used["other"] = used.pop("machine") - sum(used.values())
    return used


def backends(stack: Stack) -> tuple[dict[str, Any], int | None]:
    client = redis.Redis.from_url(stack.redis_url)
    try:
        info = client.info("server")
    finally:
        client.close()
    redis_info = {"url": _redact(stack.redis_url), "embedded": stack.embedded_redis is not None,
                  "version": info.get("redis_version"), "prefix": stack.prefix}
    engine = create_engine(_sqlalchemy_url(stack.database_url))
    try:
        with engine.connect() as conn:
            query = ("SELECT sqlite_version()" if engine.dialect.name == "sqlite"
                     else "SHOW server_version")
            db_version = conn.execute(text(query)).scalar()
    finally:
        engine.dispose()
    db_info = {"url": _redact(stack.database_url), "dialect": engine.dialect.name,
               "version": db_version, "schema": stack.schema}
    pid = info.get("process_id")
    return {"redis": redis_info, "database": db_info}, int(pid) if pid else None


def log_findings(stack: Stack) -> dict[str, Any]:
    """Counts of warnings, errors and tracebacks in the processes' logs, with the first few."""
    findings: dict[str, Any] = {}
    for name in stack.procs:
        lines = stack.log(name).read_text(errors="replace").splitlines()
        bad = [ln for ln in lines if any(w in ln for w in (" WARNING ", " ERROR ", "Traceback",
                                                           "CRITICAL"))]
        findings[name] = {"lines": len(lines), "warnings_errors": len(bad), "first": bad[:10]}
    return findings
