"""SQLModel tables: the database is the truth about tenants, keys, runs and archived event logs."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any, Protocol, TypeVar

from sqlalchemy import JSON, BigInteger, Column, Dialect, Index, String, Table, Text, inspect
from sqlalchemy.orm import configure_mappers
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

from runrelay.types import RunStatus


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """SQLite hands datetimes back naive; they were written in UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class StatusType(TypeDecorator[RunStatus]):
    """A run's status: a plain string column (no database enum, no migration), read back as
    `RunStatus`."""

    impl = String(20)
    cache_ok = True

    def process_bind_param(self, value: RunStatus | str | None, dialect: Dialect) -> str | None:
        return None if value is None else RunStatus(value).value

    def process_result_value(self, value: str | None, dialect: Dialect) -> RunStatus | None:
        return None if value is None else RunStatus(value)


class Tenant(SQLModel, table=True):
    __tablename__ = "tenants"

    id: str = Field(primary_key=True, max_length=40)
    name: str = Field(unique=True, index=True, max_length=100)
    created_at: datetime = Field(default_factory=utcnow)
    # Quota limits; None takes the default from the settings (runrelay/server/tenants.py).
    max_concurrent_runs: int | None = None
    max_queued_runs: int | None = None
    requests_per_minute: int | None = None
    token_budget: int | None = Field(default=None, sa_column=Column(BigInteger))
    budget_period: str | None = Field(default=None, max_length=10)


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"

    id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = Field(foreign_key="tenants.id", index=True, max_length=40)
    prefix: str = Field(max_length=20)
    key_hash: str = Field(unique=True, index=True, max_length=64)
    is_platform: bool = False
    created_at: datetime = Field(default_factory=utcnow)
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


class Run(SQLModel, table=True):
    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_tenant_id_id", "tenant_id", "id"),
        Index("ix_runs_tenant_thread", "tenant_id", "thread_id"),
        Index("ux_runs_schedule_tick", "schedule_id", "scheduled_for", unique=True),
    )

    id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = Field(foreign_key="tenants.id", max_length=40)
    status: RunStatus = Field(sa_column=Column(StatusType(), index=True, nullable=False))
    agent_name: str = Field(max_length=200)
    agent_id: str = Field(max_length=200)
    agent_revision: int = 1
    agent_tag: str | None = Field(default=None, max_length=100)
    thread_id: str | None = Field(default=None, max_length=200)
    input: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    message: str | None = Field(default=None, sa_column=Column(Text))
    model_id: str | None = Field(default=None, max_length=200)
    model_params: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    end_user_id: str | None = Field(default=None, max_length=200)
    run_metadata: dict[str, Any] | None = Field(default=None, sa_column=Column("metadata", JSON))
    request_id: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    output: str | None = Field(default=None, sa_column=Column(Text))
    result: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    usage: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    error: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    attempts: int = 0
    # The request's own deadline in seconds (else the agent's, else the settings').
    timeout_s: float | None = None
    # The fencing token of the lease the run was last started under: only its holder may finish.
    lease_token: str | None = Field(default=None, max_length=40)
    cancel_requested_at: datetime | None = None
    # Approvals: the tool calls a paused (`requires_action`) run waits on, each with its decision
    # once made; seconds spent paused (not counted against the deadline); resumes after approval
    # or a hand-back (starts not counted as crash attempts).
    required_action: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    waited_s: float = 0.0
    resumes: int = 0
    # Schedules and webhooks (issue 12): the schedule and tick that made the run (unique
    # together: one run per tick), and where its lifecycle events are POSTed ({url, events}).
    schedule_id: str | None = Field(default=None, max_length=40)
    scheduled_for: datetime | None = None
    webhook: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    # The highest event seq a worker may have appended to the run's Redis log: raised in blocks
    # before the log reaches it. If Redis loses the log, the next attempt continues above it,
    # so a client holding any seq never sees another attempt's events under seqs it knows.
    seq_reserved: int = 0


