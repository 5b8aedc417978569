"""Request and response models of the HTTP contract (DESIGN §3), shared by the shim and the SDK."""

from __future__ import annotations

import math
import re
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

TAG_PATTERN = re.compile(r"^[a-z0-9][a-z0-9\-_]*$")
# With `thread_id`, when the thread has an active run: reject (409), enqueue (run after it; the
# default) or interrupt (cancel it).
MultitaskStrategy = Literal["reject", "enqueue", "interrupt"]
# A `suggestions` event carries at most this many follow-ups.
MAX_SUGGESTIONS = 6


class RunStatus(StrEnum):
    """Where a run stands. Which status may follow which is written once, in
    `runrelay.server.lifecycle.TRANSITIONS`; the README's "Run statuses" table mirrors it."""

    QUEUED = "queued"
    RUNNING = "running"
    REQUIRES_ACTION = "requires_action"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def is_terminal(self) -> bool:
        """Whether the run has ended (its log ends with `done`); nothing follows these."""
        return self in _TERMINAL


_TERMINAL = frozenset(
    {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.EXPIRED}
)


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
        )


MAX_TOKENS_LIMIT = 10_000_000


class ModelParams(BaseModel):
    """Overrides of the agent's model parameters (the Mentiora SDK's `ModelParams`). Building one
    checks only the types; the ranges (`broken_rule`) are checked where a run is asked for: by
    the SDK before it sends anything (`ValidationError`), by the API (422)."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(
        None, description="0 to 2 inclusive", json_schema_extra={"minimum": 0, "maximum": 2}
    )
    max_tokens: int | None = Field(
        None,
        description=f"a positive integer (at most {MAX_TOKENS_LIMIT:,})",
        json_schema_extra={"exclusiveMinimum": 0, "maximum": MAX_TOKENS_LIMIT},
    )
    seed: int | None = None

    def broken_rule(self) -> tuple[str, str] | None:
        """`(param, message)` for the first range these parameters are outside of, else None."""
        temperature = self.temperature
        if temperature is not None and (math.isnan(temperature) or not 0 <= temperature <= 2):
            return (
                "model_params.temperature",
                f"model_params.temperature must be between 0 and 2 inclusive (got {temperature})",
            )
        tokens = self.max_tokens
        if tokens is not None and not 0 < tokens <= MAX_TOKENS_LIMIT:
            return (
                "model_params.max_tokens",
                "model_params.max_tokens must be a positive integer, greater than 0 and at most "
                f"{MAX_TOKENS_LIMIT} (got {tokens})",
            )
        return None


class A2ATask(BaseModel):
    """Agent-to-Agent request shape: `{"task": {"id": ..., "input": {...}}}`."""

    id: str | None = None
    input: dict[str, Any] = Field(default_factory=dict)


WebhookEvent = Literal[
    "run.completed", "run.failed", "run.cancelled", "run.expired", "run.requires_action"
]
WEBHOOK_EVENTS: tuple[str, ...] = (
    "run.completed",
    "run.failed",
    "run.cancelled",
    "run.expired",
    "run.requires_action",
)


class WebhookSpec(BaseModel):
    """Where a run's lifecycle events go; `events` None means all of them."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(pattern=r"^https?://[^\s/?#]+", max_length=2000)
    events: list[WebhookEvent] | None = Field(None, min_length=1)


