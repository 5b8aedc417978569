"""Threads as a client sees them, end to end (shim over HTTP, a real worker, the fake OpenAI
server): history reaches the model and `GET /v1/threads/{id}`, tenants stay apart, and runs of
one thread take turns as `multitask_strategy` says."""

from __future__ import annotations

import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from itertools import pairwise
from typing import Any

import httpx
import redis

from runrelay.server.keys import RedisKeys
from runrelay.server.settings import Settings
from runrelay.server.store import Store
from tests.conftest import TenantKey
from tests.fake_openai import FakeOpenAI, Plan, text_answer, tool_call_answer
from tests.sse import wait_finished


def body(model: str, thread_id: str | None, message: str, **extra: Any) -> dict[str, Any]:
    fields = {"agent": "openai-analyst", "message": message, "model_id": model, **extra}
    return {**fields, "thread_id": thread_id} if thread_id else fields


def wait_run(client: httpx.Client, model: str, thread_id: str, message: str) -> dict[str, Any]:
    response = client.post("/v1/runs/wait", json=body(model, thread_id, message))
    assert response.status_code == 200, response.text
    run: dict[str, Any] = response.json()["run"]
    assert run["status"] == "completed", run
    return run


def slow_answer(model: str, text: str, seconds: float) -> Plan:
    """Queue an answer that streams for about `seconds` (chunks 0.1 s apart, well under the
    provider's 1 s silence timeout)."""
    plan = text_answer(text, chunks=max(1, int(seconds / 0.1)), model=model)
    plan.delay_s = 0.1
    return plan


def sent(fake: FakeOpenAI, model: str) -> list[list[dict[str, Any]]]:
    """The messages of each request the model got, in order."""
    return [r.body["messages"] for r in fake.requests if r.body.get("model") == model]


def wait_status(client: httpx.Client, run_id: str, status: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while client.get(f"/v1/runs/{run_id}").json()["status"] != status:
        assert time.monotonic() < deadline, f"run {run_id} never became {status}"
        time.sleep(0.05)


def at(value: str) -> datetime:
    return datetime.fromisoformat(value)


def test_three_runs_on_a_thread_share_history_with_the_model_and_the_endpoint(
    client: httpx.Client, fake_openai: FakeOpenAI
) -> None:
    model, thread = f"m-{secrets.token_hex(4)}", f"chat-{secrets.token_hex(4)}"
    fake_openai.plan(
        text_answer("Hello Ada.", model=model),
        tool_call_answer([("lookup_credit_score", {"company": "ACME Corp"})], model=model),
        text_answer("ACME scores well.", model=model),
        text_answer("Your name is Ada.", model=model),
    )
    runs = [
        wait_run(client, model, thread, "My name is Ada."),
        wait_run(client, model, thread, "Score ACME Corp."),
        wait_run(client, model, thread, "What is my name?"),
    ]
    assert [r["thread_id"] for r in runs] == [thread] * 3

    last = sent(fake_openai, model)[-1]
    assert [m["role"] for m in last] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
    ]
    assert [m.get("content") for m in last[1:4]] == [
        "My name is Ada.",
        "Hello Ada.",
        "Score ACME Corp.",
    ]
    assert last[4]["tool_calls"][0]["id"] == last[5]["tool_call_id"]
    assert last[-1]["content"] == "What is my name?"

    thread_obj = client.get(f"/v1/threads/{thread}").json()
    messages = thread_obj["messages"]
    assert thread_obj["id"] == thread and thread_obj["active_run_ids"] == []
    assert [m["seq"] for m in messages] == list(range(1, 9))
    assert [m["role"] for m in messages] == [m["role"] for m in last[1:]] + ["assistant"]
    assert messages[-1]["content"] == "Your name is Ada."
    assert messages[3]["tool_calls"] and messages[4]["tool_call_id"] == "call_fake0"
    assert [m["run_id"] for m in messages] == [runs[0]["id"]] * 2 + [runs[1]["id"]] * 4 + [
        runs[2]["id"]
    ] * 2
    assert at(thread_obj["updated_at"]) >= at(runs[2]["finished_at"]) > at(thread_obj["created_at"])

    page = client.get(f"/v1/threads/{thread}", params={"limit": 3}).json()
    assert [m["seq"] for m in page["messages"]] == [1, 2, 3] and page["has_more"]
    rest = client.get(
        f"/v1/threads/{thread}", params={"after_seq": page["next_after_seq"], "limit": 10}
    ).json()
    assert [m["seq"] for m in rest["messages"]] == list(range(4, 9)) and not rest["has_more"]
    listed = client.get("/v1/runs", params={"thread_id": thread}).json()["data"]
    assert [r["id"] for r in listed] == [r["id"] for r in reversed(runs)]


