"""Threads in the database: creating runs on a thread (concurrently too), history appended with
a run's outcome in one transaction (or one statement, when no listener records the run), and
read back per exchange."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import text
from sqlmodel import Session

from runrelay.server.loop_database import LoopDatabase
from runrelay.server.run_table import Ending, Moved, RunNotFound, RunTable
from runrelay.server.settings import Settings
from runrelay.server.store import Store, new_id
from runrelay.server.tables import Run
from runrelay.server.threads import ThreadBusy, Threads, append_messages
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


# How a run's ending is written: `known` passes the run, so that with no listener recording
# it the ending is one statement (PostgreSQL); without it, a transaction (any database). "loop":
# that statement awaited on a `LoopDatabase` attached to the engine, as the worker makes it
# (SQLite has none: `end_async` goes to a thread there).
ENDINGS = pytest.mark.parametrize(
    "at_once", [False, True, "loop"], ids=["transaction", "one-statement", "loop"]
)


def end(
    store: Store,
    run: Run,
    status: RunStatus,
    messages: list[dict[str, Any]],
    *,
    at_once: bool | str = False,
    settings: Settings | None = None,
) -> None:
    table = RunTable(store.engine)
    if at_once == "loop":
        assert settings is not None
        ended = on_loop(store, settings, _ended_async(table, run, status, messages))
    else:
        table.start(run.id, "t")
        ended = table.end(
            run.id,
            status,
            ending=Ending(),
            log="1 {}",
            thread_messages=messages,
            known=run if at_once else None,
        )
    assert ended is not None and ended.run.status is status
    assert ended.previous is RunStatus.RUNNING and ended.run.finished_at is not None


async def _ended_async(
    table: RunTable, run: Run, status: RunStatus, messages: list[dict[str, Any]]
) -> Moved | None:
    await table.start_async(run.id, "t")
    return await table.end_async(
        run.id,
        status,
        ending=Ending(),
        log="1 {}",
        thread_messages=messages,
        known=run,
    )


def on_loop(store: Store, settings: Settings, work: Any) -> Any:
    """`work` (a coroutine) run with a `LoopDatabase` attached to the store's engine."""

    async def main() -> Any:
        if store.engine.dialect.name != "postgresql":
            return await work  # no loop database: the thread path
        database = LoopDatabase(settings, max_size=2)
        await database.open(store.engine)
        try:
            return await work
        finally:
            await database.close()

    return asyncio.run(main())


def complete(
    store: Store,
    run: Run,
    messages: list[dict[str, Any]],
    *,
    at_once: bool | str = False,
    settings: Settings | None = None,
) -> None:
    end(store, run, RunStatus.COMPLETED, messages, at_once=at_once, settings=settings)


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


