"""runs.seq_reserved: the event seqs a run's log may have reached, kept in the database

Revision ID: 0008_seq_reserved
Revises: 0007_batches

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_seq_reserved"
down_revision: str | Sequence[str] | None = "0007_batches"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("seq_reserved", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("seq_reserved")
