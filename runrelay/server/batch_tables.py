"""The tables of batches (issue 13): one row per batch with its counters, one per line.

A line (`BatchItem`) moves `pending` (stored, no run yet) → `queued` (the feeder created its run)
→ `completed | failed | cancelled | expired`, the last step written by the batch listener in the
transaction that ends the run. The batch's counters move in that same transaction, so they
always add up: `total = pending + in flight + completed + failed + cancelled + expired`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, Text
from sqlmodel import Field, SQLModel

from runrelay.server.tables import utcnow


class Batch(SQLModel, table=True):
    __tablename__ = "batches"
    __table_args__ = (Index("ix_batches_tenant_id_id", "tenant_id", "id"),)

    id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = Field(foreign_key="tenants.id", max_length=40)
    status: str = Field(index=True, max_length=20)
    # Batch-level defaults every line starts from (agent, model_params, metadata).
    defaults: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    batch_metadata: dict[str, Any] | None = Field(default=None, sa_column=Column("metadata", JSON))
    completion_window: str = Field(max_length=20)
    webhook: str | None = Field(default=None, max_length=2000)
    on_invalid: str = Field(default="fail", max_length=10)
    # Lines refused at upload (`on_invalid: skip`): the first ones, and how many in all.
    validation_errors: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(JSON))
    invalid_lines: int = 0
    total: int = 0
    # Lines whose run was created; the rest of `total` minus the ended ones wait in the table.
    dispatched: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    expired: int = 0
    prompt_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    completion_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    total_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    # Grows with every change of the row: the id of the progress events (`/events`).
    version: int = 0
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
    in_progress_at: datetime | None = None
    finalizing_at: datetime | None = None
    completed_at: datetime | None = None
    cancelling_at: datetime | None = None
    cancelled_at: datetime | None = None
    expired_at: datetime | None = None
    failed_at: datetime | None = None


class BatchItem(SQLModel, table=True):
    """One line of a batch: its validated run request and, once fed, its run."""

    __tablename__ = "batch_items"
    __table_args__ = (
        Index("ix_batch_items_status", "batch_id", "status", "line"),
        Index("ix_batch_items_custom_id", "batch_id", "custom_id", unique=True),
        Index("ix_batch_items_run_id", "run_id"),
    )

    batch_id: str = Field(primary_key=True, foreign_key="batches.id", max_length=40)
    line: int = Field(primary_key=True)
    custom_id: str = Field(max_length=64)
    status: str = Field(max_length=20)
    # The run request with the batch's defaults applied, as `POST /v1/runs` would take it.
    request: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    agent_name: str = Field(max_length=200)
    agent_id: str = Field(max_length=200)
    agent_revision: int = 1
    reserve_tokens: int = 0
    run_id: str | None = Field(default=None, max_length=40)
    # Why a line ended without a result when it had no run (cancelled or expired while pending).
    error: str | None = Field(default=None, sa_column=Column(Text))
