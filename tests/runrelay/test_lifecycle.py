"""The transition table against the real database (SQLite, or PostgreSQL with DATABASE_URL): every
allowed transition is made, every other one is refused and changes nothing."""

from __future__ import annotations

import itertools
import secrets
from typing import Any

import pytest

from runrelay.server.run_table import TRANSITIONS, Ending, RunTable, sources
from runrelay.server.settings import Settings
from runrelay.server.store import Store, new_id
from runrelay.server.tables import Run
from runrelay.types import RunStatus
from tests.listener import RecordingListener
from tests.runrelay.test_threads_store import on_loop

PAIRS = list(itertools.product(RunStatus, RunStatus))


@pytest.fixture(scope="module")
def tenant_id(store: Store) -> str:
    return store.create_tenant(f"lc-{secrets.token_hex(6)}").id


def run_in(store: Store, tenant_id: str, status: RunStatus) -> Run:
    return store.create_run(
        Run(
            id=new_id("run"),
            tenant_id=tenant_id,
            status=status,
            agent_name="credit-risk-analyst",
            agent_id="bank.credit-risk-analyst",
        )
    )


def row(store: Store, run_id: str) -> dict[str, Any]:
    run = store.get_run(run_id)
    assert run is not None
    return run.model_dump()


def test_the_table_is_what_the_readme_says() -> None:
    assert {s: sorted(t) for s, t in TRANSITIONS.items()} == {
        RunStatus.QUEUED: ["cancelled", "expired", "failed", "running"],
        RunStatus.RUNNING: [
            "cancelled",
            "completed",
            "expired",
            "failed",
            "requires_action",
            "running",
        ],
        RunStatus.REQUIRES_ACTION: ["cancelled", "expired", "queued"],
        RunStatus.COMPLETED: [],
        RunStatus.FAILED: [],
        RunStatus.CANCELLED: [],
        RunStatus.EXPIRED: [],
    }
    assert sources(RunStatus.QUEUED) == {RunStatus.REQUIRES_ACTION}


@pytest.mark.parametrize(("current", "target"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_a_transition_is_made_only_when_the_table_allows_it(
    store: Store, tenant_id: str, current: RunStatus, target: RunStatus
) -> None:
    listener = RecordingListener()
    table = RunTable(store.engine, [listener])
    run = run_in(store, tenant_id, current)
    before = row(store, run.id)

    moved = table.transition(run.id, target)

    after = row(store, run.id)
    if target in TRANSITIONS[current]:
        assert moved is not None and moved.previous is current
        assert after["status"] is target and moved.run.status is target
        # A start is one statement with no transaction around it: nothing to record in.
        recorded = [] if target is RunStatus.RUNNING else [(run.id, target, current)]
        assert listener.in_transaction_calls == recorded
    else:
        assert moved is None
        assert after == before, "a refused transition changes nothing"
        assert listener.in_transaction_calls == []


@pytest.mark.parametrize("target", [s for s in RunStatus if s.is_terminal])
def test_an_ended_run_is_ended_once(store: Store, tenant_id: str, target: RunStatus) -> None:
    """A second `end` (a redelivered task, a late cancel) is refused and archives nothing."""
    listener = RecordingListener()
    table = RunTable(store.engine, [listener])
    run = run_in(store, tenant_id, RunStatus.RUNNING)
    first = '1 {"seq":1}\n2 {"seq":2}'

    assert table.end(run.id, target, ending=Ending(), log=first, error=None) is not None
    assert table.end(run.id, RunStatus.FAILED, ending=Ending(), log="3 {}") is None

    assert store.archived_events(run.id) == ['{"seq":1}', '{"seq":2}']
    assert listener.endings(run.id) == ([target], [])


def test_a_worker_ends_a_run_only_under_its_lease(store: Store, tenant_id: str) -> None:
    table = RunTable(store.engine)
    run = run_in(store, tenant_id, RunStatus.QUEUED)
    table.start(run.id, "old")
    table.start(run.id, "new")  # another worker took it over

    assert table.end(run.id, RunStatus.COMPLETED, ending=Ending.by_worker("old"), log="") is None
    assert row(store, run.id)["status"] is RunStatus.RUNNING
    assert table.end(run.id, RunStatus.COMPLETED, ending=Ending.by_worker("new"), log="")
    assert row(store, run.id)["attempts"] == 2


def test_a_hand_back_is_counted_only_for_the_lease_holder_of_a_running_run(
    store: Store, tenant_id: str
) -> None:
    """A hand-back (shutdown, store outage) is not a crash: the attempts cap leaves it out."""
    table = RunTable(store.engine)
    run = run_in(store, tenant_id, RunStatus.QUEUED)
    table.start(run.id, "mine")

    assert not table.count_handback(run.id, "someone else's")
    assert table.count_handback(run.id, "mine")
    assert table.count_handback(run.id, "mine")
    assert row(store, run.id)["resumes"] == 2
    table.end(run.id, RunStatus.COMPLETED, ending=Ending.by_worker("mine"), log="")
    assert not table.count_handback(run.id, "mine")
    assert row(store, run.id)["resumes"] == 2


def test_a_hand_back_awaited_on_the_loop_is_counted_the_same(
    store: Store, settings: Settings, tenant_id: str
) -> None:
    """What a worker does at SIGTERM for every run it holds: on PostgreSQL, one statement on
    the loop's database."""
    table = RunTable(store.engine)
    run = run_in(store, tenant_id, RunStatus.QUEUED)
    table.start(run.id, "mine")

    async def hand_backs() -> list[bool]:
        return [
            await table.count_handback_async(run.id, "someone else's"),
            await table.count_handback_async(run.id, "mine"),
        ]

    assert on_loop(store, settings, hand_backs()) == [False, True]
    assert row(store, run.id)["resumes"] == 1