class RunIdentity(Protocol):
    """What a worker needs of a run before it starts it (its thread, its slot): a `Run`, or
    the `RunRef` its task message carries."""

    @property
    def id(self) -> str: ...
    @property
    def tenant_id(self) -> str: ...
    @property
    def thread_id(self) -> str | None: ...
    @property
    def created_at(self) -> datetime: ...


@dataclass(frozen=True)
class RunRef:
    """A new run's identity, sent with its task by the API that created it, so that the worker
    takes its thread and its slot without reading the run first. Its status is not in it: the
    worker's start (a conditional UPDATE) refuses a run that finished or paused meanwhile."""

    id: str
    tenant_id: str
    thread_id: str | None
    created_at: datetime

    @classmethod
    def of(cls, run: RunIdentity) -> RunRef:
        return cls(run.id, run.tenant_id, run.thread_id, as_utc(run.created_at))

    def to_message(self) -> dict[str, Any]:
        """The task's `about` keyword (JSON)."""
        created_at = self.created_at.isoformat()  # exact, unlike a float of seconds
        return {"tenant_id": self.tenant_id, "thread_id": self.thread_id, "created_at": created_at}

    @classmethod
    def of_message(cls, run_id: str, about: Any) -> RunRef | None:
        """The ref a task's `about` holds; None when there is none or it is not one (a task sent
        without it, by the dispatcher, the sweeper or an older API): the worker reads the run."""
        if not isinstance(about, dict):
            return None
        tenant_id, thread_id = about.get("tenant_id"), about.get("thread_id")
        if not isinstance(tenant_id, str) or not (thread_id is None or isinstance(thread_id, str)):
            return None
        try:
            created_at = as_utc(datetime.fromisoformat(about["created_at"]))
        except (KeyError, TypeError, ValueError):
            return None
        return cls(run_id, tenant_id, thread_id, created_at)


# Reading and writing runs with Core statements on the hot path (no ORM unit of work): the
# table's columns, and a `Run` built from the values a statement returned for them.
def table_of(model: type[SQLModel]) -> Table:
    """The Core table of a model: statements on it skip the ORM (its bulk-insert machinery,
    attribute-name mapping) and take values by column name."""
    table: Table = model.__table__  # type: ignore[attr-defined]  # SQLModel sets __table__
    return table


RUN_TABLE = table_of(Run)
RUN_COLUMNS = tuple(RUN_TABLE.c)
_RUN_FIELDS = tuple(inspect(Run).get_property_by_column(c).key for c in RUN_COLUMNS)


def run_of(values: Sequence[Any]) -> Run:
    """A `Run` (detached) from the values of `RUN_COLUMNS`, in that order."""
    return loaded(Run, dict(zip(_RUN_FIELDS, values, strict=True)))


M = TypeVar("M", bound=SQLModel)


def loaded(model: type[M], values: Mapping[str, Any]) -> M:
    """A table model (transient) holding `values` (every field, as the database returned them),
    built the way the ORM builds a row it loads: the instance, then its attribute dict. Its
    `__init__` (defaults, and SQLAlchemy's instrumentation events for each attribute) costs
    ~20 times as much, and a run is read several times on its hot path."""
    mapper = inspect(model)
    if not mapper.configured:  # its first instance: `__init__` would configure it too
        configure_mappers()
    instance: M = mapper.class_manager.new_instance()
    instance.__dict__.update(values)
    object.__setattr__(instance, "__pydantic_fields_set__", set(values))
    return instance


def new_row(model: type[M], **values: Any) -> M:
    """A new row of `model` (transient, to be inserted): `values`, and every other field at its
    default. What `model(**values)` makes, without its per-attribute instrumentation events
    (~70 µs for a run, against ~15): the API builds one for each run it creates. No validation
    either, as for any table model: the values come from validated requests."""
    for name, default in _defaults(model):
        if name not in values:
            values[name] = default()
    return loaded(model, values)


