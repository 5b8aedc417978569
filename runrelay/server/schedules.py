"""Schedules on the database side: the tables, CRUD, and the claim that makes each tick fire once.

A schedule holds a run request (`run`, as `RunCreate` takes it) and when to make it: a cron
expression in a time zone, an optional window (`start_at`, `end_at`), what to do while the last
run is still active (`overlap`) and after downtime (`catch_up`). `next_run_at` is the next tick
(None while paused or once the window closed).

Exactly once per tick: `claim_due` moves each due schedule's `next_run_at` on and inserts a
`schedule_fires` row keyed by (schedule id, tick) in the same transaction, so a second beat, a
duplicate task or a restarted worker finds the key taken and fires nothing; PostgreSQL's
`FOR UPDATE SKIP LOCKED` keeps concurrent passes off each other's schedules. The run a fire makes
carries `schedule_id` and `scheduled_for`, which are unique together on `runs` too. A fire that
was claimed but whose run was never written (its process died in between) is `claimed` still;
`stale_fires` hands it back to be fired with the same run id.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import JSON, Column, Engine, Index, Text, delete, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, col, select

from runrelay.server import cron
from runrelay.server.tables import Run, as_utc, utcnow
from runrelay.types import RunStatus

OVERLAP = ("skip", "enqueue", "cancel_previous")
CATCH_UP = ("none", "latest")


class Schedule(SQLModel, table=True):
    __tablename__ = "schedules"
    __table_args__ = (
        Index("ix_schedules_due", "paused", "next_run_at"),
        Index("ix_schedules_tenant_id_id", "tenant_id", "id"),
    )

    id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = Field(foreign_key="tenants.id", max_length=40)
    cron: str = Field(max_length=200)
    timezone: str = Field(max_length=64)
    start_at: datetime | None = None
    end_at: datetime | None = None
    overlap: str = Field(default="skip", max_length=20)
    catch_up: str = Field(default="none", max_length=20)
    paused: bool = False
    # The run request every tick makes (RunCreate's fields, webhook included).
    run: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    next_run_at: datetime | None = None
    last_run_at: datetime | None = None
    last_run_id: str | None = Field(default=None, max_length=40)
    # fired | skipped | refused | error, then the last run's own status once it ends.
    last_status: str | None = Field(default=None, max_length=40)
    last_detail: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class ScheduleFire(SQLModel, table=True):
    """One tick of one schedule: the key that makes it fire once, and what came of it."""

    __tablename__ = "schedule_fires"
    __table_args__ = (Index("ix_schedule_fires_status", "status", "created_at"),)

    schedule_id: str = Field(primary_key=True, max_length=40)
    scheduled_for: datetime = Field(primary_key=True)
    tenant_id: str = Field(max_length=40)
    # The run this tick makes (chosen at the claim, so a retried fire writes the same run).
    run_id: str = Field(max_length=40)
    # claimed → fired | skipped | refused | error
    status: str = Field(default="claimed", max_length=20)
    detail: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(default_factory=utcnow)


@dataclass(frozen=True)
class Fire:
    """A claimed tick, to be made into a run (or skipped) by `runrelay.server.firing`."""

    schedule_id: str
    tenant_id: str
    scheduled_for: datetime
    run_id: str
    run: dict[str, Any]
    overlap: str
    last_run_id: str | None


def first_fire(schedule: Schedule, after: datetime, *, allow_seconds: bool = False) -> None:
    """Set `next_run_at` to the first tick after `after` within the window (None if none)."""
    del allow_seconds  # validated at the API; kept for symmetry with cron.validate
    if schedule.paused:
        schedule.next_run_at = None
        return
    start = as_utc(schedule.start_at) if schedule.start_at else None
    moment = cron.next_fire(schedule.cron, schedule.timezone, cron.at_least(after, start))
    end = as_utc(schedule.end_at) if schedule.end_at else None
    schedule.next_run_at = None if end is not None and moment > end else moment


class Schedules:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # CRUD ---------------------------------------------------------------------------------------

    def create(self, schedule: Schedule) -> Schedule:
        first_fire(schedule, utcnow())
        with Session(self.engine, expire_on_commit=False) as session:
            session.add(schedule)
            session.commit()
        return schedule

    def get(self, schedule_id: str, *, tenant_id: str) -> Schedule | None:
        with Session(self.engine, expire_on_commit=False) as session:
            found = session.get(Schedule, schedule_id)
        return found if found is not None and found.tenant_id == tenant_id else None

    def page(self, tenant_id: str, *, limit: int, before: str | None = None) -> list[Schedule]:
        """Newest first; `before` is the last id of the previous page."""
        query = select(Schedule).where(Schedule.tenant_id == tenant_id)
        if before is not None:
            query = query.where(col(Schedule.id) < before)
        query = query.order_by(col(Schedule.id).desc()).limit(limit)
        with Session(self.engine, expire_on_commit=False) as session:
            return list(session.exec(query).all())

    def update(self, schedule_id: str, *, tenant_id: str, **values: Any) -> Schedule | None:
        """Change fields; when timing changed (or on resume), the next tick is computed anew."""
        with Session(self.engine, expire_on_commit=False) as session:
            found = session.exec(
                select(Schedule).where(col(Schedule.id) == schedule_id).with_for_update()
            ).first()
            if found is None or found.tenant_id != tenant_id:
                return None
            for name, value in values.items():
                setattr(found, name, value)
            found.updated_at = utcnow()
            first_fire(found, utcnow())
            session.add(found)
            session.commit()
            return found

    def delete(self, schedule_id: str, *, tenant_id: str) -> bool:
        with Session(self.engine) as session:
            deleted = session.exec(
                delete(Schedule).where(
                    col(Schedule.id) == schedule_id, col(Schedule.tenant_id) == tenant_id
                )
            ).rowcount
            session.exec(delete(ScheduleFire).where(col(ScheduleFire.schedule_id) == schedule_id))
            session.commit()
            return bool(deleted)

    # Firing -------------------------------------------------------------------------------------

    def claim_due(
        self, now: datetime, *, limit: int, misfire_grace_s: float, new_run_id: Any
    ) -> list[Fire]:
        """Claim the tick of every due schedule (at most `limit`) and move each one on.

        A tick later than `misfire_grace_s` was missed (downtime): `catch_up` `latest` fires the
        latest missed tick once, `none` fires nothing and waits for the next tick."""
        query = (
            select(Schedule)
            .where(col(Schedule.paused).is_(False), col(Schedule.next_run_at) <= now)
            .order_by(col(Schedule.next_run_at))
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        fires: list[Fire] = []
        with Session(self.engine, expire_on_commit=False) as session:
            try:
                for schedule in session.exec(query).all():
                    ticks = _ticks_to_fire(schedule, now, misfire_grace_s)
                    if schedule.overlap != "enqueue":
                        ticks = ticks[-1:]  # a late pass: one run, for the latest tick
                    for tick in ticks:
                        if schedule.overlap == "skip" and _busy(session, schedule):
                            _skip(session, schedule, tick)
                            continue
                        fire = self._claim(session, schedule, tick, new_run_id("run"))
                        if fire is not None:
                            fires.append(fire)
                            schedule.last_run_id = fire.run_id  # busy from now on
                    session.add(schedule)
                session.commit()
            except IntegrityError:
                # A concurrent pass claimed one of these ticks first (SQLite has no SKIP
                # LOCKED): this pass fires nothing; the next one sees them moved on.
                session.rollback()
                return []
        return fires

    def _claim(
        self, session: Session, schedule: Schedule, tick: datetime, run_id: str
    ) -> Fire | None:
        key = (schedule.id, tick)
        if session.get(ScheduleFire, key) is not None:
            return None  # fired already (a second pass over a schedule not yet moved on)
        session.add(
            ScheduleFire(
                schedule_id=schedule.id,
                scheduled_for=tick,
                tenant_id=schedule.tenant_id,
                run_id=run_id,
            )
        )
        # Flushed now: on a duplicate key the whole pass rolls back (nothing fired twice).
        session.flush()
        return _fire_of(schedule, tick, run_id)

    def claim_now(self, schedule_id: str, *, tenant_id: str, run_id: str) -> Fire | None:
        """`trigger`: a tick at this moment, outside the cron (None: no such schedule)."""
        now = utcnow()
        with Session(self.engine, expire_on_commit=False) as session:
            schedule = session.get(Schedule, schedule_id)
            if schedule is None or schedule.tenant_id != tenant_id:
                return None
            fire = self._claim(session, schedule, now, run_id)
            session.commit()
            return fire

    def stale_fires(self, older_than: datetime, *, limit: int = 100) -> list[Fire]:
        """Claimed ticks whose run was never recorded (the firing process died in between).
        Each one is taken by one pass: its `created_at` moves to now, so the next pass leaves
        it alone until it is stale again."""
        with Session(self.engine, expire_on_commit=False) as session:
            rows = session.exec(
                select(ScheduleFire)
                .where(
                    col(ScheduleFire.status) == "claimed",
                    col(ScheduleFire.created_at) < older_than,
                )
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            fires = []
            for row in rows:
                schedule = session.get(Schedule, row.schedule_id)
                row.created_at = utcnow()
                session.add(row)
                if schedule is not None:
                    fires.append(_fire_of(schedule, as_utc(row.scheduled_for), row.run_id))
            session.commit()
        return fires

    def record(self, fire: Fire, status: str, detail: str | None = None) -> None:
        """What came of a fire, on its schedule (if it still exists) and on the fire. Rows are
        locked schedule first, then fire, as everywhere (claims, deletes): no deadlock."""
        now = utcnow()
        values: dict[str, Any] = {"last_status": status, "last_detail": detail}
        if status == "fired":
            values.update(last_run_id=fire.run_id, last_run_at=now)
        with Session(self.engine) as session:
            session.exec(
                update(Schedule).where(col(Schedule.id) == fire.schedule_id).values(**values)
            )
            if status != "fired":  # the claim named a run that was not made
                session.exec(
                    update(Schedule)
                    .where(
                        col(Schedule.id) == fire.schedule_id,
                        col(Schedule.last_run_id) == fire.run_id,
                    )
                    .values(last_run_id=fire.last_run_id)
                )
            session.exec(
                update(ScheduleFire)
                .where(
                    col(ScheduleFire.schedule_id) == fire.schedule_id,
                    col(ScheduleFire.scheduled_for) == fire.scheduled_for,
                )
                .values(status=status, detail=detail)
            )
            session.commit()

    def active_run(self, run_id: str | None) -> Run | None:
        """The schedule's last run, if it has not ended (for `overlap`)."""
        if run_id is None:
            return None
        with Session(self.engine, expire_on_commit=False) as session:
            run = session.get(Run, run_id)
        return run if run is not None and not RunStatus(run.status).is_terminal else None