@ENDINGS
def test_history_is_appended_with_the_outcome_and_read_per_exchange(
    store: Store, tenant_id: str, at_once: bool | str, settings: Settings
) -> None:
    threads = Threads(store.engine)
    runs = [new_run(tenant_id, "h") for _ in range(3)]
    for run in runs:
        threads.create_run(run)
    created = threads.get(tenant_id, "h")
    assert created is not None
    first = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    complete(store, runs[0], first, at_once=at_once, settings=settings)
    # A failed run adds nothing (no messages passed).
    end(store, runs[1], RunStatus.FAILED, [], at_once=at_once, settings=settings)
    second = [{"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
    complete(store, runs[2], second, at_once=at_once, settings=settings)

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


@ENDINGS
def test_an_ending_is_refused_to_a_worker_that_lost_the_run(
    store: Store, tenant_id: str, at_once: bool | str, settings: Settings
) -> None:
    run = new_run(tenant_id, "lost")
    Threads(store.engine).create_run(run)
    table = RunTable(store.engine)
    table.start(run.id, "new-holder")
    known = run if at_once else None
    late = {
        "ending": Ending.by_worker("old-holder"),
        "log": "1 {}",
        "thread_messages": [{"role": "user", "content": "late"}],
        "known": known,
    }
    missing = {"ending": Ending(), "log": "", "known": known}

    async def refused_on_loop() -> Moved | None:
        refused = await table.end_async(run.id, RunStatus.COMPLETED, **late)
        with pytest.raises(RunNotFound):
            await table.end_async("run_missing", RunStatus.FAILED, **missing)
        return refused

    if at_once == "loop":
        refused = on_loop(store, settings, refused_on_loop())
    else:
        refused = table.end(run.id, RunStatus.COMPLETED, **late)
        with pytest.raises(RunNotFound):
            table.end("run_missing", RunStatus.FAILED, **missing)
    assert refused is None
    current = store.get_run(run.id)
    assert current is not None and current.status is RunStatus.RUNNING
    assert store.archived_events(run.id) == []
    assert Threads(store.engine).messages(tenant_id, "lost", limit=10) == []


@pytest.mark.parametrize("at_once", [True, "loop"], ids=["one-statement", "loop"])
def test_an_ending_that_meets_messages_committed_meanwhile_goes_on_in_a_transaction(
    store: Store, tenant_id: str, at_once: bool | str, settings: Settings
) -> None:
    """Two runs of one thread ending at once (possible only if its gate was lost). On
    PostgreSQL the second statement's snapshot misses the first's messages, whose seqs its own
    then collide with; the ending is made again in a transaction, which waits for the thread's
    lock first. SQLite ends in a transaction from the start (waiting for its write lock). On
    both, the history must come out whole and gapless."""
    runs = [new_run(tenant_id, "race") for _ in range(2)]
    for run in runs:
        Threads(store.engine).create_run(run)
    table = RunTable(store.engine)
    table.start(runs[0].id, "t")
    with Session(store.engine) as holder:  # the first run's ending, not yet committed
        append_messages(holder, tenant_id, "race", runs[0].id, [{"role": "user", "content": "1"}])
        ending = threading.Thread(
            target=complete,
            args=(store, runs[1], [{"role": "user", "content": "2"}]),
            kwargs={"at_once": at_once, "settings": settings},
        )
        ending.start()
        _wait_until_blocked(store, ending)  # the second ending waits for the first
        holder.commit()
    ending.join(timeout=30)
    rows = Threads(store.engine).messages(tenant_id, "race", limit=10)
    assert [(r.seq, r.message["content"]) for r in rows] == [(1, "1"), (2, "2")]
    second = store.get_run(runs[1].id)
    assert second is not None and second.status is RunStatus.COMPLETED


def _wait_until_blocked(store: Store, ending: threading.Thread) -> None:
    if store.engine.dialect.name == "sqlite":  # no lock view: it must still be waiting
        time.sleep(0.3)
        assert ending.is_alive(), "the second ending did not wait for the first's write lock"
        return
    deadline = time.monotonic() + 10
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND query LIKE 'WITH locked AS%moved AS%'"  # an ending (its text is cut at 1 KB)
    )
    while time.monotonic() < deadline:
        with store.engine.connect() as conn:
            if conn.execute(query).scalar():
                return
        time.sleep(0.02)
    raise AssertionError("the one-statement ending never waited for the thread's lock")


class _OlderListener:
    """A listener written before `RunListener.records` existed."""

    def __init__(self) -> None:
        self.endings: list[str] = []

    def in_transaction(self, session: Session, run: Run, previous: RunStatus) -> None:
        if run.status.is_terminal:
            self.endings.append(run.id)

    async def after_commit(self, run: Run, previous: RunStatus) -> None:
        pass


def test_a_listener_without_records_is_still_called_in_the_endings_transaction(
    store: Store, tenant_id: str
) -> None:
    run = new_run(tenant_id, "older")
    Threads(store.engine).create_run(run)
    listener = _OlderListener()
    table = RunTable(store.engine, [listener])
    table.start(run.id, "t")

    ended = table.end(run.id, RunStatus.COMPLETED, ending=Ending(), log="", known=run)

    assert ended is not None and listener.endings == [run.id]
