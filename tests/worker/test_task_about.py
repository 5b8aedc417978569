"""A run's task from the API carries the run's identity (`RunRef`): the worker takes the run's
thread and slot without reading it, and its start decides. A task for a run that finished or
paused meanwhile must give back everything taken for it, as the read-first path did."""

from __future__ import annotations

import time
from typing import Any

import httpx
import redis

from runrelay.server.keys import RedisKeys
from runrelay.server.settings import Settings
from runrelay.server.store import Store
from runrelay.server.tables import RunRef
from runrelay.server.tenants import update_limits
from tests.conftest import TenantKey
from tests.sse import read_events
from worker.app import WorkerApp

ANALYST = {"agent": "bank credit-analyst", "input": {"company": "ACME Corp"}}
PAYMENT = {"agent": "bank payments", "message": "Pay ACME Supplies 1,250 EUR for INV-2041"}


def _wait_status(client: httpx.Client, run_id: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while (run := client.get(f"/v1/runs/{run_id}").json())["status"] != status:
        assert time.monotonic() < deadline, f"run {run_id} is {run['status']}, not {status}"
        time.sleep(0.05)
    return run


def _wait_gone(r: redis.Redis, key: str) -> None:
    deadline = time.monotonic() + 30
    while r.exists(key):
        assert time.monotonic() < deadline, f"{key} is still there"
        time.sleep(0.05)


def _execute(worker: WorkerApp, store: Store, run_id: str) -> None:
    """The task again, as the API sent it: with the run's identity."""
    run = store.get_run(run_id)
    assert run is not None
    worker.runtime.call(worker.runtime.executor.execute(run_id, RunRef.of(run)))


def test_a_task_about_a_finished_run_takes_nothing_and_leaves_its_thread_free(
    client: httpx.Client, tenant: TenantKey, worker: WorkerApp, settings: Settings, store: Store
) -> None:
    keys = RedisKeys(settings.redis_prefix)
    run_id = client.post("/v1/runs", json=ANALYST).json()["id"]
    run = _wait_status(client, run_id, "completed")
    thread_id = run["thread_id"]
    assert thread_id, "a run gets a thread"
    before = read_events(client, "GET", f"/v1/runs/{run_id}/events")
    with redis.Redis.from_url(settings.redis_url) as r:
        _wait_gone(r, keys.lease(run_id))

        _execute(worker, store, run_id)  # its start is refused: the run ended

        assert r.zscore(keys.tenant_slots(tenant.tenant_id), run_id) is None  # no slot kept
        assert r.get(keys.thread_owner(tenant.tenant_id, thread_id)) != run_id.encode()
        assert not r.exists(keys.lease(run_id))
    after = client.get(f"/v1/runs/{run_id}").json()
    assert (after["status"], after["attempts"]) == ("completed", run["attempts"])
    assert read_events(client, "GET", f"/v1/runs/{run_id}/events") == before
    # The thread is free: the next run on it starts and completes.
    follow_up = client.post("/v1/runs", json={**ANALYST, "thread_id": thread_id}).json()["id"]
    assert _wait_status(client, follow_up, "completed")["thread_id"] == thread_id


def test_a_task_about_a_paused_run_keeps_its_reservation_and_thread_but_no_slot(
    client: httpx.Client, tenant: TenantKey, worker: WorkerApp, settings: Settings, store: Store
) -> None:
    update_limits(store, tenant.tenant_id, token_budget=100_000, budget_period="day")
    keys = RedisKeys(settings.redis_prefix)
    run_id = client.post("/v1/runs", json=PAYMENT).json()["id"]
    run = _wait_status(client, run_id, "requires_action")
    slots, reservations = (
        keys.tenant_slots(tenant.tenant_id),
        keys.tenant_reservations(tenant.tenant_id),
    )
    owner = keys.thread_owner(tenant.tenant_id, run["thread_id"])
    with redis.Redis.from_url(settings.redis_url) as r:
        _wait_gone(r, keys.lease(run_id))
        reserved = r.hget(reservations, run_id)
        assert reserved is not None, "admission reserved tokens for the run"

        _execute(worker, store, run_id)  # its start is refused: the run waits for approval

        assert r.zscore(slots, run_id) is None  # the slot taken for it was given back
        assert r.hget(reservations, run_id) == reserved  # its reservation is its own still
        assert r.get(owner) == run_id.encode()  # and so is its thread
        assert not r.exists(keys.lease(run_id))
    assert client.get(f"/v1/runs/{run_id}").json()["status"] == "requires_action"

    [call] = run["required_action"]["tool_calls"]
    decided = client.post(
        f"/v1/runs/{run_id}/approvals", json={"call_id": call["tool_call_id"], "approved": True}
    )
    assert decided.status_code == 200, decided.text
    assert _wait_status(client, run_id, "completed")["required_action"] is None
    with redis.Redis.from_url(settings.redis_url) as r:
        assert r.hget(reservations, run_id) is None  # settled at the end
        assert r.zscore(slots, run_id) is None


def test_a_task_without_a_valid_identity_reads_the_run() -> None:
    """What a task's `about` may hold: anything else is ignored (the worker reads the run)."""
    ref = RunRef.of_message(
        "run_1",
        {"tenant_id": "ten_1", "thread_id": None, "created_at": "2026-12-03T09:00:00.123456+00:00"},
    )
    assert ref is not None and ref.thread_id is None
    assert RunRef.of_message("run_1", ref.to_message()) == ref
    assert ref.created_at.microsecond == 123456  # exact: a thread's waiters are ordered by it
    for about in (
        None,
        "x",
        {},
        {"tenant_id": 1, "thread_id": None, "created_at": "2026"},
        {"tenant_id": "t", "thread_id": 2, "created_at": "2026-12-03"},
        {"tenant_id": "t", "thread_id": None, "created_at": "yesterday"},
        {"tenant_id": "t", "thread_id": None},
    ):
        assert RunRef.of_message("run_1", about) is None, about
