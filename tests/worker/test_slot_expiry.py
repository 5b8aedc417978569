"""A worker killed with SIGKILL while it holds concurrency slots: the slots come back once their
lease expires, and the tenant can start runs again."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import create_engine, text

from api_shim.app import create_app
from runrelay.server.engine import make_engine
from runrelay.server.migrate import upgrade
from runrelay.server.settings import Settings
from runrelay.server.store import Store
from runrelay.server.tenants import update_limits
from tests.conftest import ServerThread

SLOT_TTL_S = 3
SLOW = {"agent": "slow-analyst", "message": "go"}


@pytest.fixture
def own_settings(settings: Settings, tmp_path: Path) -> Iterator[Settings]:
    """A stack of its own (key prefix, database), so only our worker takes these runs."""
    prefix = f"rrslots:{secrets.token_hex(4)}:"
    schema = f"{settings.database_schema}_slots" if settings.database_schema else None
    database_url = settings.database_url if schema else f"sqlite:///{tmp_path / 'slots.db'}"
    own = settings.model_copy(
        update={"redis_prefix": prefix, "database_schema": schema, "database_url": database_url}
    )
    upgrade(own)
    yield own
    client = redis.Redis.from_url(settings.redis_url)
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)
    client.close()
    if schema:
        engine = create_engine(settings.database_url)
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


def _worker_env(own: Settings) -> dict[str, str]:
    env = {
        **os.environ,
        "REDIS_URL": own.redis_url,
        "DATABASE_URL": own.database_url,
        "RUNRELAY_REDIS_PREFIX": own.redis_prefix,
        "RUNRELAY_QUOTA_SLOT_TTL_S": str(SLOT_TTL_S),
    }
    env.pop("RUNRELAY_DATABASE_SCHEMA", None)
    if own.database_schema:
        env["RUNRELAY_DATABASE_SCHEMA"] = own.database_schema
    return env


def test_slots_of_a_sigkilled_worker_come_back_after_the_lease_expires(
    own_settings: Settings, tmp_path: Path
) -> None:
    store = Store(make_engine(own_settings))
    tenant = store.create_tenant("killed")
    update_limits(store, tenant.id, max_concurrent_runs=3, max_queued_runs=0)
    headers = {"Authorization": f"Bearer {store.create_api_key(tenant.id)}"}
    server = ServerThread(create_app(own_settings))
    server.start()
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log_file:
        worker = subprocess.Popen(
            [sys.executable, "-m", "runrelay", "worker", "--concurrency", "4"],
            env=_worker_env(own_settings),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as http:
            ids = [http.post("/v1/runs", json=SLOW).json()["id"] for _ in range(3)]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if all(http.get(f"/v1/runs/{i}").json()["status"] == "running" for i in ids):
                    break
                assert worker.poll() is None, log_path.read_text()[-3000:]
                time.sleep(0.1)
            else:
                raise AssertionError(
                    "the worker did not start the runs: " + log_path.read_text()[-3000:]
                )
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=10)
            killed = time.monotonic()
            refused = http.post("/v1/runs", json=SLOW)
            assert refused.status_code == 429, "the dead worker's slots are still leased"
            assert refused.json()["error"]["code"] == "concurrency_limit"
            while http.get("/v1/usage").json()["runs"]["running"] > 0:
                assert time.monotonic() - killed < SLOT_TTL_S + 5, "slots never came back"
                time.sleep(0.1)
            freed_after = time.monotonic() - killed
            assert freed_after <= SLOT_TTL_S + 1
            for _ in range(3):
                assert http.post("/v1/runs", json=SLOW).status_code == 202
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=10)
        server.stop()
        store.engine.dispose()
