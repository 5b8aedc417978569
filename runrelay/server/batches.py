"""Batches in the database: creating one from an upload, the feeder's claims, the batch
listener that records how each line's run ended, cancel and expiry, counts, and the pages of
the results and errors files.

    validating ──open──▶ in_progress ──last line ends──▶ finalizing ──finalize──▶ completed
        │                    │ cancel / window passes             ▲
        └─discard (refused)  ▼                                    │
                          cancelling ──last line ends──▶ finalizing ──▶ cancelled | expired

Every line ends through `BatchListener.in_transaction`, called in the transaction that ends its
run, so a line's outcome and the batch's counters are as durable as the run's status, whoever
ended it (worker, cancel, sweeper). The feeder's `reconcile` re-applies it to lines whose run
ended on a path that did not call the listener, which is idempotent: a line moves out of
`queued` once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, bindparam, delete, func, insert, update
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from runrelay.batch_types import BatchObject, BatchStatus, LineError, RequestCounts
from runrelay.server.batch_tables import Batch, BatchItem
from runrelay.server.keys import RedisKeys
from runrelay.server.tables import Run, as_utc, utcnow
from runrelay.types import RunStatus, Usage

PENDING, QUEUED = "pending", "queued"
ENDED_ITEM_STATUSES = ("completed", "failed", "cancelled", "expired")
ACTIVE_RUN_STATUSES = (RunStatus.RUNNING.value, RunStatus.REQUIRES_ACTION.value)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# A batch still `validating` this long past its window is an upload that died with its shim.
STALE_UPLOAD = timedelta(hours=1)
_WINDOW = re.compile(r"^([1-9][0-9]{0,6})([smhd])$")
MAX_WINDOW = timedelta(days=30)
NOT_STARTED_ERROR = {
    "cancelled": "the batch was cancelled before this line's run was created",
    "expired": "the batch's completion_window passed before this line's run was created",
}


def parse_window(text: str) -> timedelta:
    """`24h` → 24 hours. A number and a unit (s, m, h, d), from 1 s to 30 days."""
    found = _WINDOW.match(text)
    window = timedelta(seconds=int(found[1]) * _UNITS[found[2]]) if found else None
    if window is None or window > MAX_WINDOW:
        raise ValueError(
            "completion_window must be a number and a unit (s, m, h or d), from 1s to 30d, "
            f"e.g. 24h (got {text!r})"
        )
    return window


@dataclass(frozen=True)
class Snapshot:
    """A batch row and how many of its lines are running, read in one statement."""

    batch: Batch
    running: int


@dataclass(frozen=True)
class ResultRow:
    line: int
    custom_id: str
    run_id: str | None
    item_status: str
    item_error: str | None
    output: str | None
    result: dict[str, Any] | None
    usage: dict[str, Any] | None
    error: dict[str, Any] | None


def _running_count(batch_id: Any) -> Any:
    return (
        select(func.count())
        .select_from(BatchItem)
        .join(Run, col(Run.id) == col(BatchItem.run_id))
        .where(
            col(BatchItem.batch_id) == batch_id,
            col(BatchItem.status) == QUEUED,
            col(Run.status).in_(ACTIVE_RUN_STATUSES),
        )
        .scalar_subquery()
    )


def _item_outcome(run: Run, batch_expiring: bool) -> str:
    status = RunStatus(run.status)
    if status is RunStatus.CANCELLED and batch_expiring:
        return "expired"
    return status.value


def record_outcome(session: Session, run: Run) -> bool:
    """The line of `run` (which ended) takes its outcome, and its batch's counters move, in
    `session`'s transaction. False when the run is no batch line's, or its line already ended."""
    batch_id = (run.run_metadata or {}).get("batch_id")
    if not isinstance(batch_id, str):
        return False
    expiring = session.exec(select(Batch.expired_at).where(Batch.id == batch_id)).first()
    outcome = _item_outcome(run, expiring is not None)
    moved = session.exec(
        update(BatchItem)
        .where(col(BatchItem.run_id) == run.id, col(BatchItem.status) == QUEUED)
        .values(status=outcome)
    ).rowcount
    if not moved:
        return False
    usage = run.usage or {}
    row = session.execute(
        update(Batch)
        .where(col(Batch.id) == batch_id)
        .values(
            {
                outcome: getattr(Batch, outcome) + 1,
                "prompt_tokens": col(Batch.prompt_tokens) + int(usage.get("prompt_tokens", 0)),
                "completion_tokens": col(Batch.completion_tokens)
                + int(usage.get("completion_tokens", 0)),
                "total_tokens": col(Batch.total_tokens) + int(usage.get("total_tokens", 0)),
                "version": col(Batch.version) + 1,
            }
        )
        .returning(
            col(Batch.total),
            col(Batch.completed) + col(Batch.failed) + col(Batch.cancelled) + col(Batch.expired),
            col(Batch.status),
        )
    ).first()
    if row is None:  # the line outlived its batch: nothing to count (never raise in here)
        return True
    _finalizing_if_done(session, batch_id, total=row[0], ended=row[1], status=row[2])
    return True


def _finalizing_if_done(
    session: Session, batch_id: str, *, total: int, ended: int, status: str
) -> None:
    if ended >= total and status in (BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING):
        session.exec(
            update(Batch)
            .where(col(Batch.id) == batch_id)
            .values(
                status=BatchStatus.FINALIZING.value,
                finalizing_at=utcnow(),
                version=col(Batch.version) + 1,
            )
        )


class BatchListener:
    """The lifecycle's `RunListener` for batches: a batch line's run ended → its line's outcome
    and its batch's counters, in the same transaction; then the feeder is woken (best effort;
    it also runs on a timer)."""

    def __init__(self, redis: Any = None, keys: RedisKeys | None = None) -> None:
        """With an asyncio `redis` client and its `keys`, `after_commit` wakes the feeder."""
        self._redis = redis
        self._keys = keys

    def records(self, run: Run) -> bool:
        return isinstance((run.run_metadata or {}).get("batch_id"), str)

    def in_transaction(self, session: Session, run: Run, previous: RunStatus) -> None:
        if RunStatus(run.status).is_terminal:
            record_outcome(session, run)

    async def after_commit(self, run: Run, previous: RunStatus) -> None:
        is_line = isinstance((run.run_metadata or {}).get("batch_id"), str)
        ended = is_line and RunStatus(run.status).is_terminal
        if ended and self._redis is not None and self._keys is not None:
            await wake_feeder(self._redis, self._keys)


# Statements run over and over, built once: building one leaves objects in reference cycles
# (SQLAlchemy's bound parameters) each time. The feeder's query runs five times a second in every
# API process, batches or not; a snapshot every `batch_progress_poll_s` for each progress stream.
_SNAPSHOT = select(Batch, _running_count(Batch.id)).where(col(Batch.id) == bindparam("batch_id"))
_ACTIVE = (
    select(Batch)
    .where(
        col(Batch.status).in_(
            (
                BatchStatus.VALIDATING,
                BatchStatus.IN_PROGRESS,
                BatchStatus.CANCELLING,
                BatchStatus.FINALIZING,
            )
        )
    )
    .order_by(col(Batch.id))
)


class BatchStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # Upload -------------------------------------------------------------------------------------

    def create(self, batch: Batch) -> Batch:
        with Session(self.engine, expire_on_commit=False) as session:
            session.add(batch)
            session.commit()
        return batch

    def add_items(self, rows: Sequence[dict[str, Any]]) -> None:
        """Store a chunk of validated lines (one executemany)."""
        if rows:
            with Session(self.engine) as session:
                session.execute(insert(BatchItem), list(rows))
                session.commit()

    def open(
        self, batch_id: str, *, total: int, invalid_lines: int, errors: list[dict[str, Any]]
    ) -> Batch:
        """The upload was read whole: the batch's lines may run."""
        with Session(self.engine, expire_on_commit=False) as session:
            batch = session.exec(
                select(Batch).where(Batch.id == batch_id).with_for_update()
            ).first()
            assert batch is not None  # created by the same request
            if batch.status != BatchStatus.VALIDATING:  # failed as a stale upload meanwhile
                return batch
            batch.total, batch.invalid_lines = total, invalid_lines
            batch.validation_errors = errors or None
            batch.status, batch.in_progress_at = BatchStatus.IN_PROGRESS.value, utcnow()
            batch.version += 1
            session.add(batch)
            session.commit()
        return batch

    def discard(self, batch_id: str) -> None:
        """Forget a refused (or broken-off) upload: its lines and the batch."""
        with Session(self.engine) as session:
            session.exec(delete(BatchItem).where(col(BatchItem.batch_id) == batch_id))
            session.exec(delete(Batch).where(col(Batch.id) == batch_id))
            session.commit()

    # Reading ------------------------------------------------------------------------------------

    def snapshot(self, batch_id: str, *, tenant_id: str | None = None) -> Snapshot | None:
        with Session(self.engine, expire_on_commit=False) as session:
            found = session.exec(_SNAPSHOT, params={"batch_id": batch_id}).first()
        if found is None or (tenant_id is not None and found[0].tenant_id != tenant_id):
            return None
        return Snapshot(found[0], int(found[1]))

    def for_tenant(
        self, tenant_id: str, *, limit: int, before: str | None = None
    ) -> list[Snapshot]:
        """The tenant's batches, newest first; `before` is the last id of the previous page."""
        query = select(Batch, _running_count(Batch.id)).where(Batch.tenant_id == tenant_id)
        if before is not None:
            query = query.where(col(Batch.id) < before)
        query = query.order_by(col(Batch.id).desc()).limit(limit)
        with Session(self.engine, expire_on_commit=False) as session:
            return [Snapshot(b, int(n)) for b, n in session.exec(query).all()]

    def results_page(
        self, batch_id: str, *, errors: bool, after: int, limit: int
    ) -> list[ResultRow]:
        """Lines after line `after`, in order: completed ones, or (`errors`) the others that
        ended, each with its run's outcome."""
        statuses = ENDED_ITEM_STATUSES[1:] if errors else ENDED_ITEM_STATUSES[:1]
        columns = (
            col(BatchItem.line),
            col(BatchItem.custom_id),
            col(BatchItem.run_id),
            col(BatchItem.status),
            col(BatchItem.error),
            col(Run.output),
            col(Run.result),
            col(Run.usage),
            col(Run.error),
        )
        query = (
            sa_select(*columns)
            .select_from(BatchItem)
            .outerjoin(Run, col(Run.id) == col(BatchItem.run_id))
            .where(
                col(BatchItem.batch_id) == batch_id,
                col(BatchItem.status).in_(statuses),
                col(BatchItem.line) > after,
            )
            .order_by(col(BatchItem.line))
            .limit(limit)
        )
        with Session(self.engine) as session:
            return [ResultRow(*row) for row in session.execute(query).all()]

    # The feeder ---------------------------------------------------------------------------------

    def active(self) -> list[Batch]:
        """Batches the feeder looks after: running, cancelling, finalizing, or being uploaded."""
        with Session(self.engine, expire_on_commit=False) as session:
            return list(session.exec(_ACTIVE).all())

    def in_flight(self, batch_ids: Sequence[str]) -> int:
        """Lines of these batches whose run was created and has not ended."""
        query = (
            select(func.count())
            .select_from(BatchItem)
            .where(col(BatchItem.batch_id).in_(batch_ids), col(BatchItem.status) == QUEUED)
        )
        with Session(self.engine) as session:
            return int(session.exec(query).one())

    def pending(self, batch_id: str, *, limit: int) -> list[BatchItem]:
        query = (
            select(BatchItem)
            .where(BatchItem.batch_id == batch_id, BatchItem.status == PENDING)
            .order_by(col(BatchItem.line))
            .limit(limit)
        )
        with Session(self.engine, expire_on_commit=False) as session:
            return list(session.exec(query).all())

    def claim(self, batch_id: str, runs: Sequence[tuple[int, Run]]) -> list[str]:
        """Create the runs of these lines (line, run), each only while its line is still
        pending and the batch in progress; the ids of the runs created."""
        created: list[str] = []
        with Session(self.engine) as session:
            batch = session.exec(
                select(Batch).where(Batch.id == batch_id).with_for_update()
            ).first()
            if batch is None or batch.status != BatchStatus.IN_PROGRESS:
                return created
            for line, run in runs:
                moved = session.exec(
                    update(BatchItem)
                    .where(
                        col(BatchItem.batch_id) == batch_id,
                        col(BatchItem.line) == line,
                        col(BatchItem.status) == PENDING,
                    )
                    .values(status=QUEUED, run_id=run.id)
                ).rowcount
                if moved:
                    session.add(run)
                    created.append(run.id)
            batch.dispatched += len(created)
            batch.version += 1
            session.add(batch)
            session.commit()
        return created

    def unfinished_runs(self, batch_id: str) -> list[Run]:
        """The runs of the batch's lines in flight that have not ended."""
        query = (
            select(Run)
            .join(BatchItem, col(BatchItem.run_id) == col(Run.id))
            .where(
                col(BatchItem.batch_id) == batch_id,
                col(BatchItem.status) == QUEUED,
                col(Run.status).not_in(ENDED_ITEM_STATUSES),
            )
        )
        with Session(self.engine, expire_on_commit=False) as session:
            return list(session.exec(query).all())

    def reconcile(self, batch_id: str) -> int:
        """Record the outcome of lines whose run ended without the listener seeing it."""
        query = (
            select(Run)
            .join(BatchItem, col(BatchItem.run_id) == col(Run.id))
            .where(
                col(BatchItem.batch_id) == batch_id,
                col(BatchItem.status) == QUEUED,
                col(Run.status).in_(ENDED_ITEM_STATUSES),
            )
        )
        recorded = 0
        with Session(self.engine) as session:
            for run in session.exec(query).all():
                recorded += record_outcome(session, run)
            session.commit()
        return recorded

    def stop(self, batch_id: str, *, expire: bool) -> Batch | None:
        """Cancel the batch (or expire it, its window having passed): it goes `cancelling`, its
        pending lines end at once. The runs in flight are the caller's to cancel. None when the
        batch had already ended or is being stopped, or (a cancel) is still being uploaded. An
        expired upload that never finished ends `failed`."""
        outcome = "expired" if expire else "cancelled"
        with Session(self.engine, expire_on_commit=False) as session:
            batch = session.exec(
                select(Batch).where(Batch.id == batch_id).with_for_update()
            ).first()
            stoppable = (BatchStatus.IN_PROGRESS, BatchStatus.VALIDATING if expire else None)
            if batch is None or batch.status not in stoppable:
                return None
            now = utcnow()
            stopped = session.exec(
                update(BatchItem)
                .where(col(BatchItem.batch_id) == batch_id, col(BatchItem.status) == PENDING)
                .values(status=outcome, error=NOT_STARTED_ERROR[outcome])
            ).rowcount
            setattr(batch, outcome, getattr(batch, outcome) + stopped)
            if batch.status == BatchStatus.VALIDATING:  # an upload that never finished (stale)
                batch.status, batch.failed_at = BatchStatus.FAILED.value, now
            else:
                batch.status, batch.cancelling_at = BatchStatus.CANCELLING.value, now
            if expire:
                batch.expired_at = now
            batch.version += 1
            session.add(batch)
            session.flush()
            ended = batch.completed + batch.failed + batch.cancelled + batch.expired
            _finalizing_if_done(
                session, batch_id, total=batch.total, ended=ended, status=batch.status
            )
            session.commit()
            session.refresh(batch)
        return batch

    def finalize(
        self, batch_id: str, record_webhook: Callable[[Session, Batch], str | None]
    ) -> tuple[Batch, str | None] | None:
        """A `finalizing` batch takes its final status: completed, or cancelled / expired when
        it was stopped; `record_webhook` records its `batch.<status>` delivery in the same
        transaction (the delivery id, or None without a webhook)."""
        with Session(self.engine, expire_on_commit=False) as session:
            batch = session.exec(
                select(Batch).where(Batch.id == batch_id).with_for_update()
            ).first()
            if batch is None or batch.status != BatchStatus.FINALIZING:
                return None
            now = utcnow()
            if batch.expired_at is not None:
                batch.status = BatchStatus.EXPIRED.value
            elif batch.cancelling_at is not None:
                batch.status, batch.cancelled_at = BatchStatus.CANCELLED.value, now
            else:
                batch.status, batch.completed_at = BatchStatus.COMPLETED.value, now
            batch.version += 1
            session.add(batch)
            delivery_id = record_webhook(session, batch) if batch.webhook else None
            session.commit()
        return batch, delivery_id


