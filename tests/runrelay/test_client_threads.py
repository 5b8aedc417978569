"""Threads in the SDK against the real shim and worker: runs continue a thread (Mentiora and
FAOS calls), `threads.get` reads it back (sync and async), a busy thread refuses a `reject` run
with a typed error, and the thread rules are checked before sending."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator

import pytest

from runrelay import (
    AgentRunParams,
    AsyncClient,
    Client,
    ConflictError,
    NotFoundError,
    ThreadObject,
    ValidationError,
)
from tests.conftest import TenantKey
from tests.fake_openai import FakeOpenAI, text_answer


@pytest.fixture
def sdk(api: str, tenant: TenantKey) -> Iterator[Client]:
    with Client(tenant.key, base_url=api, max_retries=0) as client:
        yield client


def test_runs_continue_a_thread_and_threads_get_reads_it(
    sdk: Client, api: str, tenant: TenantKey
) -> None:
    thread = f"sdk/{secrets.token_hex(4)}"  # a slash: the SDK quotes the id in the path
    first = sdk.agents.run(
        AgentRunParams(agent_id="bank.openai-analyst", message="Hello", thread_id=thread)
    )
    assert first.thread_id == thread and first.status == "completed"
    sdk.agents.invoke("openai-analyst", "Again", thread_id=thread, multitask_strategy="enqueue")

    got = sdk.threads.get(thread)
    assert isinstance(got, ThreadObject) and got.id == thread
    assert [(m.seq, m.role, m.content) for m in got.messages] == [
        (1, "user", "Hello"),
        (2, "assistant", "Hello from the fake server."),
        (3, "user", "Again"),
        (4, "assistant", "Hello from the fake server."),
    ]
    page = sdk.threads.get(thread, after_seq=1, limit=2)
    assert [m.seq for m in page.messages] == [2, 3] and page.next_after_seq == 3

    async def read_async() -> ThreadObject:
        async with AsyncClient(tenant.key, base_url=api) as client:
            return await client.threads.get(thread, after_seq=3)

    assert [m.seq for m in asyncio.run(read_async()).messages] == [4]
    with pytest.raises(NotFoundError) as missing:
        sdk.threads.get(f"none-{secrets.token_hex(4)}")
    assert missing.value.code == "thread_not_found"


def test_a_busy_thread_refuses_a_reject_run_with_a_conflict_error(
    sdk: Client, fake_openai: FakeOpenAI
) -> None:
    model, thread = f"m-{secrets.token_hex(4)}", f"busy-{secrets.token_hex(4)}"
    slow = text_answer("Slowly.", chunks=8, model=model)
    slow.delay_s = 0.1
    fake_openai.plan(slow)
    active = sdk.runs.create("openai-analyst", message="first", thread_id=thread, model_id=model)
    params = AgentRunParams(
        agent_id="bank.openai-analyst",
        message="second",
        thread_id=thread,
        model_id=model,
        multitask_strategy="reject",
    )
    with pytest.raises(ConflictError) as refused:
        sdk.agents.run(params)
    assert refused.value.code == "thread_busy" and active.id in str(refused.value)


def test_thread_rules_are_checked_before_sending(sdk: Client) -> None:
    with pytest.raises(ValidationError) as lone:
        sdk.agents.run(AgentRunParams(tag="production", message="hi", multitask_strategy="reject"))
    assert lone.value.param == "multitask_strategy"
    with pytest.raises(ValidationError) as unknown:
        sdk.agents.invoke("openai-analyst", "hi", thread_id="t", multitask_strategy="queue")  # type: ignore[arg-type]
    assert unknown.value.param == "multitask_strategy"
    with pytest.raises(ValidationError):
        sdk.threads.get(" ")
