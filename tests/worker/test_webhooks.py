"""Webhooks end to end: a tests-side receiver verifies signatures with the Standard Webhooks
reference code; retries keep one webhook-id; 410 disables; private targets are refused when not
allowed; the delivery log shows the attempts; a delivery whose task was lost is swept."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from runrelay.server import webhook_send, webhooks
from runrelay.server.keys import SWEEP_WEBHOOKS_TASK
from runrelay.server.settings import Settings
from runrelay.server.store import Store
from tests.conftest import TenantKey
from tests.sse import wait_finished
from worker.app import WorkerApp


@dataclass
class Receiver:
    answers: list[int] = field(default_factory=list)  # status codes to answer, then 200
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            code = state.answers.pop(0) if state.answers else 200
            self.send_response(code)
            self.end_headers()
            self.wfile.write(b"ok" * 5000)  # more than the log keeps

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def wait_until(check: Any, timeout_s: float = 30) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError("timed out")


def run_with_webhook(client: httpx.Client, webhook: Any) -> dict[str, Any]:
    response = client.post(
        "/v1/runs", json={"agent": "credit-risk-analyst", "message": "hi", "webhook": webhook}
    )
    assert response.status_code == 202, response.text
    run: dict[str, Any] = response.json()
    return run


def test_completed_run_posts_a_signed_event_the_reference_code_verifies(
    client: httpx.Client, receiver: Receiver, store: Store, tenant: TenantKey, settings: Settings
) -> None:
    secret = webhooks.rotate_secret(store.engine, tenant.tenant_id, grace_s=60).secret
    run = run_with_webhook(client, receiver.url)
    assert run["webhook"] == {"url": receiver.url, "events": None}
    wait_finished(client, run["id"])
    headers, body = wait_until(lambda: receiver.received)[0]
    event = Webhook(secret).verify(body, headers)
    assert event["type"] == "run.completed"
    assert event["data"]["run"]["id"] == run["id"]
    assert event["data"]["run"]["status"] == "completed"
    assert headers["webhook-id"].startswith("msg_")
    # The sender records the attempt once it has the answer: after the receiver saw the request.
    log = wait_until(
        lambda: [
            d
            for d in client.get(f"/v1/runs/{run['id']}/webhooks").json()["data"]
            if d["status"] != "pending"
        ]
    )
    assert len(log) == 1 and log[0]["status"] == "delivered"
    assert log[0]["attempts"][0]["status_code"] == 200
    assert len(log[0]["attempts"][0]["response"]) == settings.webhook_max_response_bytes


def test_rotation_signs_with_both_secrets(
    client: httpx.Client, receiver: Receiver, store: Store, tenant: TenantKey
) -> None:
    old = webhooks.rotate_secret(store.engine, tenant.tenant_id, grace_s=60).secret
    new = webhooks.rotate_secret(store.engine, tenant.tenant_id, grace_s=60).secret
    run = run_with_webhook(client, receiver.url)
    wait_finished(client, run["id"])
    headers, body = wait_until(lambda: receiver.received)[0]
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(body, headers)
    Webhook(new).verify(body, headers)


def test_500_twice_then_200_is_three_attempts_with_one_webhook_id(
    client: httpx.Client, receiver: Receiver
) -> None:
    receiver.answers = [500, 500]
    run = run_with_webhook(client, {"url": receiver.url, "events": ["run.completed"]})
    wait_finished(client, run["id"])
    wait_until(lambda: len(receiver.received) == 3)
    assert len({headers["webhook-id"] for headers, _ in receiver.received}) == 1
    assert len({body for _, body in receiver.received}) == 1
    log = wait_until(
        lambda: [
            d
            for d in client.get(f"/v1/runs/{run['id']}/webhooks").json()["data"]
            if d["status"] == "delivered"
        ]
    )
    assert [a["status_code"] for a in log[0]["attempts"]] == [500, 500, 200]


def test_410_disables_the_delivery_and_redeliver_sends_it_again(
    client: httpx.Client, receiver: Receiver
) -> None:
    receiver.answers = [410]
    run = run_with_webhook(client, receiver.url)
    wait_finished(client, run["id"])
    delivery = wait_until(
        lambda: [
            d
            for d in client.get(f"/v1/runs/{run['id']}/webhooks").json()["data"]
            if d["status"] == "disabled"
        ]
    )[0]
    time.sleep(1)  # no retry follows a 410
    assert len(receiver.received) == 1
    response = client.post(f"/v1/runs/{run['id']}/webhooks/{delivery['id']}/redeliver")
    assert response.status_code == 202
    wait_until(lambda: len(receiver.received) == 2)
    assert receiver.received[1][0]["webhook-id"] == delivery["id"]
    missing = client.post(f"/v1/runs/{run['id']}/webhooks/msg_nope/redeliver")
    assert missing.status_code == 404


def test_events_filter_leaves_out_other_events(client: httpx.Client, receiver: Receiver) -> None:
    run = run_with_webhook(client, {"url": receiver.url, "events": ["run.failed"]})
    wait_finished(client, run["id"])
    time.sleep(1)
    assert receiver.received == []
    assert client.get(f"/v1/runs/{run['id']}/webhooks").json()["data"] == []


def test_bad_webhook_is_a_422(client: httpx.Client) -> None:
    for bad in ["ftp://example.com/x", {"url": "https://x.example", "events": ["run.exploded"]}]:
        response = client.post(
            "/v1/runs", json={"agent": "credit-risk-analyst", "message": "hi", "webhook": bad}
        )
        assert response.status_code == 422, response.text
        assert "webhook" in response.text


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/x", "http://10.1.2.3/x", "http://169.254.169.254/", "http://[::1]/"]
)
def test_private_targets_are_refused_unless_allowed(settings: Settings, url: str) -> None:
    strict = settings.model_copy(update={"webhook_allow_private_targets": False})

    async def send() -> None:
        async with httpx.AsyncClient() as http:
            await webhook_send.attempt(http, strict, url=url, body="{}", headers={})

    with pytest.raises(webhook_send.TargetRefused, match="not a public address"):
        asyncio.run(send())


def test_retry_after_is_honoured_and_4xx_is_not_retried(settings: Settings) -> None:
    result = webhook_send.AttemptResult(429, None, 1, None, retry_after_s=100.0)
    following = webhook_send.decide(result, 1, settings)
    assert following.status == "pending" and following.at is not None
    assert (following.at - webhooks.utcnow()).total_seconds() > 90
    assert (
        webhook_send.decide(webhook_send.AttemptResult(404, None, 1, None), 1, settings).status
        == "failed"
    )
    last = len(settings.webhook_retry_delays_s) + 1
    assert (
        webhook_send.decide(webhook_send.AttemptResult(503, None, 1, None), last, settings).status
        == "failed"
    )


def test_a_delivery_whose_task_was_lost_is_sent_by_the_sweep(
    client: httpx.Client,
    receiver: Receiver,
    store: Store,
    worker: WorkerApp,
    settings: Settings,
) -> None:
    """As after a worker SIGKILLed between the outcome's commit and sending the task: the
    delivery row is there, pending and due, and no task carries it."""
    run = run_with_webhook(client, {"url": receiver.url, "events": ["run.failed"]})
    wait_finished(client, run["id"])
    finished = store.get_run(run["id"])
    assert finished is not None
    finished.status = "failed"  # as if it had failed: a delivery nobody sent
    from sqlmodel import Session

    with Session(store.engine) as session:
        webhooks.WebhookListener(lambda _: None).in_transaction(
            session,
            finished,
            "running",  # type: ignore[arg-type]
        )
        session.commit()
    time.sleep(settings.webhook_lost_after_s + 0.2)
    worker.send_task(SWEEP_WEBHOOKS_TASK, queue=settings.control_queue)
    _, body = wait_until(lambda: receiver.received)[0]
    assert json.loads(body)["type"] == "run.failed"


def test_a_finished_batch_posts_one_signed_batch_completed_event(
    client: httpx.Client, tenant: TenantKey, store: Store, receiver: Receiver, worker: WorkerApp
) -> None:
    secret = webhooks.rotate_secret(store.engine, tenant.tenant_id, grace_s=60).secret
    lines = [
        {"custom_id": f"c-{n}", "agent": "credit-risk-analyst", "message": "hi"} for n in range(3)
    ]
    response = client.post(
        "/v1/batches",
        content="".join(json.dumps(line) + "\n" for line in lines).encode(),
        params={"webhook": receiver.url},
        headers={"Content-Type": "application/jsonl"},
    )
    assert response.status_code in (200, 201, 202), response.text
    batch_id = response.json()["id"]
    wait_until(lambda: client.get(f"/v1/batches/{batch_id}").json()["status"] == "completed", 120)
    headers, body = wait_until(lambda: receiver.received, 60)[0]
    event = Webhook(secret).verify(body, headers)
    assert event["type"] == "batch.completed"
    assert event["data"]["batch"]["id"] == batch_id
    assert event["data"]["batch"]["request_counts"]["completed"] == 3
    time.sleep(1)
    assert len(receiver.received) == 1, "one event for the batch, none for its runs"
