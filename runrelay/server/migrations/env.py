"""Alembic environment: runs on the connection `runrelay.server.migrate.upgrade` hands over."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import runrelay.server.batch_tables
import runrelay.server.schedules
import runrelay.server.tables
import runrelay.server.webhooks  # noqa: F401  (registers the tables on SQLModel.metadata)

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