def test_threads_are_per_tenant(
    client: httpx.Client, api: str, store: Store, fake_openai: FakeOpenAI
) -> None:
    model, thread = f"m-{secrets.token_hex(4)}", f"shared-{secrets.token_hex(4)}"
    wait_run(client, model, thread, "I am Alice.")
    other_tenant = store.create_tenant(f"other-{secrets.token_hex(6)}")
    headers = {"Authorization": f"Bearer {store.create_api_key(other_tenant.id)}"}
    with httpx.Client(base_url=api, headers=headers, timeout=30) as other:
        missing = other.get(f"/v1/threads/{thread}")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "thread_not_found"
        assert missing.json()["error"]["param"] == "thread_id"
        wait_run(other, model, thread, "Who am I?")
        assert [m["content"] for m in other.get(f"/v1/threads/{thread}").json()["messages"]] == [
            "Who am I?",
            "Hello from the fake server.",
        ]
    assert [m["role"] for m in sent(fake_openai, model)[-1]] == ["system", "user"]
    mine = client.get(f"/v1/threads/{thread}").json()["messages"]
    assert [m["content"] for m in mine] == ["I am Alice.", "Hello from the fake server."]


def test_unknown_and_junk_thread_ids_are_404(client: httpx.Client) -> None:
    for path in ("/v1/threads/nope", "/v1/threads/a%00b", f"/v1/threads/{'x' * 201}"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "thread_not_found"
    assert client.get("/v1/threads/t", params={"after_seq": -1}).status_code == 422


def test_a_run_without_thread_id_starts_a_thread_that_can_be_continued(
    client: httpx.Client, fake_openai: FakeOpenAI
) -> None:
    model = f"m-{secrets.token_hex(4)}"
    first = client.post("/v1/runs/wait", json=body(model, None, "Remember 42.")).json()["run"]
    assert first["thread_id"].startswith("thr_")
    wait_run(client, model, first["thread_id"], "What did I ask you to remember?")
    assert sent(fake_openai, model)[-1][1]["content"] == "Remember 42."


def test_strategy_without_thread_id_or_unknown_is_422(client: httpx.Client) -> None:
    lone = client.post("/v1/runs", json=body("m", None, "hi", multitask_strategy="reject"))
    assert lone.status_code == 422
    assert lone.json()["error"]["param"] == "multitask_strategy"
    assert "thread_id" in lone.json()["error"]["message"]
    bad = client.post("/v1/runs", json=body("m", "t", "hi", multitask_strategy="queue"))
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "multitask_strategy"


def test_reject_refuses_a_busy_thread_and_creates_nothing(
    client: httpx.Client, fake_openai: FakeOpenAI
) -> None:
    model, thread = f"m-{secrets.token_hex(4)}", f"rej-{secrets.token_hex(4)}"
    fake_openai.plan(slow_answer(model, "Slow answer.", 1.0))
    active = client.post("/v1/runs", json=body(model, thread, "first")).json()

    refused = client.post(
        "/v1/runs", json=body(model, thread, "second", multitask_strategy="reject")
    )
    assert refused.status_code == 409
    error = refused.json()["error"]
    assert error["code"] == "thread_busy" and error["param"] == "thread_id"
    assert active["id"] in error["message"]
    listed = client.get("/v1/runs", params={"thread_id": thread}).json()["data"]
    assert [r["id"] for r in listed] == [active["id"]]

    assert wait_finished(client, active["id"])["status"] == "completed"
    usage = client.get("/v1/usage").json()
    assert usage["runs"]["running"] == 0 and usage["runs"]["queued"] == 0, "no slot leaked"
    assert usage["tokens"]["reserved"] == 0, "no reservation leaked"
    again = client.post("/v1/runs", json=body(model, thread, "third", multitask_strategy="reject"))
    assert again.status_code == 202, "an idle thread takes a rejecting run"
    assert wait_finished(client, again.json()["id"])["status"] == "completed"


def test_enqueue_runs_after_the_active_run_and_sees_its_history(
    client: httpx.Client, fake_openai: FakeOpenAI
) -> None:
    model, thread = f"m-{secrets.token_hex(4)}", f"enq-{secrets.token_hex(4)}"
    fake_openai.plan(slow_answer(model, "First answer.", 1.0))
    first = client.post("/v1/runs", json=body(model, thread, "first")).json()
    second = client.post("/v1/runs", json=body(model, thread, "second")).json()  # default
    time.sleep(0.5)
    assert client.get(f"/v1/runs/{second['id']}").json()["status"] == "queued"
    assert client.get(f"/v1/threads/{thread}").json()["active_run_ids"] == [
        first["id"],
        second["id"],
    ]

    done = [wait_finished(client, run["id"]) for run in (first, second)]
    assert [run["status"] for run in done] == ["completed", "completed"]
    assert at(done[1]["started_at"]) >= at(done[0]["finished_at"])
    assert [m["content"] for m in sent(fake_openai, model)[-1][1:]] == [
        "first",
        "First answer.",
        "second",
    ]


def test_interrupt_cancels_the_active_run_and_then_runs(
    client: httpx.Client, fake_openai: FakeOpenAI
) -> None:
    model, thread = f"m-{secrets.token_hex(4)}", f"int-{secrets.token_hex(4)}"
    fake_openai.plan(slow_answer(model, "A long answer that will not finish.", 10.0))
    first = client.post("/v1/runs", json=body(model, thread, "first")).json()
    wait_status(client, first["id"], "running")
    second = client.post(
        "/v1/runs", json=body(model, thread, "instead", multitask_strategy="interrupt")
    ).json()

    interrupted = wait_finished(client, first["id"])
    assert interrupted["status"] == "cancelled"
    done = wait_finished(client, second["id"])
    assert done["status"] == "completed"
    assert at(done["started_at"]) >= at(interrupted["finished_at"])
    thread_obj = client.get(f"/v1/threads/{thread}").json()
    assert [m["run_id"] for m in thread_obj["messages"]] == [second["id"]] * 2, (
        "a cancelled run adds nothing to its thread"
    )
    assert [m["role"] for m in sent(fake_openai, model)[-1]] == ["system", "user"]


def test_a_cancelled_waiting_run_does_not_block_its_thread(
    client: httpx.Client, fake_openai: FakeOpenAI, settings: Settings, tenant: TenantKey
) -> None:
    model, thread = f"m-{secrets.token_hex(4)}", f"cxl-{secrets.token_hex(4)}"
    fake_openai.plan(slow_answer(model, "First answer.", 1.5))
    first = client.post("/v1/runs", json=body(model, thread, "first")).json()
    waiting = client.post("/v1/runs", json=body(model, thread, "never")).json()
    keys = RedisKeys(settings.redis_prefix)
    with redis.Redis.from_url(settings.redis_url) as r:
        deadline = time.monotonic() + 5
        while r.zscore(keys.thread_waiting(tenant.tenant_id, thread), waiting["id"]) is None:
            assert time.monotonic() < deadline, "the second run was never parked"
            time.sleep(0.05)

    cancelled = client.post(f"/v1/runs/{waiting['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    third = client.post("/v1/runs", json=body(model, thread, "third")).json()
    done = [wait_finished(client, run["id"]) for run in (first, third)]
    assert [run["status"] for run in done] == ["completed", "completed"]
    assert at(done[1]["started_at"]) >= at(done[0]["finished_at"])
    runs_in_history = {m["run_id"] for m in client.get(f"/v1/threads/{thread}").json()["messages"]}
    assert runs_in_history == {first["id"], third["id"]}


def test_concurrent_creates_on_a_new_thread_all_run_one_at_a_time(
    client: httpx.Client,
) -> None:
    model, thread = f"m-{secrets.token_hex(4)}", f"new-{secrets.token_hex(4)}"

    def create(n: int) -> httpx.Response:
        return client.post("/v1/runs", json=body(model, thread, f"message {n}"))

    with ThreadPoolExecutor(5) as pool:
        responses = list(pool.map(create, range(5)))
    assert [r.status_code for r in responses] == [202] * 5, [r.text for r in responses]
    done = [wait_finished(client, r.json()["id"]) for r in responses]
    assert {run["status"] for run in done} == {"completed"}
    spans = sorted((at(run["started_at"]), at(run["finished_at"])) for run in done)
    assert all(end <= start for (_, end), (start, _) in pairwise(spans))
    assert len(client.get(f"/v1/threads/{thread}").json()["messages"]) == 10


def paused_payment(client: httpx.Client, thread: str) -> dict[str, Any]:
    payment = {"agent": "bank payments", "message": "Pay ACME 1,250 EUR", "thread_id": thread}
    run: dict[str, Any] = client.post("/v1/runs", json=payment).json()
    wait_status(client, run["id"], "requires_action")
    paused: dict[str, Any] = client.get(f"/v1/runs/{run['id']}").json()
    return paused


def test_a_run_paused_for_approval_keeps_its_thread_until_it_completes(
    client: httpx.Client, fake_openai: FakeOpenAI
) -> None:
    model, thread = f"m-{secrets.token_hex(4)}", f"appr-{secrets.token_hex(4)}"
    paused = paused_payment(client, thread)
    waiting = client.post("/v1/runs", json=body(model, thread, "Did it go through?")).json()
    time.sleep(0.5)
    assert client.get(f"/v1/runs/{waiting['id']}").json()["status"] == "queued"

    [call] = paused["required_action"]["tool_calls"]
    decision = {"call_id": call["tool_call_id"], "approved": True}
    assert client.post(f"/v1/runs/{paused['id']}/approvals", json=decision).status_code == 200
    done = [wait_finished(client, run["id"]) for run in (paused, waiting)]
    assert [run["status"] for run in done] == ["completed", "completed"]
    assert at(done[1]["started_at"]) >= at(done[0]["finished_at"])
    # The paused-and-resumed run's whole exchange (both tool calls and results) is history.
    roles = [m["role"] for m in sent(fake_openai, model)[-1]]
    assert roles == ["system", "user", "assistant", "tool", "tool", "assistant", "user"]


def test_interrupt_cancels_a_paused_run(client: httpx.Client) -> None:
    thread = f"appr-{secrets.token_hex(4)}"
    paused = paused_payment(client, thread)
    model = f"m-{secrets.token_hex(4)}"
    instead = client.post(
        "/v1/runs", json=body(model, thread, "Never mind.", multitask_strategy="interrupt")
    ).json()
    assert wait_finished(client, paused["id"])["status"] == "cancelled"
    assert wait_finished(client, instead["id"])["status"] == "completed"
    messages = client.get(f"/v1/threads/{thread}").json()["messages"]
    assert {m["run_id"] for m in messages} == {instead["id"]}
