"""Schedules fired by real `runrelay beat` processes and the session's worker: on time, once per
tick with two beats or duplicate firing tasks, `overlap: skip`, pause."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from runrelay.server.keys import FIRE_SCHEDULES_TASK
from runrelay.server.schedules import Schedule, Schedules
from runrelay.server.settings import Settings
from runrelay.server.store import Store, new_id
from worker.app import WorkerApp

REPO = Path(__file__).resolve().parents[2]


def beat_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        REDIS_URL=settings.redis_url,
        DATABASE_URL=settings.database_url,
        RUNRELAY_REDIS_PREFIX=settings.redis_prefix,
        RUNRELAY_SCHEDULE_TICK_S=str(settings.schedule_tick_s),
        RUNRELAY_BEAT_LOCK_TIMEOUT_S="5",
    )
    if settings.database_schema:
        env["RUNRELAY_DATABASE_SCHEMA"] = settings.database_schema
    return env


@pytest.fixture
def two_beats(
    settings: Settings, worker: WorkerApp, tmp_path: Path
) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = []
    for n in range(2):
        with (tmp_path / f"beat{n}.log").open("wb") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "runrelay", "beat"],
                    env=beat_env(settings),
                    cwd=REPO,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    yield procs
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def every_second(tenant_id: str, **extra: Any) -> Schedule:
    fields: dict[str, Any] = {
        "id": new_id("sch"),
        "tenant_id": tenant_id,
        "cron": "* * * * * *",
        "timezone": "UTC",
        "run": {"agent": "credit-risk-analyst", "message": "tick"},
        "overlap": "enqueue",
        **extra,
    }
    return Schedule(**fields)


def runs_of(client: httpx.Client, schedule_id: str) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = client.get(
        "/v1/runs", params={"schedule_id": schedule_id, "limit": 100}
    ).json()["data"]
    return runs


def wait_for(check: Any, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError("timed out waiting")


def test_two_beats_fire_each_tick_once_and_on_time(
    two_beats: list[subprocess.Popen[bytes]], store: Store, client: httpx.Client, tenant: Any
) -> None:
    schedules = Schedules(store.engine)
    schedule = schedules.create(every_second(tenant.tenant_id))
    wait_for(lambda: len(runs_of(client, schedule.id)) >= 5)
    schedules.update(schedule.id, tenant_id=tenant.tenant_id, paused=True)
    time.sleep(1.5)  # a pass that started before the pause may still finish
    runs = runs_of(client, schedule.id)
    ticks = sorted(datetime.fromisoformat(r["scheduled_for"]) for r in runs)
    assert len(ticks) == len(set(ticks)), "a tick made two runs"
    seconds = [(b - a).total_seconds() for a, b in itertools.pairwise(ticks)]
    assert all(gap == 1.0 for gap in seconds), f"a tick was skipped: {ticks}"
    assert all(t.microsecond == 0 for t in ticks)
    for run in runs:  # made after their tick, through the normal path
        assert datetime.fromisoformat(run["created_at"]) >= datetime.fromisoformat(
            run["scheduled_for"]
        )
    shown = client.get(f"/v1/schedules/{schedule.id}").json()
    assert shown["last_run_id"] in {r["id"] for r in runs}
    count = len(runs)
    time.sleep(2)
    assert len(runs_of(client, schedule.id)) == count, "a paused schedule fired"


def test_duplicate_firing_tasks_make_one_run_per_tick(
    worker: WorkerApp, store: Store, client: httpx.Client, tenant: Any, settings: Settings
) -> None:
    schedules = Schedules(store.engine)
    due = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
    schedule = schedules.create(every_second(tenant.tenant_id, start_at=due))
    for _ in range(3):
        with ThreadPoolExecutor(8) as pool:
            list(
                pool.map(
                    lambda _: worker.send_task(FIRE_SCHEDULES_TASK, queue=settings.control_queue),
                    range(8),
                )
            )
        time.sleep(1.0)
    schedules.update(schedule.id, tenant_id=tenant.tenant_id, paused=True)
    time.sleep(1.0)
    ticks = [r["scheduled_for"] for r in runs_of(client, schedule.id)]
    assert ticks, "nothing fired"
    assert len(ticks) == len(set(ticks))


def test_concurrent_claims_of_one_due_tick_claim_it_once(store: Store, tenant: Any) -> None:
    schedules = Schedules(store.engine)
    schedule = every_second(tenant.tenant_id, cron="0 0 1 1 *")
    schedules.create(schedule)
    tick = datetime.now(UTC).replace(microsecond=0)
    schedules.update(schedule.id, tenant_id=tenant.tenant_id)  # recomputes next_run_at
    from sqlalchemy import update
    from sqlmodel import Session, col

    with Session(store.engine) as session:
        session.exec(
            update(Schedule).where(col(Schedule.id) == schedule.id).values(next_run_at=tick)
        )
        session.commit()

    def claim(_: int) -> int:
        fires = schedules.claim_due(
            datetime.now(UTC), limit=1000, misfire_grace_s=60, new_run_id=new_id
        )
        return sum(1 for f in fires if f.schedule_id == schedule.id)

    with ThreadPoolExecutor(6) as pool:
        claimed = sum(pool.map(claim, range(6)))
    assert claimed == 1


def test_overlap_skip_makes_no_run_while_the_last_is_active(
    two_beats: list[subprocess.Popen[bytes]], store: Store, client: httpx.Client, tenant: Any
) -> None:
    schedules = Schedules(store.engine)
    schedule = schedules.create(
        every_second(
            tenant.tenant_id,
            overlap="skip",
            run={"agent": "slow-analyst", "message": "long"},
        )
    )
    first = wait_for(lambda: runs_of(client, schedule.id))
    time.sleep(3)  # three more ticks while the slow run (about 5 s) is active
    shown = client.get(f"/v1/schedules/{schedule.id}").json()
    schedules.update(schedule.id, tenant_id=tenant.tenant_id, paused=True)
    assert [r["id"] for r in runs_of(client, schedule.id)] == [first[0]["id"]]
    assert shown["last_status"] == "skipped"
    assert first[0]["id"] in shown["last_detail"]
    client.post(f"/v1/runs/{first[0]['id']}/cancel")
