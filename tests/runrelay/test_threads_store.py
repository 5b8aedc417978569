"""Threads in the database: creating runs on a thread (concurrently too), history appended with
a run's outcome in one transaction, and read back per exchange."""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from runrelay.server.run_table import Ending, RunTable
from runrelay.server.store import Store, new_id
from runrelay.server.tables import Run
from runrelay.server.threads import ThreadBusy, Threads
from runrelay.types import RunStatus


@pytest.fixture
def tenant_id(store: Store) -> str:
    return store.create_tenant(f"thr-{secrets.token_hex(6)}").id


def new_run(tenant_id: str, thread_id: str | None) -> Run:
    return Run(
        id=new_id("run"),
        tenant_id=tenant_id,
        status="queued",
        agent_name="slow-analyst",
        agent_id="bank.slow-analyst",
        thread_id=thread_id,
    )


def end(store: Store, run: Run, status: RunStatus, messages: list[dict[str, Any]]) -> None:
    table = RunTable(store.engine)
    table.start(run.id, "t")
    assert table.end(run.id, status, ending=Ending(), events=[], thread_messages=messages)


def complete(store: Store, run: Run, messages: list[dict[str, Any]]) -> None:
    end(store, run, RunStatus.COMPLETED, messages)


def test_concurrent_rejecting_creates_on_a_new_thread_make_exactly_one_run(
    store: Store, tenant_id: str
) -> None:
    threads = Threads(store.engine)

    def create(_: int) -> str:
        try:
            threads.create_run(new_run(tenant_id, "fresh"), reject_if_busy=True)
        except ThreadBusy:
            return "busy"
        return "created"

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(create, range(8)))
    assert sorted(outcomes) == ["busy"] * 7 + ["created"]
    assert len(store.list_runs(tenant_id, limit=20, thread_id="fresh")) == 1
    assert threads.get(tenant_id, "fresh") is not None


def test_create_returns_the_threads_active_runs_oldest_first(store: Store, tenant_id: str) -> None:
    threads = Threads(store.engine)
    first, second = new_run(tenant_id, "t"), new_run(tenant_id, "t")
    assert threads.create_run(first) == []
    assert [r.id for r in threads.create_run(second)] == [first.id]
    complete(store, first, [])
    assert [r.id for r in threads.create_run(new_run(tenant_id, "t"))] == [second.id]
    assert threads.create_run(new_run(tenant_id, None)) == []


def test_history_is_appended_with_the_outcome_and_read_per_exchange(
    store: Store, tenant_id: str
) -> None:
    threads = Threads(store.engine)
    runs = [new_run(tenant_id, "h") for _ in range(3)]
    for run in runs:
        threads.create_run(run)
    created = threads.get(tenant_id, "h")
    assert created is not None
    complete(
        store, runs[0], [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    )
    end(store, runs[1], RunStatus.FAILED, [])  # a failed run adds nothing (no messages passed)
    complete(
        store, runs[2], [{"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
    )

    rows = threads.messages(tenant_id, "h", limit=10)
    assert [(r.seq, r.role, r.message["content"]) for r in rows] == [
        (1, "user", "a"),
        (2, "assistant", "b"),
        (3, "user", "c"),
        (4, "assistant", "d"),
    ]
    assert [r.run_id for r in rows] == [runs[0].id] * 2 + [runs[2].id] * 2
    assert [r.seq for r in threads.messages(tenant_id, "h", after_seq=2, limit=1)] == [3]
    updated = threads.get(tenant_id, "h")
    assert updated is not None and updated.updated_at > created.updated_at
    assert [len(e) for e in threads.exchanges(tenant_id, "h", max_messages=50)] == [2, 2]
    # Enough whole exchanges to hold the last 3 messages: both, the older one whole.
    assert threads.exchanges(tenant_id, "h", max_messages=3)[0][0]["content"] == "a"
    assert threads.exchanges(tenant_id, "h", max_messages=0) == []
    assert threads.exchanges(tenant_id, "other", max_messages=50) == []