def _ticks_to_fire(schedule: Schedule, now: datetime, misfire_grace_s: float) -> list[datetime]:
    """The due ticks to fire, moving `next_run_at` past them: every tick within the grace (a
    late pass fires each one, in order), and of older (missed) ones, none or, with `catch_up`
    `latest`, the latest."""
    assert schedule.next_run_at is not None  # due schedules have one
    grace = timedelta(seconds=misfire_grace_s)
    ticks: list[datetime] = []
    missed: datetime | None = None
    tick = as_utc(schedule.next_run_at)
    while tick <= now:
        if now - tick <= grace:
            ticks.append(tick)
        else:
            missed = tick
        first_fire(schedule, tick)
        if schedule.next_run_at is None:
            break
        tick = as_utc(schedule.next_run_at)
    if missed is not None and schedule.catch_up == "latest" and not ticks:
        ticks.append(missed)
    return ticks


def _busy(session: Session, schedule: Schedule) -> bool:
    """Whether the schedule's last run is active, or claimed and about to be written."""
    if schedule.last_run_id is None:
        return False
    run = session.get(Run, schedule.last_run_id)
    if run is not None:
        return not RunStatus(run.status).is_terminal
    claimed = session.exec(
        select(ScheduleFire.run_id).where(
            col(ScheduleFire.run_id) == schedule.last_run_id, col(ScheduleFire.status) == "claimed"
        )
    ).first()
    return claimed is not None


