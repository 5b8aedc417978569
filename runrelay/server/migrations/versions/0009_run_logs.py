"""run_logs: a finished run's archived event log as one row, instead of a row per event

Revision ID: 0009_run_logs
Revises: 0008_seq_reserved

"""

import json
from collections.abc import Sequence
from itertools import groupby

import sqlalchemy as sa
from alembic import op

revision: str = "0009_run_logs"
down_revision: str | Sequence[str] | None = "0008_seq_reserved"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BATCH = 500  # runs copied per INSERT


def _run_logs() -> sa.TableClause:
    return sa.table("run_logs", sa.column("run_id", sa.String), sa.column("events", sa.Text))


def _run_events() -> sa.TableClause:
    return sa.table(
        "run_events",
        sa.column("run_id", sa.String),
        sa.column("seq", sa.Integer),
        sa.column("type", sa.String),
        sa.column("data", sa.Text),
    )


def upgrade() -> None:
    op.create_table(
        "run_logs",
        sa.Column("run_id", sa.String(length=40), sa.ForeignKey("runs.id"), primary_key=True),
        sa.Column("events", sa.Text(), nullable=False),
    )
    events, logs = _run_events(), _run_logs()
    rows = op.get_bind().execute(
        sa.select(events.c.run_id, events.c.seq, events.c.data).order_by(
            events.c.run_id, events.c.seq
        )
    )
    batch: list[dict[str, str]] = []
    for run_id, group in groupby(rows, key=lambda row: row.run_id):
        lines = "\n".join(f"{row.seq} {row.data}" for row in group)
        batch.append({"run_id": run_id, "events": lines})
        if len(batch) >= _BATCH:
            op.bulk_insert(logs, batch)
            batch = []
    if batch:
        op.bulk_insert(logs, batch)
    op.drop_table("run_events")


def downgrade() -> None:
    op.create_table(
        "run_events",
        sa.Column("run_id", sa.String(length=40), sa.ForeignKey("runs.id"), primary_key=True),
        sa.Column("seq", sa.Integer(), primary_key=True),
        sa.Column("type", sa.String(length=40), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
    )
    logs, events = _run_logs(), _run_events()
    for run_id, text in op.get_bind().execute(sa.select(logs.c.run_id, logs.c.events)).all():
        rows = []
        for line in text.split("\n"):
            seq, _, data = line.partition(" ")
            rows.append({"run_id": run_id, "seq": int(seq), "type": _type_of(data), "data": data})
        op.bulk_insert(events, rows)
    op.drop_table("run_logs")


def _type_of(data: str) -> str:
    return str(json.loads(data).get("type", ""))[:40]