class RunCreate(BaseModel):
    """The body of `POST /v1/runs`, `/v1/runs/wait` and `/v1/runs/stream`."""

    model_config = ConfigDict(extra="forbid")

    agent: str | None = Field(None, min_length=1, max_length=200, description="name or shortcut")
    agent_id: str | None = Field(None, min_length=1, max_length=200)
    revision: int | None = Field(None, ge=1)
    tag: str | None = Field(None, min_length=1, max_length=100)
    input: dict[str, Any] | None = None
    message: str | None = Field(None, max_length=1_000_000)
    task: A2ATask | None = None
    thread_id: str | None = Field(None, min_length=1, max_length=200)
    multitask_strategy: MultitaskStrategy | None = Field(
        None,
        description="with thread_id, when the thread has an active run: reject (409), enqueue "
        "(run after it; the default) or interrupt (cancel it)",
    )
    model_id: str | None = Field(None, min_length=1, max_length=200)
    model_params: ModelParams | None = None
    end_user_id: str | None = Field(None, max_length=200)
    metadata: dict[str, Any] | None = None
    tenant_id: str | None = Field(None, min_length=1, max_length=100)
    idempotency_key: str | None = Field(None, min_length=1, max_length=200)
    webhook: WebhookSpec | None = Field(
        None,
        description="where the run's lifecycle events are POSTed, signed (Standard Webhooks): "
        "a URL, or {url, events}",
    )
    timeout_s: float | None = Field(
        None, gt=0, description="the run's deadline in seconds (at most the server's maximum)"
    )

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        """Refuse what JSON allows but the database cannot store: NUL characters, NaN, Infinity."""
        problem = _unstorable(data, "")
        if problem is not None:
            raise ValueError(problem)
        return data

    @field_validator("tag")
    @classmethod
    def _tag_pattern(cls, tag: str | None) -> str | None:
        if tag is not None and not TAG_PATTERN.match(tag):
            raise ValueError(
                "must match ^[a-z0-9][a-z0-9\\-_]*$ (lowercase letters, digits, '-' and '_', "
                f"starting with a letter or digit); got {tag!r}"
            )
        return tag

    @field_validator("model_params")
    @classmethod
    def _params_in_range(cls, params: ModelParams | None) -> ModelParams | None:
        broken = params.broken_rule() if params is not None else None
        if broken is not None:
            param, message = broken
            # `param` in the context: the 422 names the nested field (api_shim/errors.py).
            context = {"message": message, "param": param}
            raise PydanticCustomError("value_error", "{message}", context)
        return params

    @field_validator("webhook", mode="before")
    @classmethod
    def _webhook_url(cls, webhook: Any) -> Any:
        """A bare URL is `{url}` (every event)."""
        return {"url": webhook} if isinstance(webhook, str) else webhook

    @field_validator("message")
    @classmethod
    def _message_not_blank(cls, message: str | None) -> str | None:
        if message is not None and not message.strip():
            raise ValueError("must not be empty")
        return message

    @model_validator(mode="after")
    def _one_agent_and_some_input(self) -> RunCreate:
        given = [name for name in ("agent", "agent_id", "tag") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of `agent`, `agent_id` or `tag` "
                f"(got {', '.join(given) if given else 'none'})"
            )
        if self.revision is not None and self.agent_id is None:
            raise ValueError("`revision` goes with `agent_id`")
        if self.task is not None:
            if self.input is not None:
                raise ValueError("give either `input` or an A2A `task`, not both")
            self.input = self.task.input
        if self.input is None and self.message is None:
            raise ValueError("give `input` (an object) and/or `message` (a string)")
        return self


def _unstorable(value: Any, path: str) -> str | None:
    if isinstance(value, str) and "\x00" in value:
        return f"{path or 'a string'} must not contain NUL characters (\\u0000)"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{path or 'a number'} must be a finite number (got {value})"
    if isinstance(value, dict):
        for key, item in value.items():
            found = _unstorable(str(key), path) or _unstorable(item, f"{path}.{key}".lstrip("."))
            if found:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _unstorable(item, f"{path}[{index}]")
            if found:
                return found
    return None


class AgentRef(BaseModel):
    name: str
    id: str
    revision: int
    tag: str | None = None


class RunError(BaseModel):
    code: str
    message: str


class ToolApproval(BaseModel):
    """A tool call a paused run waits on, with its decision once made."""

    tool_call_id: str
    name: str
    arguments: Any = None
    approved: bool | None = None
    reason: str | None = None


class RequiredAction(BaseModel):
    """What a `requires_action` run waits for: a decision on each of these tool calls."""

    type: Literal["approve_tool_calls"] = "approve_tool_calls"
    tool_calls: list[ToolApproval]


class ApprovalDecision(BaseModel):
    """`POST /v1/runs/{id}/approvals`: approve or reject one call the run waits on."""

    model_config = ConfigDict(extra="forbid")

    call_id: str = Field(
        min_length=1, max_length=200, description="the tool_call_id of approval_required"
    )
    approved: bool = Field(strict=True, description="true runs the call, false rejects it")
    reason: str | None = Field(
        None, max_length=4000, description="told to the model when the call is rejected"
    )


class WaitingFor(BaseModel):
    """Why a `queued` run has not started: `concurrency_limit` (in its tenant's queue, behind
    `position - 1` others, until a slot frees), `thread` (its thread's active run must end
    first; `position` among the thread's waiting runs) or `dispatch` (admitted; waiting for a
    worker to take it)."""

    reason: Literal["concurrency_limit", "thread", "dispatch"]
    position: int | None = None


class RunObject(BaseModel):
    object: Literal["run"] = "run"
    id: str
    tenant_id: str
    status: RunStatus
    agent: AgentRef
    thread_id: str | None = None
    input: dict[str, Any] | None = None
    message: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    model_id: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    output: str | None = None
    result: dict[str, Any] | None = None
    usage: Usage | None = None
    usage_by_model: dict[str, Usage] | None = None
    error: RunError | None = None
    required_action: RequiredAction | None = None
    attempts: int = 0
    events_url: str
    # On the create response only: the events URL with a short-lived read-only token, for
    # browsers (`EventSource` cannot send the API key). See POST /v1/runs/{id}/stream_token.
    stream_url: str | None = None
    # On a single queued run (create, GET /v1/runs/{id}): why it has not started yet.
    waiting_for: WaitingFor | None = None
    schedule_id: str | None = None
    scheduled_for: datetime | None = None
    webhook: WebhookSpec | None = None


class RunList(BaseModel):
    object: Literal["list"] = "list"
    data: list[RunObject]
    has_more: bool
    next_cursor: str | None = None


class ThreadMessageObject(BaseModel):
    """One message of a thread's history, as the model saw it."""

    seq: int
    run_id: str
    role: str
    content: Any = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    created_at: datetime


