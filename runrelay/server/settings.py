"""Process settings: one typed object, built at start-up from the environment and passed in.

Nothing else in runrelay reads the environment. `REDIS_URL` and `DATABASE_URL` are read without
prefix (the convention of Heroku-style platforms and docker-compose); everything else is
`RUNRELAY_*`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

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
    # API and worker processes: what survives a full garbage collection is frozen, so later
    # ones skip the open streams and runs in flight (no pause that grows with them); once in
    # this long, one walks everything, to free what died in a reference cycle while frozen.
    # 0: CPython's own policy after start-up (runrelay/server/gc_tuning.py).
    gc_full_collection_s: float = Field(3600.0, ge=0)

    # Event log
    events_ttl_s: int = 7 * 24 * 3600
    events_ttl_after_done_s: int = 3600

    # Worker
    worker_concurrency: int = 100
    # Redis connections one worker process pools for its runs' commands (appends, checkpoints);
    # its renewals and cancel watch use one more of their own, the Celery broker a few.
    worker_redis_connections: int = Field(100, ge=2)
    # PostgreSQL connections each worker and API process keeps on its event loop for the hot
    # statements of runs (create, start, history, checkpoint, end, reads); the others use the
    # engine's pool.
    loop_database_connections: int = Field(8, ge=1)
    # Those statements committed in groups, one group at a time (loop_database.py); off: each
    # on its own, up to `loop_database_connections` at once.
    group_commit: bool = True
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
    # After SIGTERM, the worker exits within this: in-flight runs go on until they must be handed
    # back (to be resumed elsewhere) for that (worker/app.py `hand_back_reserve_s`).
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
    # Request headers not received in full within this (from a request's first byte, or from
    # the connection's opening) are answered 408 and the connection closed (api_shim/serving.py).
    header_read_timeout_s: float = Field(10.0, gt=0)
    sse_ping_s: float = 15.0
    # FastAPI's OpenTelemetry spans and metrics per request, for a process with an OTel SDK
    # configured. Off by default: even with no SDK, FastAPI asks three OTel providers on every
    # request (~6% of the shim's CPU under load).
    otel_telemetry: bool = False
    sse_retry_ms: int = 2000
    wait_timeout_s: float = 600.0
    # How long an Idempotency-Key keeps leading to the run it created.
    idempotency_ttl_s: int = 24 * 3600
    hub_block_ms: int = 5000
    # After a read that brought events, the SSE hub waits this long before its next read, so
    # that what a run writes meanwhile reaches its clients in one read and one write each,
    # not one per event: fewer Redis round trips and socket writes, at up to this much delay.
    hub_batch_ms: float = Field(5.0, ge=0, le=1000)
    # Redis connections of one shim process for commands (a request waits for a free one).
    # The automatic pipeline keeps one of them between its batches (one batch is out at a
    # time); the others serve transactions and blocking reads for a round trip.
    # The hub, the dispatcher and the batch feeder add one each and Celery's producer two: 8
    # in all, whatever the number of SSE clients.
    shim_redis_connections: int = Field(3, ge=1)

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

    # Batches (issue 13): `POST /v1/batches` takes up to this many lines and bytes (JSONL is
    # streamed to the database; a `{"requests": [...]}` JSON body is capped by max_body_bytes).
    batch_max_lines: int = Field(100_000, ge=1)
    batch_max_bytes: int = Field(256 * 1024 * 1024, ge=1)
    # Slots of each tenant's concurrency cap that its batches leave free for its interactive
    # runs (a batch still gets one slot when the cap is that small).
    batch_headroom_slots: int = Field(1, ge=0)
    # The feeder's pass: creates runs from pending lines, finalizes and expires batches.
    batch_feed_interval_s: float = Field(0.2, gt=0)
    # How often `GET /v1/batches/{id}/events` looks at the batch for progress.
    batch_progress_poll_s: float = Field(0.5, gt=0)
    # Browsers (issue 14): CORS and the read-only stream tokens of `api_shim/stream_tokens.py`.
    # Origins allowed to call the API from a page (comma-separated, or `*`); none by default.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # HMAC key of stream tokens. Unset: one random key kept in Redis, shared by every shim.
    stream_token_secret: SecretStr | None = None
    stream_token_ttl_s: int = Field(600, ge=10, le=24 * 3600)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip().rstrip("/") for part in value.split(",") if part.strip()]
        return value

    # Schedules (issue 12): `runrelay beat` sends the firing tick, workers fire what is due.
    # How often the beat asks the workers to fire due schedules (the firing resolution).
    schedule_tick_s: float = Field(1.0, gt=0)
    # A tick fired later than this after its time was missed (downtime): `catch_up` decides.
    schedule_misfire_grace_s: float = Field(60.0, gt=0)
    # Allow a sixth, leading seconds field in cron expressions (tests and benchmarks).
    schedule_allow_seconds: bool = False
    # Due schedules one firing pass claims at most (the next tick takes the rest).
    schedule_fire_batch: int = Field(1000, ge=1)
    # The beat's Redis lock (celery-redbeat): a second beat takes over this long after the
    # first stopped renewing it.
    beat_lock_timeout_s: int = Field(30, ge=2)

    # Webhooks (issue 12): Standard Webhooks, delivered by Celery tasks on the control queue.
    # Seconds to wait before each retry (the spec's schedule: 5 s, 5 min, 30 min, 2 h, 5 h,
    # 10 h, 10 h); its length is the number of retries. Each wait is jittered by +-20 %.
    webhook_retry_delays_s: list[float] = Field(
        default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]
    )
    webhook_timeout_s: float = Field(10.0, gt=0)
    # A receiver's answer is read up to this many bytes (kept in the delivery log).
    webhook_max_response_bytes: int = Field(4096, ge=0)
    # Private, loopback and link-local targets are refused unless this is set (dev, tests).
    webhook_allow_private_targets: bool = False
    # How often the beat looks for deliveries whose task was lost (a worker died holding it).
    webhook_sweep_interval_s: float = Field(15.0, gt=0)
    # A delivery due for longer than this without being attempted is sent again by the sweep.
    webhook_lost_after_s: float = Field(30.0, gt=0)
    # After a rotation the previous secret signs too (a second signature) for this long.
    webhook_secret_rotation_grace_s: int = Field(24 * 3600, ge=0)

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

    @property
    def control_queue(self) -> str:
        """Schedule firing and webhook deliveries: short tasks, apart from the runs."""
        return "runrelay.control"

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
            # Task events (received, started, succeeded: a broker publish each) cost a run
            # several Redis calls; Flower switches them on in the workers while it runs (its
            # `enable_events`), so they are off otherwise. No `task-sent` events from the shim.
            "worker_send_task_events": False,
            "task_send_sent_event": False,
        }
