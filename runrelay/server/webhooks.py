"""Webhooks on the database side: signing secrets, the delivery log, and the run listener that
records what to send.

A run (or the schedule that made it) with a `webhook` gets a POST for each lifecycle event it
asks for: `run.completed`, `run.failed`, `run.cancelled`, `run.expired`, `run.requires_action`.
`WebhookListener.in_transaction` writes a `webhook_deliveries` row (the exact body, and its id,
which is the `webhook-id` of every attempt) inside the transaction that moved the run, so the
intent is as durable as the outcome; `after_commit` sends the delivery task. A worker that dies
before that, or while holding a retry, leaves the row `pending` and due: the beat's sweep sends
it again (`lost`).

Delivery (worker/beat.py, with `runrelay.server.webhook_send`) takes an attempt with a
conditional UPDATE (`take_attempt`: due, pending, pushed out by the attempt's timeout), so two
tasks for one delivery never POST at once. Signed per Standard Webhooks with the tenant's
secret (`whsec_…`), and with the previous one too for a while after a rotation.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import JSON, Column, Engine, Index, Text, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, col, select
from standardwebhooks.webhooks import Webhook

from runrelay.server.store import new_id
from runrelay.server.tables import Run, as_utc, utcnow
from runrelay.types import RunStatus

log = logging.getLogger(__name__)
_EVENT_OF = {
    RunStatus.COMPLETED: "run.completed",
    RunStatus.FAILED: "run.failed",
    RunStatus.CANCELLED: "run.cancelled",
    RunStatus.EXPIRED: "run.expired",
    RunStatus.REQUIRES_ACTION: "run.requires_action",
}


class WebhookDelivery(SQLModel, table=True):
    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_run", "run_id"),
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    )

    id: str = Field(primary_key=True, max_length=40)
    run_id: str = Field(max_length=40)
    tenant_id: str = Field(max_length=40)
    event_type: str = Field(max_length=40)
    url: str = Field(sa_column=Column(Text, nullable=False))
    # The exact body every attempt sends (and signs).
    body: str = Field(sa_column=Column(Text, nullable=False))
    # pending | delivered | failed | disabled (410 Gone)
    status: str = Field(default="pending", max_length=20)
    attempts: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    next_attempt_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)
    delivered_at: datetime | None = None


class WebhookSecret(SQLModel, table=True):
    """A tenant's signing secret, and the one it replaced (signing too until `previous_until`)."""

    __tablename__ = "webhook_secrets"

    tenant_id: str = Field(primary_key=True, foreign_key="tenants.id", max_length=40)
    secret: str = Field(max_length=100)
    previous: str | None = Field(default=None, max_length=100)
    previous_until: datetime | None = None
    rotated_at: datetime = Field(default_factory=utcnow)


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def rotate_secret(engine: Engine, tenant_id: str, *, grace_s: int) -> WebhookSecret:
    """Create the tenant's secret, or replace it (the old one keeps signing for `grace_s`)."""
    with Session(engine, expire_on_commit=False) as session:
        row = session.exec(
            select(WebhookSecret).where(col(WebhookSecret.tenant_id) == tenant_id).with_for_update()
        ).first()
        now = utcnow()
        if row is None:
            row = WebhookSecret(tenant_id=tenant_id, secret=new_secret(), rotated_at=now)
        else:
            row.previous, row.secret = row.secret, new_secret()
            row.previous_until = now + timedelta(seconds=grace_s)
            row.rotated_at = now
        session.add(row)
        session.commit()
        return row


def signing_secrets(engine: Engine, tenant_id: str, *, grace_s: int) -> list[str]:
    """The secrets a delivery is signed with now: the current one (created if the tenant has
    none yet), then the previous one while its grace lasts."""
    with Session(engine, expire_on_commit=False) as session:
        row = session.get(WebhookSecret, tenant_id)
        if row is None:  # the tenant's first delivery: create its secret, once
            session.add(WebhookSecret(tenant_id=tenant_id, secret=new_secret()))
            try:
                session.commit()
            except IntegrityError:  # a concurrent delivery created it first
                session.rollback()
            row = session.get(WebhookSecret, tenant_id)
            assert row is not None  # just written, by us or the other delivery
    found = [row.secret]
    if row.previous and row.previous_until and as_utc(row.previous_until) > utcnow():
        found.append(row.previous)
    return found


def sign(secret_values: Sequence[str], msg_id: str, timestamp: datetime, body: str) -> str:
    """The `webhook-signature` header: one `v1,<base64>` per secret, space-separated."""
    return " ".join(Webhook(s).sign(msg_id, timestamp, body) for s in secret_values)


def run_payload(run: Run) -> dict[str, Any]:
    """The run as the event's `data.run` shows it (the fields of the API's run object that a
    receiver acts on)."""

    def when(moment: datetime | None) -> str | None:
        return as_utc(moment).isoformat() if moment else None

    return {
        "object": "run",
        "id": run.id,
        "tenant_id": run.tenant_id,
        "status": run.status,
        "agent": {"name": run.agent_name, "id": run.agent_id, "revision": run.agent_revision},
        "thread_id": run.thread_id,
        "metadata": run.run_metadata or {},
        "created_at": when(run.created_at),
        "started_at": when(run.started_at),
        "finished_at": when(run.finished_at),
        "output": run.output,
        "result": run.result,
        "usage": run.usage,
        "error": run.error,
        "schedule_id": run.schedule_id,
        "scheduled_for": when(run.scheduled_for),
        "events_url": f"/v1/runs/{run.id}/events",
    }


