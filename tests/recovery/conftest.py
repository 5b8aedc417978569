"""A deployment of its own for the crash-recovery tests, as separate processes like production:
the shim (`runrelay api`) and workers (`runrelay worker`) as subprocesses of this interpreter,
on the session's Redis server under a fresh key prefix and a database of their own (a fresh
PostgreSQL schema, or a SQLite file), so that their sweepers see only these runs.

Short lease and sweep intervals make recovery take seconds instead of half a minute.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import create_engine, text

from runrelay.server.embedded_redis import free_port
from runrelay.server.engine import make_engine
from runrelay.server.migrate import upgrade
from runrelay.server.settings import Settings
from runrelay.server.store import Store
from tests.conftest import TenantKey
from tests.recovery.recording_tools import LOG_ENV

REPO = Path(__file__).resolve().parents[2]
LEASE_TTL_S = 2.0
SWEEP_INTERVAL_S = 0.5
GRACE_S = 3.0  # the run goes on for half of it: the hand-back reserves 1.5 s (worker/app.py)
MAX_RUN_TIMEOUT_S = 600
START_TIMEOUT_S = 60.0
BODY_READ_TIMEOUT_S = 2.0
HEADER_READ_TIMEOUT_S = 2.0


@dataclass
class Deployment:
    settings: Settings
    env: dict[str, str]
    tmp: Path
    store: Store
    port: int = field(default_factory=free_port)
    api: subprocess.Popen[bytes] | None = None
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _serial: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def tool_log(self) -> Path:
        return Path(self.env[LOG_ENV])

    def _spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with (self.tmp / f"{name}.log").open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "runrelay", *args],
                env=self.env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def start_api(self) -> None:
        self.api = self._spawn("api", "api", "--port", str(self.port))
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200:
                    return
            if self.api.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the API did not start; see {self.tmp / 'api.log'}")
            time.sleep(0.1)

    def kill_api(self) -> None:
        assert self.api is not None
        self.api.kill()
        self.api.wait(timeout=10)

    def start_worker(self) -> subprocess.Popen[bytes]:
        """A `runrelay worker` process, returned once it takes tasks."""
        self._serial += 1
        name = f"worker{self._serial}"
        log = self.tmp / f"{name}.log"
        proc = self._spawn(name, "worker", "--concurrency", "20", "--hostname", f"{name}@%h")
        deadline = time.monotonic() + START_TIMEOUT_S
        while " ready." not in (log.read_text(errors="replace") if log.exists() else ""):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start; see {log}")
            time.sleep(0.1)
        self.workers[name] = proc
        return proc

    def worker_with_pid(self, pid: int) -> subprocess.Popen[bytes]:
        return next(p for p in self.workers.values() if p.pid == pid)

    def running_workers(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.workers.values() if p.poll() is None]

    def ensure_workers(self, count: int) -> None:
        while len(self.running_workers()) < count:
            self.start_worker()

    def stop_workers(self) -> None:
        for proc in self.running_workers():
            proc.kill()
        for proc in self.workers.values():
            proc.wait(timeout=20)

    def new_tenant(self) -> TenantKey:
        tenant = self.store.create_tenant(f"rec-{secrets.token_hex(6)}")
        return TenantKey(tenant.id, self.store.create_api_key(tenant.id))

    def tool_executions(self, run_id: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        if self.tool_log.exists():
            for line in self.tool_log.read_text().splitlines():
                rid, call_id, _step = line.split(" ")
                if rid == run_id:
                    counts[call_id] = counts.get(call_id, 0) + 1
        return counts

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.settings.redis_url)


@pytest.fixture(scope="session")
def deployment(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployed(redis_url, tmp_path_factory.mktemp("deployment")) as deployment:
        yield deployment


@contextlib.contextmanager
def deployed(
    redis_url: str, tmp: Path, database_url: str | None = None, **env_extra: str
) -> Iterator[Deployment]:
    """A deployment (its API started, no workers yet) on `redis_url`; `database_url` defaults to
    $DATABASE_URL's server (a schema of its own) or a SQLite file in `tmp`."""
    database_url = database_url or os.environ.get("DATABASE_URL", "")
    schema = None
    if not database_url.startswith("postgres"):
        database_url = f"sqlite:///{tmp / 'runrelay.db'}"
    else:
        schema = f"rr_rec_{secrets.token_hex(4)}"
    prefix = f"rrrec:{secrets.token_hex(4)}:"
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "RUNRELAY_REDIS_PREFIX": prefix,
        "RUNRELAY_AGENTS_CONFIG": str(Path(__file__).parent / "agents.yaml"),
        "RUNRELAY_RUN_LEASE_TTL_S": str(LEASE_TTL_S),
        "RUNRELAY_SWEEP_INTERVAL_S": str(SWEEP_INTERVAL_S),
        "RUNRELAY_SHUTDOWN_GRACE_S": str(GRACE_S),
        "RUNRELAY_MAX_RUN_TIMEOUT_S": str(MAX_RUN_TIMEOUT_S),
        "RUNRELAY_HUB_BLOCK_MS": "1000",
        "RUNRELAY_BODY_READ_TIMEOUT_S": str(BODY_READ_TIMEOUT_S),
        "RUNRELAY_HEADER_READ_TIMEOUT_S": str(HEADER_READ_TIMEOUT_S),
        LOG_ENV: str(tmp / "tool-executions.log"),
        **env_extra,
    }
    env.pop("RUNRELAY_DATABASE_SCHEMA", None)
    env.pop("RUNRELAY_GC_FULL_COLLECTION_S", None)  # the servers' default (tests/conftest.py)
    if schema:
        env["RUNRELAY_DATABASE_SCHEMA"] = schema
    settings = Settings(
        redis_url=redis_url,
        database_url=database_url,
        database_schema=schema,
        redis_prefix=prefix,
        run_lease_ttl_s=LEASE_TTL_S,
        sweep_interval_s=SWEEP_INTERVAL_S,
    )
    upgrade(settings)
    store = Store(make_engine(settings))
    deployment = Deployment(settings=settings, env=env, tmp=tmp, store=store)
    try:
        deployment.start_api()
        yield deployment
    finally:
        for proc in [*deployment.workers.values(), deployment.api]:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=20)
        store.engine.dispose()
        with contextlib.suppress(redis.RedisError):
            client = redis.Redis.from_url(redis_url)
            for key in client.scan_iter(match=f"{prefix}*", count=1000):
                client.delete(key)
            client.close()
        if schema:
            engine = create_engine(settings.database_url)
            with engine.begin() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            engine.dispose()


@pytest.fixture
def rec_client(deployment: Deployment) -> Iterator[httpx.Client]:
    """A client of the deployment's shim, as a fresh tenant."""
    tenant = deployment.new_tenant()
    with httpx.Client(base_url=deployment.base_url, headers=tenant.headers, timeout=60) as http:
        yield http