@cache
def _defaults(model: type[SQLModel]) -> tuple[tuple[str, Callable[[], Any]], ...]:
    """Each field of `model` and what makes its default: its factory, or pydantic's copy of its
    value. (`FieldInfo.get_default` reads a factory's signature on every call.)"""
    makers: list[tuple[str, Callable[[], Any]]] = []
    for name, field in model.model_fields.items():
        factory = field.default_factory
        if factory is None:
            makers.append((name, field.get_default))
        else:
            makers.append((name, factory))  # type: ignore[arg-type]  # takes no validated data
    return tuple(makers)


def run_row(run: Run) -> dict[str, Any]:
    """`run`'s values by column name, for a Core INSERT."""
    pairs = zip(RUN_COLUMNS, _RUN_FIELDS, strict=True)
    return {column.name: getattr(run, name) for column, name in pairs}


class RunCheckpoint(SQLModel, table=True):
    """A running run's last checkpoint after a tool result, the same JSON the worker keeps in
    Redis: a run resumed after Redis lost its data goes on from here and calls no finished tool
    again. Written under the run's lease (one statement per tool result), read only on resume."""

    __tablename__ = "run_checkpoints"

    run_id: str = Field(primary_key=True, foreign_key="runs.id", max_length=40)
    next_seq: int
    data: str = Field(sa_column=Column(Text, nullable=False))


class Thread(SQLModel, table=True):
    """A conversation of one tenant: the runs created with its `thread_id` share its history."""

    __tablename__ = "threads"

    tenant_id: str = Field(primary_key=True, foreign_key="tenants.id", max_length=40)
    id: str = Field(primary_key=True, max_length=200)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class ThreadMessage(SQLModel, table=True):
    """One chat message of a thread's history (user, assistant, tool), in order of `seq`."""

    __tablename__ = "thread_messages"

    tenant_id: str = Field(primary_key=True, max_length=40)
    thread_id: str = Field(primary_key=True, max_length=200)
    seq: int = Field(primary_key=True)
    run_id: str = Field(max_length=40)
    role: str = Field(max_length=20)
    # The whole message as the model sees it (content, tool_calls, tool_call_id).
    message: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


class RunLog(SQLModel, table=True):
    """The archived event log of a finished run, replayed once the Redis stream is gone: one
    row per run, written in the transaction that ends it. `events` holds one line per event,
    `<seq> <event JSON>`, in seq order (the JSON has no raw newline: `encode` escapes them)."""

    __tablename__ = "run_logs"

    run_id: str = Field(primary_key=True, foreign_key="runs.id", max_length=40)
    events: str = Field(sa_column=Column(Text, nullable=False))

    @staticmethod
    def join(events: Iterable[tuple[int, str]]) -> str:
        """`events` (seq, JSON) as the `events` column holds them."""
        return "\n".join(f"{seq} {data}" for seq, data in sorted(events))

    @staticmethod
    def last(events: str) -> tuple[int, str]:
        """The seq and JSON of the last event in `events` (the column's text)."""
        number, _, data = events.rpartition("\n")[2].partition(" ")
        return int(number), data

    @staticmethod
    def after(events: str, seq: int) -> list[str]:
        """The JSON of the events after `seq` in `events` (the column's text), in order."""
        found = []
        for line in events.split("\n"):
            number, _, data = line.partition(" ")
            if int(number) > seq:
                found.append(data)
        return found


class AgentRevision(SQLModel, table=True):
    """One published definition of an agent; revisions of an agent count 1, 2, 3 … and never
    change once written."""

    __tablename__ = "agent_revisions"

    agent_id: str = Field(primary_key=True, max_length=200)
    revision: int = Field(primary_key=True)
    definition: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    digest: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow)


class AgentTag(SQLModel, table=True):
    """A tag (e.g. `production`) points at one revision of one agent."""

    __tablename__ = "agent_tags"

    tag: str = Field(primary_key=True, max_length=100)
    agent_id: str = Field(max_length=200)
    revision: int
    updated_at: datetime = Field(default_factory=utcnow)
