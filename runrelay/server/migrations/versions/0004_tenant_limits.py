"""tenant limits: per-tenant quotas (NULL takes the settings' default)

Revision ID: 0004
Revises: 0001

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = ("max_concurrent_runs", "max_queued_runs", "requests_per_minute")


def upgrade() -> None:
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        for name in _COLUMNS:
            batch_op.add_column(sa.Column(name, sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("token_budget", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("budget_period", sa.String(length=10), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_column("budget_period")
        batch_op.drop_column("token_budget")
        for name in reversed(_COLUMNS):
            batch_op.drop_column(name)
