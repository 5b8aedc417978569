"""`LoopDatabase` against a real PostgreSQL: a statement awaited on the loop returns what the same
statement returns through SQLAlchemy, a pooled connection the server closed is replaced
without the caller noticing, and with group commit (the worker's) the statements of many runs
issued together commit in one transaction, a failing one failing only its own caller."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
from sqlalchemy import func, literal, select

from runrelay.agent.config import AgentsConfig, Registry
from runrelay.server.loop_database import LoopDatabase
from runrelay.server.revisions import AgentCatalog
from runrelay.server.run_table import RunTable
from runrelay.server.settings import Settings
from runrelay.server.store import Store, new_id
from runrelay.server.tables import Run
from runrelay.server.tenants import update_limits
from runrelay.server.threads import Threads
from runrelay.types import RunCreate, RunStatus
from tests.postgres_admin import end_backend

T = TypeVar("T")


def on_loop(
    store: Store,
    settings: Settings,
    work: Callable[[LoopDatabase], Awaitable[T]],
    *,
    group_commit: bool = False,
) -> T:
    async def main() -> T:
        database = LoopDatabase(settings, max_size=1, group_commit=group_commit)
        await database.open(store.engine)
        try:
            return await work(database)
        finally:
            await database.close()

    return asyncio.run(main())


def _queued_run(store: Store, **fields: Any) -> Run:
    """A queued run of a tenant of its own, on a new thread, written through SQLAlchemy."""
    tenant = store.create_tenant(f"loop-{secrets.token_hex(6)}")
    run = Run(
        id=new_id("run"),
        tenant_id=tenant.id,
        status=RunStatus.QUEUED,
        agent_name="analyst",
        agent_id="bank.analyst",
        thread_id=f"thr_{secrets.token_hex(4)}",
        **({"input": {"question": "q"}} | fields),
    )
    Threads(store.engine).create_run(run)
    return run


def test_a_run_read_on_the_loop_is_the_run_sqlalchemy_reads(
    store: Store, postgres: Settings
) -> None:
    run = _queued_run(
        store,
        input={"question": "é ✓", "n": [1, 2.5, None]},
        run_metadata={"k": "v"},
        scheduled_for=datetime(2026, 12, 2, 19, 0, tzinfo=UTC),
    )
    through_sqlalchemy = store.get_run(run.id)

    async def read_and_start(_database: LoopDatabase) -> tuple[Any, Any, Any]:
        read = await store.get_run_async(run.id)
        started = await RunTable(store.engine).start_async(run.id, "token-1")
        missing = await store.get_run_async("run_missing")
        return read, started, missing

    read, started, missing = on_loop(store, postgres, read_and_start)

    assert read == through_sqlalchemy
    assert read.status is RunStatus.QUEUED and read.created_at.tzinfo is not None
    assert read.input == run.input and read.scheduled_for == run.scheduled_for
    assert started is not None and started.previous is RunStatus.QUEUED
    assert started.run == store.get_run(run.id)
    assert started.run.status is RunStatus.RUNNING and started.run.attempts == 1
    assert started.run.lease_token == "token-1"
    assert missing is None


def test_an_idle_connection_the_server_closed_is_replaced_unnoticed(
    store: Store, postgres: Settings
) -> None:
    tenant = store.create_tenant(f"loop-{secrets.token_hex(6)}")

    async def scenario(database: LoopDatabase) -> tuple[int, int, Any]:
        async with database.connection() as conn:
            first = (await (await conn.execute("SELECT pg_backend_pid()")).fetchone() or [0])[0]
        end_backend(postgres.database_url, first)  # idle in the pool, the server ends it
        found = await store.get_tenant_async(tenant.id)  # no error: a new connection
        async with database.connection() as conn:
            second = (await (await conn.execute("SELECT pg_backend_pid()")).fetchone() or [0])[0]
        return first, second, found

    first, second, found = on_loop(store, postgres, scenario)

    assert found == store.get_tenant(tenant.id)
    assert second != first


def _config(module: str, text: str) -> AgentsConfig:
    agent = {"name": "echo", "script": {"turns": [{"text": text}]}}
    return AgentsConfig.model_validate(
        {"modules": [{"key": module, "name": "Loop", "agents": [agent]}]}
    )


def test_an_admissions_one_statement_reads_what_its_two_reads_read(
    store: Store, postgres: Settings
) -> None:
    """The tenant and the agent's newest revision, read together, are what reading them apart
    gives; a revision published after the first read is the next read's (with no admission
    cache, a publish shows at once); what one statement cannot answer is left to the two reads
    (None)."""
    module = f"loop{secrets.token_hex(4)}"
    v1 = _config(module, "one")
    catalog = AgentCatalog(store.engine, Registry(v1), admission_cache_s=0)
    catalog.publish(v1)
    tenant = store.create_tenant(f"loop-{secrets.token_hex(6)}")
    by_name = RunCreate(agent=f"{module} echo", message="hi")

    async def reads(_database: LoopDatabase) -> list[Any]:
        first = await catalog.with_tenant_async(by_name, tenant.id)
        AgentCatalog(store.engine, Registry(v1)).publish(_config(module, "two"))
        return [
            first,
            await catalog.with_tenant_async(by_name, tenant.id),
            await catalog.for_request_async(by_name),
            await catalog.with_tenant_async(by_name, "ten_missing"),
            await catalog.with_tenant_async(by_name.model_copy(update={"revision": 1}), tenant.id),
        ]

    first, second, apart, no_tenant, pinned = on_loop(store, postgres, reads)

    assert first is not None and second is not None
    assert first[1] == store.get_tenant(tenant.id) == second[1]
    assert first[0].revision == 1 and first[0] == catalog.pinned(first[0].id, 1)
    assert second[0].revision == 2 and second[0] == apart
    assert no_tenant is None and pinned is None


def test_an_admission_trusts_its_read_for_the_cache_window_then_reads_again(
    store: Store, postgres: Settings
) -> None:
    """Within `admission_cache_s` of a read, the same agent and tenant are answered without
    one (a publish and a limit change wait for the window's end); another tenant, or the
    window's end, reads again and sees both."""
    module = f"loop{secrets.token_hex(4)}"
    v1 = _config(module, "one")
    AgentCatalog(store.engine, Registry(v1)).publish(v1)
    tenant = store.create_tenant(f"loop-{secrets.token_hex(6)}")
    other = store.create_tenant(f"loop-{secrets.token_hex(6)}")
    by_name = RunCreate(agent=f"{module} echo", message="hi")
    window = 1.0  # a stall between two reads longer than this would fail the test
    catalog = AgentCatalog(store.engine, Registry(v1), admission_cache_s=window)

    async def reads(_database: LoopDatabase) -> list[Any]:
        first = await catalog.with_tenant_async(by_name, tenant.id)
        AgentCatalog(store.engine, Registry(v1)).publish(_config(module, "two"))
        update_limits(store, tenant.id, max_concurrent_runs=3)
        within = await catalog.with_tenant_async(by_name, tenant.id)
        other_tenant = await catalog.with_tenant_async(by_name, other.id)
        await asyncio.sleep(window + 0.1)
        return [first, within, other_tenant, await catalog.with_tenant_async(by_name, tenant.id)]

    first, within, other_tenant, after = on_loop(store, postgres, reads)

    assert first is not None and within is not None and other_tenant is not None
    assert after is not None
    assert (first[0].revision, first[1].max_concurrent_runs) == (1, None)
    assert (within[0].revision, within[1].max_concurrent_runs) == (1, None), "the read it trusts"
    assert other_tenant[0].revision == 2, "another tenant's admission reads for itself"
    assert (after[0].revision, after[1].max_concurrent_runs) == (2, 3), "the window ended"


def test_statements_issued_together_commit_together_and_apart_apart(
    store: Store, postgres: Settings
) -> None:
    """Group commit: what the runs on the loop issue while a group is out goes in the next
    one, one transaction (one WAL flush) for all; a statement alone is its own."""
    runs = [_queued_run(store) for _ in range(3)]
    txid = select(func.txid_current())

    async def starts(database: LoopDatabase) -> tuple[list[Any], list[Any], list[Any]]:
        table = RunTable(store.engine)
        together = await asyncio.gather(
            *(table.start_async(run.id, f"token-{n}") for n, run in enumerate(runs)),
            database.first(txid, {}),
            database.first(txid, {}),
        )
        apart = [await database.first(txid, {}), await database.first(txid, {})]
        return list(together[:3]), [row[0] for row in together[3:]], [row[0] for row in apart]

    started, grouped, alone = on_loop(store, postgres, starts, group_commit=True)

    assert all(s is not None and s.run.status is RunStatus.RUNNING for s in started)
    assert [store.get_run(run.id).lease_token for run in runs] == ["token-0", "token-1", "token-2"]
    assert grouped[0] == grouped[1], "issued together: one transaction"
    assert alone[0] != alone[1] and grouped[0] not in alone, "awaited one by one: one each"


def test_with_group_commit_off_statements_issued_together_commit_apart(
    store: Store, postgres: Settings
) -> None:
    """`RUNRELAY_GROUP_COMMIT=0`: the process's loop database commits each statement alone."""
    txid = select(func.txid_current())

    async def together() -> list[Any]:
        database = await LoopDatabase.attached(
            store.engine, postgres.model_copy(update={"group_commit": False})
        )
        assert database is not None
        try:
            rows = await asyncio.gather(database.first(txid, {}), database.first(txid, {}))
        finally:
            await database.close()
        return [row[0] for row in rows if row is not None]

    first, second = asyncio.run(together())
    assert first != second


def test_a_statement_that_fails_in_a_group_fails_only_its_caller(
    store: Store, postgres: Settings
) -> None:
    run = _queued_run(store)

    async def group(_database: LoopDatabase) -> tuple[Any, BaseException | None]:
        failing = _database.first(select(literal(1) / literal(0)), {})
        started, failed = await asyncio.gather(
            RunTable(store.engine).start_async(run.id, "token-1"),
            failing,
            return_exceptions=True,
        )
        return started, failed if isinstance(failed, BaseException) else None

    started, failed = on_loop(store, postgres, group, group_commit=True)

    assert isinstance(failed, psycopg.errors.DivisionByZero)
    assert started is not None and started.run.status is RunStatus.RUNNING
    assert store.get_run(run.id).status is RunStatus.RUNNING, "its group's failure undone, redone"
