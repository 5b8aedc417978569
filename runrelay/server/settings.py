"""Process settings: one typed object, built at start-up from the environment and passed in.

Nothing else in runrelay reads the environment. `REDIS_URL` and `DATABASE_URL` are read without
prefix (the convention of Heroku-style platforms and docker-compose); everything else is
`RUNRELAY_*`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEMO_AGENTS_CONFIG = Path(__file__).parent.parent / "demo" / "agents.yaml"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RUNRELAY_", extra="ignore", populate_by_name=True)

    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", validation_alias=AliasChoices("REDIS_URL", "RUNRELAY_REDIS_URL")
    )
    database_url: str = Field(
        "sqlite:///runrelay.db",
        validation_alias=AliasChoices("DATABASE_URL", "RUNRELAY_DATABASE_URL"),
    )
    # PostgreSQL schema holding runrelay's tables (tests use one schema each).
    database_schema: str | None = None
    # Every Redis key runrelay writes starts with this, and so does the Celery queue.
    redis_prefix: str = "rr:"
    agents_config: Path = DEMO_AGENTS_CONFIG

    # Event log
    events_ttl_s: int = 7 * 24 * 3600
    events_ttl_after_done_s: int = 3600

    # Worker
    worker_concurrency: int = 100
    run_lease_ttl_s: float = 30.0
    run_timeout_s: float = 3600.0
    # A request's own `timeout_s` may not exceed this (422 above it).
    max_run_timeout_s: float = 4 * 3600.0
    # Longer than any run: the broker redelivers an unacked task only after this.
    broker_visibility_timeout_s: int = 6 * 3600
    # A run that needed more starts than this (each crash or hand-back is one) ends failed.
    max_run_attempts: int = 5
    # How often a worker looks for cancel requests of the runs it holds.
    cancel_poll_s: float = 0.25
    # After SIGTERM, in-flight runs go on this long, then are handed back to be resumed elsewhere.
    shutdown_grace_s: float = 20.0

    # Sweeper (runs in every worker process; one at a time holds its lock)
    sweeper_enabled: bool = True
    sweep_interval_s: float = 5.0
    # A run still `queued` this long after it was created is enqueued again (Redis lost it?).
    stuck_queued_s: float = 600.0
    # A run paused for approval (`requires_action`) this long is ended `expired` by the sweeper.
    approval_timeout_s: float = Field(default=7 * 24 * 3600.0, gt=0)

    # HTTP shim
    max_body_bytes: int = 10 * 1024 * 1024
    # A request body not received in full within this is answered 408 (slow or stalled client).
    body_read_timeout_s: float = Field(30.0, gt=0)
    sse_ping_s: float = 15.0
    sse_retry_ms: int = 2000
    wait_timeout_s: float = 600.0
    # How long an Idempotency-Key keeps leading to the run it created.
    idempotency_ttl_s: int = 24 * 3600
    hub_block_ms: int = 5000
    # Redis connections of one shim process for commands; SSE tails add one (the hub's).
    shim_redis_connections: int = 32

    # Quotas: the defaults of tenants without limits of their own (`runrelay tenants update`).
    # Concurrency must be finite: a run above it waits in its tenant's pending queue, not in the
    # shared Celery queue, which is what keeps one tenant's burst from holding back the others.
    default_max_concurrent_runs: int = Field(10, ge=1)
    default_max_queued_runs: int = Field(1000, ge=0)
    # None: no limit. The rate limit allows a burst of one minute's worth of requests.
    default_requests_per_minute: int | None = Field(600, ge=1)
    default_token_budget: int | None = Field(None, ge=1)
    default_budget_period: Literal["day", "month"] = "month"
    # Tokens reserved at admission for a run without `model_params.max_tokens` (nor the agent's).
    run_token_estimate: int = Field(4096, ge=1)
    # The concurrency slot a worker holds for a run: expires unless renewed (every third of it).
    quota_slot_ttl_s: float = Field(30.0, gt=0)
    # A run handed to Celery but not started by a worker within this is sent again.
    dispatch_timeout_s: float = Field(60.0, gt=0)
    # The dispatcher's periodic pass (slots freed by expiry, lost sends); releases wake it sooner.
    dispatch_interval_s: float = Field(1.0, gt=0)
    # Retry-After for `concurrency_limit` and `queue_full`, whose freeing time is unknowable.
    quota_retry_after_s: int = Field(5, ge=1)

    @field_validator("default_requests_per_minute", "default_token_budget", mode="before")
    @classmethod
    def _no_limit(cls, value: Any) -> Any:
        """An empty value (or `none`) in the environment means no limit."""
        if isinstance(value, str) and value.strip().lower() in ("", "none"):
            return None
        return value

    @field_validator("database_url")
    @classmethod
    def _sqlalchemy_driver(cls, url: str) -> str:
        """Accept the usual `postgres://` and `postgresql://` URLs and pick the psycopg 3 driver."""
        for plain in ("postgres://", "postgresql://"):
            if url.startswith(plain):
                return "postgresql+psycopg://" + url[len(plain) :]
        return url

    @model_validator(mode="after")
    def _visibility_timeout_outlasts_runs(self) -> Settings:
        """The broker redelivers an unacked task after its visibility timeout; a run still going
        then would get a second task. Harmless (the lease refuses it) but a sign of bad config."""
        longest = max(self.run_timeout_s, self.max_run_timeout_s)
        if self.broker_visibility_timeout_s <= longest:
            raise ValueError(
                f"RUNRELAY_BROKER_VISIBILITY_TIMEOUT_S ({self.broker_visibility_timeout_s}) must "
                f"be longer than any run (RUNRELAY_RUN_TIMEOUT_S / RUNRELAY_MAX_RUN_TIMEOUT_S: "
                f"{longest:g})"
            )
        return self

    @property
    def broker_url(self) -> str:
        return self.redis_url

    @property
    def task_queue(self) -> str:
        return "runrelay.runs"

    def celery_config(self) -> dict[str, Any]:
        """Celery settings the worker and the shim (which only sends tasks) must agree on."""
        return {
            "broker_url": self.broker_url,
            # kombu's Redis transport with a guard that keeps a worker alive when Redis drops
            # (see runrelay/server/broker.py).
            "broker_transport": "runrelay.server.broker:Transport",
            "broker_transport_options": {
                # Every broker key lives under our prefix, so several deployments (or test
                # sessions) can share one Redis without seeing each other's tasks.
                "global_keyprefix": self.redis_prefix,
                "visibility_timeout": self.broker_visibility_timeout_s,
            },
            "broker_connection_retry_on_startup": True,
            "task_default_queue": self.task_queue,
            "task_acks_late": True,
            "task_reject_on_worker_lost": True,
            "task_ignore_result": True,
            "worker_prefetch_multiplier": 1,
            "worker_hijack_root_logger": False,
            "worker_send_task_events": True,
            "task_send_sent_event": True,
        }
