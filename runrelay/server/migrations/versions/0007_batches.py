"""batches: a batch per JSONL upload and one row per line (issue 13)

Revision ID: 0007_batches
Revises: 0006_schedules_webhooks

TEMPORARY: chained to 0005 on the `batches` branch, so its tests can migrate before the
schedules/webhooks migration (0006_schedules_webhooks) exists; the lead re-chains at merge.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_batches"
down_revision: str | Sequence[str] | None = "0006_schedules_webhooks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("defaults", sa.JSON(), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("completion_window", sa.String(length=20), nullable=False),
        sa.Column("webhook", sa.String(length=2000), nullable=True),
        sa.Column("on_invalid", sa.String(length=10), nullable=False),
        sa.Column("validation_errors", sa.JSON(), nullable=True),
        sa.Column("invalid_lines", sa.Integer(), nullable=False),
        *(
            sa.Column(name, sa.Integer(), nullable=False)
            for name in ("total", "dispatched", "completed", "failed", "cancelled", "expired")
        ),
        *(
            sa.Column(name, sa.BigInteger(), nullable=False)
            for name in ("prompt_tokens", "completion_tokens", "total_tokens")
        ),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        *(
            sa.Column(name, sa.DateTime(timezone=True), nullable=True)
            for name in (
                "in_progress_at",
                "finalizing_at",
                "completed_at",
                "cancelling_at",
                "cancelled_at",
                "expired_at",
                "failed_at",
            )
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_batches_status", "batches", ["status"])
    op.create_index("ix_batches_tenant_id_id", "batches", ["tenant_id", "id"])
    op.create_table(
        "batch_items",
        sa.Column("batch_id", sa.String(length=40), sa.ForeignKey("batches.id"), nullable=False),
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("custom_id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("agent_name", sa.String(length=200), nullable=False),
        sa.Column("agent_id", sa.String(length=200), nullable=False),
        sa.Column("agent_revision", sa.Integer(), nullable=False),
        sa.Column("reserve_tokens", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=40), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("batch_id", "line"),
    )
    op.create_index("ix_batch_items_status", "batch_items", ["batch_id", "status", "line"])
    op.create_index(
        "ix_batch_items_custom_id", "batch_items", ["batch_id", "custom_id"], unique=True
    )
    op.create_index("ix_batch_items_run_id", "batch_items", ["run_id"])


def downgrade() -> None:
    op.drop_table("batch_items")
    op.drop_table("batches")
