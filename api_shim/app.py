"""The HTTP shim: a FastAPI app that admits runs, enqueues them by task name and replays their
event logs as Server-Sent Events. Build it with `create_app(settings)`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from fastapi.telemetry import TelemetryConfig
from fastapi_offline import FastAPIOffline
from redis.asyncio import Redis
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp

from api_shim import (
    approvals,
    batches,
    errors,
    meta,
    runs,
    schedules,
    shortcuts,
    stream_tokens,
    threads,
    usage,
    webhooks,
)
from api_shim.batch_feeder import BatchFeeder
from api_shim.middleware import BodyLimitMiddleware, JsonBodyMiddleware, RequestIdMiddleware
from api_shim.state import ShimState
from runrelay.server.gc_tuning import tune_gc
from runrelay.server.run_table import RunListener
from runrelay.server.settings import Settings

_NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


def create_app(settings: Settings, listeners: Sequence[RunListener] = ()) -> ASGIApp:
    """The shim; `listeners` attach to the run lifecycle (`runrelay.server.lifecycle`)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = ShimState.build(settings, listeners)
        await state.open_database()
        state.hub.start()
        state.dispatcher.start()
        feeder = BatchFeeder(state, _blocking_redis(settings))
        feeder.start()
        app.state.runrelay = state
        tune_gc(settings.gc_full_collection_s)
        try:
            yield
        finally:
            await feeder.stop()
            await feeder.wakeup_redis.aclose()
            await state.close()

    # /docs and /redoc with Swagger UI and ReDoc served from the package: they work offline.
    app = FastAPIOffline(
        title="runrelay",
        version="0.1.0",
        summary="Run LLM agents at scale: background runs, resumable event streams.",
        lifespan=lifespan,
        telemetry=None if settings.otel_telemetry else _NO_TELEMETRY,
    )
    errors.install(app)
    app.include_router(runs.router)
    app.include_router(approvals.router)
    app.include_router(meta.router)
    app.include_router(shortcuts.router)
    app.include_router(threads.router)
    app.include_router(usage.router)
    app.include_router(batches.router)
    app.include_router(stream_tokens.router)
    app.include_router(schedules.router)
    app.include_router(webhooks.router)
    app.mount("/console", StaticFiles(directory=CONSOLE_DIR, html=True), name="console")
    # A JSONL batch upload is streamed to the database by its route, which enforces its limit.
    streamed = {("/v1/batches", batches.JSONL_TYPES): settings.batch_max_bytes}
    json_bodies = JsonBodyMiddleware(app, {"/v1/batches": batches.JSONL_TYPES})
    body_limit = BodyLimitMiddleware(
        json_bodies, settings.max_body_bytes, streamed, settings.body_read_timeout_s
    )
    # With OpenTelemetry on, a stream's request lasts (its duration, the active requests) until
    # the stream ends: its body is not handed over from under FastAPI's telemetry layer.
    request_ids = RequestIdMiddleware(body_limit, detach=not settings.otel_telemetry)
    return _cors(settings, request_ids)


CONSOLE_DIR = Path(__file__).parent / "console"
# What a page on another origin may send and read: the key, JSON bodies, resume cursors and
# request ids in; request ids, locations, rate limits and resume cursors out.
_ALLOWED_HEADERS = [
    "Authorization",
    "Content-Type",
    "Idempotency-Key",
    "Last-Event-ID",
    "X-Request-ID",
    "X-Tenant-ID",
]
_EXPOSED_HEADERS = [
    "Content-Location",
    "Last-Event-ID",
    "Location",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "Retry-After",
    "X-Request-ID",
    "X-Run-ID",
]


def _cors(settings: Settings, app: ASGIApp) -> ASGIApp:
    """Outermost, so that every answer (a 413, a 500) carries the CORS headers a page needs
    to read it. No origins configured: no CORS headers at all (same-origin pages only)."""
    if not settings.cors_origins:
        return app
    return CORSMiddleware(
        app,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        allow_headers=_ALLOWED_HEADERS,
        expose_headers=_EXPOSED_HEADERS,
        max_age=600,
    )


def _blocking_redis(settings: Settings) -> Redis:
    """A connection of its own for the batch feeder's blocking pop, like the dispatcher's."""
    return Redis.from_url(
        settings.redis_url,
        max_connections=1,
        client_name=f"{settings.redis_prefix}shim",
        socket_timeout=settings.batch_feed_interval_s + 10,
    )
