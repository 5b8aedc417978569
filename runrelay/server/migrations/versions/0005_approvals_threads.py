"""approvals and threads: paused runs' pending tool calls, thread histories

Revision ID: 0005
Revises: 0004

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("required_action", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("waited_s", sa.Float(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("resumes", sa.Integer(), nullable=False, server_default="0"))
        batch_op.create_index("ix_runs_tenant_thread", ["tenant_id", "thread_id"])
    op.create_table(
        "threads",
        sa.Column("tenant_id", sa.String(length=40), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("id", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "id"),
    )
    op.create_table(
        "thread_messages",
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("thread_id", sa.String(length=200), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=40), nullable=False),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.Column("message", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "thread_id", "seq"),
    )


def downgrade() -> None:
    op.drop_table("thread_messages")
    op.drop_table("threads")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index("ix_runs_tenant_thread")
        batch_op.drop_column("resumes")
        batch_op.drop_column("waited_s")
        batch_op.drop_column("required_action")
