"""The HTTP contract of batches (issue 13), shared by the shim and the SDK: the batch object,
its request counts, a line's validation error, and the rows of its results and errors files."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from runrelay.types import RunError, Usage


class BatchStatus(StrEnum):
    """Where a batch stands. `validating` while its upload is read; `in_progress` while its
    lines run; `finalizing` once every line ended; then `completed`. A cancel goes through
    `cancelling` to `cancelled`; past its `completion_window` it ends `expired`; a batch whose
    upload could not be read ends `failed`."""

    VALIDATING = "validating"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    FAILED = "failed"

    @property
    def is_terminal(self) -> bool:
        return self in (self.COMPLETED, self.CANCELLED, self.EXPIRED, self.FAILED)


class LineError(BaseModel):
    """Why one line of an upload was refused: its 1-based number, its `custom_id` when it had a
    readable one, the field (dotted path) and the rule."""

    line: int
    custom_id: str | None = None
    param: str | None = None
    message: str


class RequestCounts(BaseModel):
    """The lines of a batch by where they stand; they always add up to `total`."""

    total: int = 0
    queued: int = 0
    running: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    expired: int = 0

    @property
    def done(self) -> int:
        return self.completed + self.failed + self.cancelled + self.expired


class BatchObject(BaseModel):
    id: str
    object: str = "batch"
    tenant_id: str
    status: BatchStatus
    completion_window: str
    request_counts: RequestCounts
    usage: Usage
    metadata: dict[str, Any] = Field(default_factory=dict)
    defaults: dict[str, Any] = Field(default_factory=dict)
    webhook: str | None = None
    on_invalid: str = "fail"
    validation_errors: list[LineError] = Field(default_factory=list)
    invalid_lines: int = 0
    created_at: datetime
    expires_at: datetime
    in_progress_at: datetime | None = None
    finalizing_at: datetime | None = None
    completed_at: datetime | None = None
    cancelling_at: datetime | None = None
    cancelled_at: datetime | None = None
    expired_at: datetime | None = None
    failed_at: datetime | None = None
    results_url: str
    errors_url: str
    events_url: str


class BatchList(BaseModel):
    object: str = "list"
    data: list[BatchObject]
    has_more: bool
    next_cursor: str | None = None


class BatchResult(BaseModel):
    """A line of `/results`: a completed run's answer."""

    custom_id: str
    line: int
    run_id: str
    output: str | None = None
    result: dict[str, Any] | None = None
    usage: Usage | None = None


class BatchError(BaseModel):
    """A line of `/errors`: a line whose run failed, was cancelled or expired (`run_id` is None
    when it ended before its run was created)."""

    custom_id: str
    line: int
    run_id: str | None = None
    status: str
    error: RunError