def _skip(session: Session, schedule: Schedule, tick: datetime) -> None:
    detail = f"run {schedule.last_run_id} is still active (overlap: skip)"
    session.add(
        ScheduleFire(
            schedule_id=schedule.id,
            scheduled_for=tick,
            tenant_id=schedule.tenant_id,
            run_id="",
            status="skipped",
            detail=detail,
        )
    )
    schedule.last_status, schedule.last_detail = "skipped", detail


def _fire_of(schedule: Schedule, tick: datetime, run_id: str) -> Fire:
    return Fire(
        schedule_id=schedule.id,
        tenant_id=schedule.tenant_id,
        scheduled_for=tick,
        run_id=run_id,
        run=dict(schedule.run),
        overlap=schedule.overlap,
        last_run_id=schedule.last_run_id,
    )


class ScheduleListener:
    """`RunListener`: a schedule's `last_status` follows its last run to the end."""

    def records(self, run: Run) -> bool:
        return run.schedule_id is not None

    def in_transaction(self, session: Session, run: Run, previous: RunStatus) -> None:
        del previous
        if run.schedule_id is None or not RunStatus(run.status).is_terminal:
            return
        session.exec(
            update(Schedule)
            .where(col(Schedule.id) == run.schedule_id, col(Schedule.last_run_id) == run.id)
            .values(last_status=run.status)
        )

    async def after_commit(self, run: Run, previous: RunStatus) -> None:
        del run, previous