async def wake_feeder(redis: Any, keys: RedisKeys) -> None:
    """Wake the batch feeder (a line ended): best effort, it also runs on a timer."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.rpush(keys.batch_wakeup(), "1")
        pipe.ltrim(keys.batch_wakeup(), -100, -1)
        await pipe.execute()


def batch_object(snapshot: Snapshot) -> BatchObject:
    b, running = snapshot.batch, snapshot.running
    ended = b.completed + b.failed + b.cancelled + b.expired
    counts = RequestCounts(
        total=b.total,
        queued=max(0, b.total - ended - running),
        running=running,
        completed=b.completed,
        failed=b.failed,
        cancelled=b.cancelled,
        expired=b.expired,
    )
    when = {
        name: as_utc(getattr(b, name)) if getattr(b, name) else None
        for name in (
            "in_progress_at",
            "finalizing_at",
            "completed_at",
            "cancelling_at",
            "cancelled_at",
            "expired_at",
            "failed_at",
        )
    }
    return BatchObject(
        id=b.id,
        tenant_id=b.tenant_id,
        status=BatchStatus(b.status),
        completion_window=b.completion_window,
        request_counts=counts,
        usage=Usage(
            prompt_tokens=b.prompt_tokens,
            completion_tokens=b.completion_tokens,
            total_tokens=b.total_tokens,
        ),
        metadata=b.batch_metadata or {},
        defaults=b.defaults or {},
        webhook=b.webhook,
        on_invalid=b.on_invalid,
        validation_errors=[LineError(**e) for e in b.validation_errors or []],
        invalid_lines=b.invalid_lines,
        created_at=as_utc(b.created_at),
        expires_at=as_utc(b.expires_at),
        **when,
        results_url=f"/v1/batches/{b.id}/results",
        errors_url=f"/v1/batches/{b.id}/errors",
        events_url=f"/v1/batches/{b.id}/events",
    )
