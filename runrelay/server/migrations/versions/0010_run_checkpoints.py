"""run_checkpoints: a running run's last checkpoint after a tool result, kept in the database

Revision ID: 0010_run_checkpoints
Revises: 0009_run_logs

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_run_checkpoints"
down_revision: str | Sequence[str] | None = "0009_run_logs"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "run_checkpoints",
        sa.Column("run_id", sa.String(length=40), sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("next_seq", sa.Integer(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("run_id"),
    )


def downgrade() -> None:
    op.drop_table("run_checkpoints")