class ThreadObject(BaseModel):
    """`GET /v1/threads/{id}`: the thread and a page of its messages, oldest first."""

    object: Literal["thread"] = "thread"
    id: str
    created_at: datetime
    updated_at: datetime
    # The thread's queued, running or paused runs, oldest first (the first one runs).
    active_run_ids: list[str] = Field(default_factory=list)
    messages: list[ThreadMessageObject]
    has_more: bool = False
    # Pass as `after_seq` for the next page of messages.
    next_after_seq: int | None = None


class WaitResponse(BaseModel):
    """FAOS-style synchronous response."""

    result: dict[str, Any]
    metadata: dict[str, Any]
    usage: Usage
    request_id: str
    run: RunObject


class AgentInfo(BaseModel):
    object: Literal["agent"] = "agent"
    id: str
    name: str
    display_name: str
    description: str
    module_key: str
    module_name: str
    revision: int
    provider: str
    model: str
    tools: list[str]
    capabilities: list[str]
    task_template: str | None = None
    shortcuts: list[str]
    # Tags pointing at this agent → the revision each points at (`tag` in a run request).
    tags: dict[str, int] = Field(default_factory=dict)


class ShortcutDefinition(BaseModel):
    """An available shortcut (FAOS): a module (`bank`) or an agent (`bank credit-analyst`)."""

    pattern: str
    type: Literal["module", "agent", "command"]
    description: str
    module_key: str
    agent_id: str | None = None
    examples: list[str] = Field(default_factory=list)


class ShortcutResolveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: str = Field(min_length=1, max_length=1000, description='e.g. "bank credit-analyst"')


class ShortcutResolution(BaseModel):
    """What a shortcut command leads to; `suggestions` are close matches when it leads nowhere."""

    resolved: bool
    agent_id: str | None = None
    module_key: str | None = None
    module_name: str | None = None
    agent_name: str | None = None
    task_template: str | None = None
    capabilities: list[str] = Field(default_factory=list)
    suggestions: list[str] = Field(default_factory=list)


# Schedules and webhooks (issue 12) --------------------------------------------------------------


class ScheduleTiming(BaseModel):
    """When a schedule fires; shared by create and the fields PATCH may change."""

    cron: str = Field(
        min_length=1,
        max_length=200,
        description="5 fields (minute hour day-of-month month day-of-week) or @hourly, "
        "@daily, @weekly, @monthly, @yearly",
    )
    timezone: str = Field("UTC", min_length=1, max_length=64, description="IANA time zone")
    start_at: datetime | None = None
    end_at: datetime | None = None
    overlap: Literal["skip", "enqueue", "cancel_previous"] = Field(
        "skip",
        description="while the last run is active: skip the tick, enqueue a run anyway, or "
        "cancel the last run and start a new one",
    )
    catch_up: Literal["none", "latest"] = Field(
        "none", description="after downtime: fire nothing for missed ticks, or the latest once"
    )
    paused: bool = False

    @model_validator(mode="after")
    def _window(self) -> ScheduleTiming:
        for name in ("start_at", "end_at"):
            moment = getattr(self, name)
            if moment is not None and moment.tzinfo is None:
                raise ValueError(f"{name} must carry a UTC offset (e.g. 2026-01-01T00:00:00Z)")
        if self.start_at and self.end_at and self.end_at <= self.start_at:
            raise ValueError("end_at must be after start_at")
        return self


class ScheduleCreate(RunCreate, ScheduleTiming):
    """`POST /v1/schedules`: a run request (as `POST /v1/runs` takes it) plus when to make it."""


class ScheduleObject(BaseModel):
    object: Literal["schedule"] = "schedule"
    id: str
    tenant_id: str
    cron: str
    timezone: str
    start_at: datetime | None = None
    end_at: datetime | None = None
    overlap: str
    catch_up: str
    paused: bool
    run: dict[str, Any] = Field(description="the run request each tick makes")
    next_run_at: datetime | None = None
    last_run_at: datetime | None = None
    last_run_id: str | None = None
    last_status: str | None = Field(
        None,
        description="fired | skipped | refused | error, then the last run's status once it ends",
    )
    last_detail: str | None = None
    created_at: datetime
    updated_at: datetime


class ScheduleList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ScheduleObject]
    has_more: bool
    next_cursor: str | None = None


class WebhookAttempt(BaseModel):
    at: datetime
    status_code: int | None = None
    error: str | None = None
    duration_ms: int
    response: str | None = Field(None, description="the start of the receiver's answer")


class WebhookDeliveryObject(BaseModel):
    object: Literal["webhook_delivery"] = "webhook_delivery"
    id: str = Field(description="the webhook-id header, the same on every attempt")
    run_id: str
    event_type: str
    url: str
    status: Literal["pending", "delivered", "failed", "disabled"]
    attempts: list[WebhookAttempt]
    next_attempt_at: datetime | None = None
    created_at: datetime
    delivered_at: datetime | None = None


class WebhookDeliveryList(BaseModel):
    object: Literal["list"] = "list"
    data: list[WebhookDeliveryObject]