def wants(run: Run) -> str | None:
    """The event type the run's current status is, if its webhook asks for it."""
    event = _EVENT_OF.get(RunStatus(run.status))
    if event is None or not run.webhook:
        return None
    events = run.webhook.get("events")
    return event if events is None or event in events else None


def record_delivery(
    session: Session, *, subject_id: str, tenant_id: str, event: str, url: str, data: Any
) -> str:
    """Add a delivery of `{type, timestamp, data}` to `url` in `session`'s transaction (so it
    is as durable as what it reports); its id, for the task that sends it once committed.
    `subject_id` is the run (or batch) the event is about."""
    now = utcnow()
    body = {"type": event, "timestamp": now.isoformat(), "data": data}
    delivery = WebhookDelivery(
        id=new_id("msg"),
        run_id=subject_id,
        tenant_id=tenant_id,
        event_type=event,
        url=url,
        body=json.dumps(body, separators=(",", ":"), default=str),
        next_attempt_at=now,
        created_at=now,
    )
    session.add(delivery)
    return delivery.id


class WebhookListener:
    """`RunListener`: records a delivery in the transaction of the run's new status (so it is
    as durable as the outcome), then sends its task once that committed. A task that is lost
    (a worker died first) is sent again by the beat's sweep of due deliveries."""

    def __init__(self, send: Callable[[str], None]) -> None:
        """`send` enqueues the delivery task for a delivery id (by task name)."""
        self._send = send
        # Deliveries recorded in a transition's transaction, sent once it committed.
        self._recorded: dict[tuple[str, str], str] = {}

    def records(self, run: Run) -> bool:
        return bool(run.webhook)

    def in_transaction(self, session: Session, run: Run, previous: RunStatus) -> None:
        del previous
        event = wants(run)
        if event is None or not run.webhook:
            return
        self._recorded[(run.id, str(run.status))] = record_delivery(
            session,
            subject_id=run.id,
            tenant_id=run.tenant_id,
            event=event,
            url=str(run.webhook["url"]),
            data={"run": run_payload(run)},
        )

    async def after_commit(self, run: Run, previous: RunStatus) -> None:
        del previous
        delivery_id = self._recorded.pop((run.id, str(run.status)), None)
        if delivery_id is not None:
            await asyncio.to_thread(self._send, delivery_id)


def deliveries(engine: Engine, run_id: str) -> list[WebhookDelivery]:
    with Session(engine, expire_on_commit=False) as session:
        return list(
            session.exec(
                select(WebhookDelivery)
                .where(col(WebhookDelivery.run_id) == run_id)
                .order_by(col(WebhookDelivery.id))
            ).all()
        )


def get_delivery(engine: Engine, delivery_id: str) -> WebhookDelivery | None:
    with Session(engine, expire_on_commit=False) as session:
        return session.get(WebhookDelivery, delivery_id)


def take_attempt(engine: Engine, delivery_id: str, *, hold_s: float) -> WebhookDelivery | None:
    """The delivery, if it is pending and due; its next attempt is pushed `hold_s` out first,
    so no other task takes it while this one sends. None: not due, or not pending."""
    now = utcnow()
    stmt = (
        update(WebhookDelivery)
        .where(
            col(WebhookDelivery.id) == delivery_id,
            col(WebhookDelivery.status) == "pending",
            col(WebhookDelivery.next_attempt_at) <= now,
        )
        .values(next_attempt_at=now + timedelta(seconds=hold_s))
    )
    with Session(engine, expire_on_commit=False) as session:
        if session.exec(stmt).rowcount == 0:
            return None
        session.commit()
        return session.get(WebhookDelivery, delivery_id)


def record_attempt(
    engine: Engine,
    delivery_id: str,
    attempt: dict[str, Any],
    *,
    status: str,
    next_attempt_at: datetime | None,
) -> None:
    with Session(engine) as session:
        row = session.get(WebhookDelivery, delivery_id)
        if row is None:
            return
        row.attempts = [*row.attempts, attempt]
        row.status = status
        row.next_attempt_at = next_attempt_at
        if status == "delivered":
            row.delivered_at = utcnow()
        session.add(row)
        session.commit()


def redeliver(engine: Engine, delivery_id: str) -> WebhookDelivery | None:
    """Make a delivery pending and due again (its attempts stay in the log)."""
    with Session(engine, expire_on_commit=False) as session:
        row = session.get(WebhookDelivery, delivery_id)
        if row is None:
            return None
        row.status = "pending"
        row.next_attempt_at = utcnow()
        session.add(row)
        session.commit()
        return row


def lost(engine: Engine, *, due_before: datetime, limit: int = 500) -> list[str]:
    """Pending deliveries overdue by more than the sweep's slack: their task was lost."""
    with Session(engine) as session:
        return list(
            session.exec(
                select(WebhookDelivery.id)
                .where(
                    col(WebhookDelivery.status) == "pending",
                    col(WebhookDelivery.next_attempt_at) < due_before,
                )
                .order_by(col(WebhookDelivery.next_attempt_at))
                .limit(limit)
            ).all()
        )
