"""The batch listener against a real database: a line's outcome and its batch's counters move
in the transaction that ends its run, once, and the last line puts the batch in finalizing."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

from sqlmodel import Session

from runrelay.server.batch_tables import Batch, BatchItem
from runrelay.server.batches import BatchListener, BatchStore
from runrelay.server.settings import Settings
from runrelay.server.store import Store, new_id
from runrelay.server.tables import Run, utcnow
from runrelay.types import RunStatus


def _batch(store: Store, lines: int) -> tuple[Batch, list[Run]]:
    tenant = store.create_tenant(f"t-{new_id('x')[-8:]}")
    batch = Batch(
        id=new_id("batch"),
        tenant_id=tenant.id,
        status="in_progress",
        completion_window="1h",
        expires_at=utcnow() + timedelta(hours=1),
        total=lines,
        dispatched=lines,
    )
    runs = [
        Run(
            id=new_id("run"),
            tenant_id=tenant.id,
            status="running",
            agent_name="a",
            agent_id="m.a",
            run_metadata={"batch_id": batch.id, "custom_id": f"c{i}"},
        )
        for i in range(lines)
    ]
    with Session(store.engine, expire_on_commit=False) as session:
        session.add(batch)
        session.flush()
        for i, run in enumerate(runs):
            session.add(run)
            session.add(
                BatchItem(
                    batch_id=batch.id,
                    line=i + 1,
                    custom_id=f"c{i}",
                    status="queued",
                    request={"message": "hi"},
                    agent_name="a",
                    agent_id="m.a",
                    run_id=run.id,
                )
            )
        session.commit()
    return batch, runs


def _end(store: Store, run: Run, status: str, usage: dict[str, int] | None = None) -> None:
    """End `run` as the lifecycle does: the status change and the listener in one transaction."""
    with Session(store.engine) as session:
        row = session.get(Run, run.id)
        assert row is not None
        row.status, row.usage = status, usage
        session.add(row)
        session.flush()
        BatchListener().in_transaction(session, row, RunStatus.RUNNING)
        session.commit()


def test_each_ending_moves_its_line_and_the_counters_once(store: Store) -> None:
    batch, runs = _batch(store, 3)
    batches = BatchStore(store.engine)
    _end(
        store,
        runs[0],
        "completed",
        {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
    )
    _end(store, runs[0], "completed", {"total_tokens": 12})  # seen again: changes nothing
    _end(store, runs[1], "failed")
    snapshot = batches.snapshot(batch.id)
    assert snapshot is not None
    row = snapshot.batch
    assert (row.completed, row.failed, row.cancelled, row.total_tokens) == (1, 1, 0, 12)
    assert row.status == "in_progress" and snapshot.running == 1
    _end(store, runs[2], "cancelled")
    row = batches.snapshot(batch.id).batch  # type: ignore[union-attr]
    assert (row.completed, row.failed, row.cancelled) == (1, 1, 1)
    assert row.status == "finalizing" and row.finalizing_at is not None
    final = batches.finalize(batch.id, _no_webhook)
    assert final is not None and final[0].status == "completed"


def test_a_run_cancelled_because_its_batch_expired_counts_as_expired(store: Store) -> None:
    batch, runs = _batch(store, 2)
    batches = BatchStore(store.engine)
    stopped = batches.stop(batch.id, expire=True)
    assert stopped is not None and stopped.status == "cancelling"
    _end(store, runs[0], "cancelled")
    _end(store, runs[1], "completed")
    row = batches.snapshot(batch.id).batch  # type: ignore[union-attr]
    assert (row.expired, row.completed, row.status) == (1, 1, "finalizing")
    final = batches.finalize(batch.id, _no_webhook)
    assert final is not None and final[0].status == "expired"


def test_reconcile_records_a_line_whose_run_ended_without_the_listener(store: Store) -> None:
    batch, runs = _batch(store, 1)
    with Session(store.engine) as session:  # ended on a path that did not call the listener
        row = session.get(Run, runs[0].id)
        assert row is not None
        row.status = "failed"
        session.add(row)
        session.commit()
    batches = BatchStore(store.engine)
    assert batches.reconcile(batch.id) == 1
    assert batches.reconcile(batch.id) == 0
    assert batches.snapshot(batch.id).batch.failed == 1  # type: ignore[union-attr]


def test_a_run_of_no_batch_is_left_alone(store: Store) -> None:
    tenant = store.create_tenant(f"t-{new_id('x')[-8:]}")
    run = store.create_run(
        Run(id=new_id("run"), tenant_id=tenant.id, status="running", agent_name="a", agent_id="a")
    )
    _end(store, run, "completed")  # no batch_id in its metadata: nothing to record, no error


def _no_webhook(session: Session, batch: Batch) -> str | None:
    raise AssertionError("a batch without a webhook records no delivery")


_LOOK_FOR_ACTIVE_BATCHES = """
import gc
from runrelay.server.batches import BatchStore
from runrelay.server.engine import make_engine
from runrelay.server.settings import Settings

batches = BatchStore(make_engine(Settings()))
found = batches.active()  # the engine's first connection, and each statement's compilation
batches.snapshot(found[0].id)
gc.collect()
gc.disable()
for _ in range(20):
    assert [b.id for b in batches.active()] == [b.id for b in found]
    assert batches.snapshot(found[0].id).batch.id == found[0].id
print(len(found), gc.collect())
"""


def test_the_feeders_look_and_a_progress_streams_poll_leave_no_reference_cycles(
    store: Store, settings: Settings
) -> None:
    """The batch feeder of every API process looks for active batches five times a second,
    batches or not, and each `/events` stream reads its batch twice a second: nothing either
    leaves may wait for the garbage collector (in a process of its own, so that no other
    thread's garbage counts)."""
    _batch(store, 1)
    env = {**os.environ, "DATABASE_URL": settings.database_url}
    env.pop("RUNRELAY_DATABASE_SCHEMA", None)
    if settings.database_schema:
        env["RUNRELAY_DATABASE_SCHEMA"] = settings.database_schema
    done = subprocess.run(
        [sys.executable, "-c", _LOOK_FOR_ACTIVE_BATCHES],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    found, collected = map(int, done.stdout.split())
    assert found >= 1  # the batch made above, at least
    assert collected == 0
