"""Every way a run can end, end to end (the real shim over HTTP, a real worker): the log ends with
exactly one `done`, the archive in the database is the whole log, the tenant's slot, token
reservation and the run's thread are given back, and the lifecycle's listener saw the ending
exactly once: in its transaction and after it committed, or only after (a run it does not record
for, which ends in one statement on PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from redis.asyncio import Redis as AsyncRedis
from sqlmodel import Session

from api_shim.app import create_app
from runrelay.server.keys import RedisKeys
from runrelay.server.lifecycle import Lifecycle
from runrelay.server.settings import Settings
from runrelay.server.store import Store
from runrelay.server.tables import Run
from runrelay.server.task_sender import TaskSender
from runrelay.server.tenants import update_limits
from runrelay.server.threads import Threads
from runrelay.types import RunStatus
from tests.conftest import ServerThread, TenantKey
from tests.fake_openai import FakeOpenAI, http_error
from tests.listener import RECORDED, RecordingListener
from tests.sse import assert_complete_log, read_events, wait_finished
from tests.worker.test_sweeper import sent_to
from worker.app import WorkerApp
from worker.sweeper import Requeuer, Sweeper

SLOW = {"agent": "slow-analyst", "message": "go"}
PAYMENT = {"agent": "bank payments", "message": "Pay ACME Supplies 1,250 EUR for INV-2041"}
THREAD = "thr-endings"


def wait_for(what: str, check: Any, timeout_s: float = 20) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout_s} s")


def wait_status(client: httpx.Client, run_id: str, status: str) -> dict[str, Any]:
    def current() -> dict[str, Any] | None:
        run: dict[str, Any] = client.get(f"/v1/runs/{run_id}").json()
        return run if run["status"] == status else None

    return wait_for(f"run {run_id} {status}", current)  # type: ignore[no-any-return]


def assert_ended_once(
    run_id: str,
    status: str,
    code: str | None,
    *,
    client: httpx.Client,
    store: Store,
    settings: Settings,
    listener: RecordingListener,
    recorded: bool = True,
) -> list[dict[str, Any]]:
    """What every ending must show; returns the run's events. `recorded`: the run was created
    with the `RECORDED` metadata, so the listener sees its ending in the transaction too."""
    run = wait_finished(client, run_id)
    assert run["status"] == status
    assert (run["error"] or {}).get("code") == code
    events = read_events(client, "GET", f"/v1/runs/{run_id}/events")
    assert_complete_log(events)
    assert events[-1]["status"] == status
    assert (events[-1]["error"] or {}).get("code") == code

    keys = RedisKeys(settings.redis_prefix)
    with redis.Redis.from_url(settings.redis_url) as r:
        stream = [json.loads(fields[b"d"]) for _, fields in r.xrange(keys.events(run_id))]
        archived = [json.loads(data) for data in store.archived_events(run_id)]
        assert [e["seq"] for e in archived] == list(range(1, len(archived) + 1))
        assert archived == stream == events, "the archive is the whole log"

        tenant, thread = run["tenant_id"], run["thread_id"]

        def released() -> bool:
            return (
                r.zscore(keys.tenant_slots(tenant), run_id) is None
                and r.hget(keys.tenant_reservations(tenant), run_id) is None
                and r.lpos(keys.tenant_pending(tenant), run_id) is None
                and r.get(keys.thread_owner(tenant, thread)) != run_id.encode()
            )

        wait_for("slot, reservation and thread released", released)
    wait_for("the listener told after commit", lambda: listener.endings(run_id)[1])
    in_transaction = [status] if recorded else []
    assert listener.endings(run_id) == (in_transaction, [status]), "seen exactly once"
    return events


@pytest.fixture
def ended(
    client: httpx.Client, store: Store, settings: Settings, lifecycle_listener: RecordingListener
) -> Any:
    def check(
        run_id: str, status: str, code: str | None = None, *, recorded: bool = True
    ) -> list[dict[str, Any]]:
        return assert_ended_once(
            run_id,
            status,
            code,
            client=client,
            store=store,
            settings=settings,
            listener=lifecycle_listener,
            recorded=recorded,
        )

    return check


def create(client: httpx.Client, body: dict[str, Any], *, recorded: bool = True) -> str:
    metadata = RECORDED if recorded else {}
    response = client.post("/v1/runs", json={**body, "thread_id": THREAD, "metadata": metadata})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "not-recorded"])
def test_completed(
    client: httpx.Client, ended: Any, store: Store, tenant: TenantKey, recorded: bool
) -> None:
    run_id = create(client, {"agent": "credit-risk-analyst", "message": "ACME"}, recorded=recorded)
    ended(run_id, "completed", recorded=recorded)
    # Its messages joined the thread's history, after the earlier runs' with no gap.
    history = Threads(store.engine).messages(tenant.tenant_id, THREAD, limit=1000)
    assert [m.seq for m in history] == list(range(1, len(history) + 1))
    own = [m for m in history if m.run_id == run_id]
    assert own and own == history[-len(own) :]
    assert (own[0].role, own[0].message["content"]) == ("user", "ACME")
    assert own[-1].role == "assistant"


def test_failed(client: httpx.Client, ended: Any, fake_openai: FakeOpenAI) -> None:
    model = f"m-{secrets.token_hex(4)}"
    fake_openai.plan(http_error(401, model=model))
    run_id = create(client, {"agent": "openai-analyst", "message": "x", "model_id": model})
    ended(run_id, "failed", "provider_auth")


def test_run_timeout(client: httpx.Client, ended: Any) -> None:
    run_id = create(client, {**SLOW, "timeout_s": 1})
    ended(run_id, "failed", "run_timeout")


def test_cancelled_while_running(client: httpx.Client, ended: Any) -> None:
    run_id = create(client, SLOW)
    wait_status(client, run_id, "running")
    assert client.post(f"/v1/runs/{run_id}/cancel").status_code in (200, 202)
    ended(run_id, "cancelled", "cancelled")


def test_cancelled_while_queued(
    client: httpx.Client, ended: Any, store: Store, tenant: TenantKey
) -> None:
    update_limits(store, tenant.tenant_id, max_concurrent_runs=1, max_queued_runs=10)
    first = client.post("/v1/runs", json=SLOW).json()["id"]  # holds the tenant's one slot
    run_id = create(client, SLOW)
    assert client.get(f"/v1/runs/{run_id}").json()["status"] == "queued"

    cancelled = client.post(f"/v1/runs/{run_id}/cancel")

    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    ended(run_id, "cancelled", "cancelled")
    client.post(f"/v1/runs/{first}/cancel")


def test_cancelled_while_paused(client: httpx.Client, ended: Any) -> None:
    run_id = create(client, PAYMENT)
    wait_status(client, run_id, "requires_action")
    assert client.post(f"/v1/runs/{run_id}/cancel").status_code == 200
    ended(run_id, "cancelled", "cancelled")


def test_expired_waiting_for_approval(
    client: httpx.Client, ended: Any, settings: Settings, store: Store, worker: WorkerApp
) -> None:
    run_id = create(client, PAYMENT)
    wait_status(client, run_id, "requires_action")
    # The worker's own lifecycle (with its listeners), swept with a short approval timeout.
    lifecycle = worker.runtime.lifecycle
    short = settings.model_copy(update={"approval_timeout_s": 0.01})
    time.sleep(0.05)

    async def sweep() -> list[str]:
        r = AsyncRedis.from_url(settings.redis_url)
        try:
            own = Lifecycle.build(short, store, r, lifecycle.listeners)
            keys = RedisKeys(settings.redis_prefix)
            sweeper = Sweeper(short, store, r, keys, Requeuer(r, keys, 30, sent_to([])), own)
            return await sweeper.expire_paused()
        finally:
            await r.aclose()

    assert run_id in asyncio.run(sweep())
    events = ended(run_id, "expired", "approval_expired")
    assert "RUNRELAY_APPROVAL_TIMEOUT_S" in events[-1]["error"]["message"]


def test_too_many_attempts(
    client: httpx.Client, ended: Any, store: Store, settings: Settings, tenant: TenantKey
) -> None:
    # Held back by the tenant's one slot, then marked as if every allowed worker had died
    # running it; once the slot frees, the dispatcher sends it to a worker.
    update_limits(store, tenant.tenant_id, max_concurrent_runs=1, max_queued_runs=10)
    first = client.post("/v1/runs", json=SLOW).json()["id"]
    run_id = create(client, SLOW)
    with Session(store.engine) as session:
        row = session.get(Run, run_id)
        assert row is not None and row.status == "queued"
        row.status, row.attempts = RunStatus.RUNNING, settings.max_run_attempts
        session.add(row)
        session.commit()
    client.post(f"/v1/runs/{first}/cancel")

    events = ended(run_id, "failed", "too_many_attempts")
    assert f"{settings.max_run_attempts} times" in events[-1]["error"]["message"]


@pytest.fixture
def shim_with_broken_queue(
    settings: Settings, lifecycle_listener: RecordingListener, worker: WorkerApp
) -> Iterator[str]:
    """A second shim whose runs go to a queue whose Redis key holds a string, not a list:
    Redis refuses every push of a task there for real (WRONGTYPE), in the round trip that
    appended the run's `run_queued`."""
    asgi: Any = create_app(settings, [lifecycle_listener])
    server = ServerThread(asgi)
    server.start()
    inner = asgi  # the FastAPI app inside the ASGI middleware
    while not hasattr(inner, "state"):
        inner = inner.app
    state = inner.state.runrelay
    broken = settings.model_copy(update={"task_queue": f"broken-{secrets.token_hex(4)}"})
    queue_key = broken.redis_prefix + broken.task_queue
    plain = redis.Redis.from_url(settings.redis_url)
    plain.set(queue_key, "not a list")
    state.sender.close()
    state.sender = TaskSender(broken, AsyncRedis.from_url(settings.redis_url))
    yield server.base_url
    server.stop()
    plain.delete(queue_key)
    plain.close()


def test_enqueue_failure_ends_failed_with_done(
    shim_with_broken_queue: str,
    tenant: TenantKey,
    store: Store,
    settings: Settings,
    lifecycle_listener: RecordingListener,
) -> None:
    with httpx.Client(
        base_url=shim_with_broken_queue, headers=tenant.headers, timeout=60
    ) as client:
        body = {**SLOW, "thread_id": THREAD, "metadata": RECORDED}
        response = client.post("/v1/runs", json=body)

        assert response.status_code == 503
        assert response.json()["error"]["code"] == "enqueue_failed"
        [run] = client.get("/v1/runs").json()["data"]
        assert_ended_once(
            run["id"],
            "failed",
            "enqueue_failed",
            client=client,
            store=store,
            settings=settings,
            listener=lifecycle_listener,
        )
