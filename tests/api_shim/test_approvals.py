"""Approvals through the real shim and worker: a run calling an approval-required tool pauses in
`requires_action` with no worker holding it, and a decision resumes it from its checkpoint."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx
import redis

from runrelay import AgentRunParams, AsyncClient, Client
from runrelay.server.approvals import PausedCalls, SavedCheckpoint
from runrelay.server.run_table import RunTable
from runrelay.server.settings import Settings
from runrelay.server.store import Store, new_id
from runrelay.server.tables import Run, utcnow
from runrelay.server.tenants import update_limits
from runrelay.types import RunStatus
from tests.conftest import TenantKey
from tests.sse import assert_complete_log, read_events, wait_finished
from worker.app import WorkerApp

PAYMENT = {"agent": "bank payments", "message": "Pay ACME Supplies 1,250 EUR for INV-2041"}


def wait_status(client: httpx.Client, run_id: str, status: str, timeout_s: float = 20) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = client.get(f"/v1/runs/{run_id}").json()
        if run["status"] == status:
            return run
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} is {run['status']}, not {status}, after {timeout_s} s")


def paused_run(client: httpx.Client) -> dict[str, Any]:
    created = client.post("/v1/runs", json=PAYMENT)
    assert created.status_code == 202, created.text
    return wait_status(client, created.json()["id"], "requires_action")


def test_approval_round_trip_resumes_the_run_and_runs_the_payment_once(
    client: httpx.Client, tenant: TenantKey, store: Store, settings: Settings, worker: WorkerApp
) -> None:
    # One slot: if the paused run held it (or a worker), the second run could not start.
    update_limits(store, tenant.tenant_id, max_concurrent_runs=1, max_queued_runs=10)
    run = paused_run(client)
    run_id = run["id"]

    action = run["required_action"]
    assert action["type"] == "approve_tool_calls"
    [call] = action["tool_calls"]
    assert call["name"] == "send_payment" and call["approved"] is None
    assert call["arguments"] == {
        "payee": "ACME Supplies",
        "amount": 1250.0,
        "reference": "INV-2041",
    }
    # No worker holds the paused run: no lease, no control on the worker, slot free.
    with redis.Redis.from_url(settings.redis_url) as r:
        assert not r.exists(f"{settings.redis_prefix}run:{run_id}:lease")
    assert run_id not in worker.runtime.controls
    other = client.post("/v1/runs", json={"agent": "credit-risk-analyst", "message": "ACME"})
    assert wait_finished(client, other.json()["id"])["status"] == "completed"
    assert client.get(f"/v1/runs/{run_id}").json()["status"] == "requires_action"

    decided = client.post(
        f"/v1/runs/{run_id}/approvals", json={"call_id": call["tool_call_id"], "approved": True}
    )
    assert decided.status_code == 200, decided.text
    assert decided.json()["status"] in ("queued", "running", "completed")
    finished = wait_finished(client, run_id)

    assert finished["status"] == "completed"
    assert finished["required_action"] is None
    events = read_events(client, "GET", f"/v1/runs/{run_id}/events")
    assert_complete_log(events)
    types = [e["type"] for e in events]
    assert types.count("approval_required") == 1
    assert types.index("approval_required") < types.index("done")
    results = {e["name"]: e for e in events if e["type"] == "tool_call_result"}
    assert results["send_payment"]["approved"] is True
    assert results["send_payment"]["result"]["status"] == "sent"
    assert "metadata" not in types  # nothing was superseded: the resume picked up exactly
    # The payment tool reported progress and offered a follow-up.
    progress = [e for e in events if e["type"] == "custom"]
    assert [p["data"]["message"] for p in progress] == [
        "submitting the payment to the bank",
        "payment accepted",
    ]
    [suggestions] = [e for e in events if e["type"] == "suggestions"]
    assert [s["label"] for s in suggestions["suggestions"]] == [
        "Pay another supplier",
        "Show today's payments",
    ]
    assert finished["usage_by_model"]["scripted-payments"]["total_tokens"] > 0


def test_a_rejection_reaches_the_model_and_the_payment_is_not_sent(client: httpx.Client) -> None:
    run = paused_run(client)
    call_id = run["required_action"]["tool_calls"][0]["tool_call_id"]

    decided = client.post(
        f"/v1/runs/{run['id']}/approvals",
        json={"call_id": call_id, "approved": False, "reason": "wrong IBAN on the invoice"},
    )
    assert decided.status_code == 200, decided.text
    assert wait_finished(client, run["id"])["status"] == "completed"

    events = read_events(client, "GET", f"/v1/runs/{run['id']}/events")
    [result] = [
        e for e in events if e["type"] == "tool_call_result" and e["name"] == "send_payment"
    ]
    assert result["approved"] is False
    assert result["error"] == "the call was rejected by the approver: wrong IBAN on the invoice"
    assert result["result"] is None


def test_wait_endpoint_answers_when_the_run_pauses(client: httpx.Client) -> None:
    started = time.monotonic()
    answer = client.post("/v1/runs/wait", json=PAYMENT)

    assert answer.status_code == 200, answer.text
    assert time.monotonic() - started < 10
    body = answer.json()
    assert body["metadata"]["status"] == "requires_action"
    assert body["run"]["required_action"]["tool_calls"][0]["name"] == "send_payment"


def test_bad_decisions_are_refused_and_change_nothing(
    client: httpx.Client, api: str, store: Store
) -> None:
    run = paused_run(client)
    url = f"/v1/runs/{run['id']}/approvals"
    call_id = run["required_action"]["tool_calls"][0]["tool_call_id"]

    unknown = client.post(url, json={"call_id": "call_nope", "approved": True})
    assert unknown.status_code == 422
    assert unknown.json()["error"]["param"] == "call_id"
    assert call_id in unknown.json()["error"]["message"]
    not_bool = client.post(url, json={"call_id": call_id, "approved": "yes"})
    assert not_bool.status_code == 422
    assert not_bool.json()["error"]["param"].endswith("approved")
    missing = client.post(url, json={"approved": True})
    assert missing.status_code == 422
    outsider = store.create_tenant(f"outsider-{run['id'][-6:]}")
    key = store.create_api_key(outsider.id)
    foreign = httpx.post(
        f"{api}{url}",
        json={"call_id": call_id, "approved": True},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert foreign.status_code == 404
    assert client.get(f"/v1/runs/{run['id']}").json()["status"] == "requires_action"

    assert client.post(url, json={"call_id": call_id, "approved": False}).status_code == 200
    again = client.post(url, json={"call_id": call_id, "approved": True})
    assert again.status_code == 409
    wait_finished(client, run["id"])
    # A client retrying its decision after a lost answer gets the run, not an error.
    assert client.post(url, json={"call_id": call_id, "approved": False}).status_code == 200
    late = client.post(url, json={"call_id": call_id, "approved": True})
    assert late.status_code == 409
    assert late.json()["error"]["code"] == "run_not_awaiting_approval"


def test_a_paused_run_can_be_cancelled_without_a_worker(client: httpx.Client) -> None:
    run = paused_run(client)

    cancelled = client.post(f"/v1/runs/{run['id']}/cancel")

    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    events = read_events(client, "GET", f"/v1/runs/{run['id']}/events")
    assert_complete_log(events)
    assert events[-1]["status"] == "cancelled"
    assert not any(e["type"] == "tool_call_result" and e["name"] == "send_payment" for e in events)


def test_a_stream_stays_open_across_the_pause_and_ends_with_done(
    client: httpx.Client, api: str, tenant: TenantKey
) -> None:
    run = paused_run(client)
    call_id = run["required_action"]["tool_calls"][0]["tool_call_id"]

    def approve_soon() -> None:
        time.sleep(0.5)
        with httpx.Client(base_url=api, headers=tenant.headers) as approver:
            approver.post(
                f"/v1/runs/{run['id']}/approvals", json={"call_id": call_id, "approved": True}
            )

    thread = threading.Thread(target=approve_soon)
    thread.start()
    events = read_events(client, "GET", f"/v1/runs/{run['id']}/events")
    thread.join()

    assert_complete_log(events)
    assert events[-1]["status"] == "completed"


def test_sdk_run_reports_the_pause_and_approve_resumes_it(api: str, tenant: TenantKey) -> None:
    with Client(tenant.key, base_url=api) as sdk:
        paused = sdk.agents.run(
            AgentRunParams(agent_id="bank.payments-officer", message="Pay ACME")
        )

        assert paused.status == "requires_action"
        assert paused.required_action is not None
        [call] = paused.required_action.tool_calls
        assert call.name == "send_payment"

        sdk.runs.approve(paused.run_id, call.tool_call_id)
        events = list(sdk.runs.events(paused.run_id))

    assert events[-1]["status"] == "completed"
    sent = [e for e in events if e.get("name") == "send_payment" and "result" in e]
    assert sent[0]["result"]["status"] == "sent"


def test_async_sdk_reject_is_told_to_the_model(api: str, tenant: TenantKey) -> None:
    async def scenario() -> list[dict[str, Any]]:
        async with AsyncClient(tenant.key, base_url=api) as sdk:
            paused = await sdk.agents.run(
                AgentRunParams(agent_id="bank.payments-officer", message="Pay")
            )
            assert paused.required_action is not None
            call_id = paused.required_action.tool_calls[0].tool_call_id
            await sdk.runs.reject(paused.run_id, call_id, reason="not budgeted")
            return [event async for event in sdk.runs.events(paused.run_id)]

    events = asyncio.run(scenario())

    sent = [e for e in events if e.get("name") == "send_payment" and "result" in e]
    assert sent[0]["error"] == "the call was rejected by the approver: not budgeted"


def test_a_run_whose_cancel_was_requested_is_not_paused(store: Store, tenant: TenantKey) -> None:
    """A cancel that lands while the worker pauses the run wins: the pause is refused."""
    run = store.create_run(
        Run(
            id=new_id("run"),
            tenant_id=tenant.tenant_id,
            status=RunStatus.QUEUED,
            agent_name="payments-officer",
            agent_id="bank.payments-officer",
        )
    )
    table = RunTable(store.engine)
    table.start(run.id, "t1")
    table.flag_cancel(run.id)
    paused = PausedCalls(
        tool_calls=[], paused_at=utcnow(), checkpoint=SavedCheckpoint(next_seq=2, state={})
    )

    assert table.pause(run.id, "t1", paused) is None
    current = store.get_run(run.id)
    assert current is not None and current.status is RunStatus.RUNNING
