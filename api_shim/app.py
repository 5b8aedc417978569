"""The HTTP shim: a FastAPI app that admits runs, enqueues them by task name and replays their
event logs as Server-Sent Events. Build it with `create_app(settings)`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp

from api_shim import approvals, errors, meta, runs, shortcuts, threads, usage
from api_shim.middleware import BodyLimitMiddleware, RequestIdMiddleware
from api_shim.state import ShimState
from runrelay.server.lifecycle import RunListener
from runrelay.server.settings import Settings


def create_app(settings: Settings, listeners: Sequence[RunListener] = ()) -> ASGIApp:
    """The shim; `listeners` attach to the run lifecycle (`runrelay.server.lifecycle`)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = ShimState.build(settings, listeners)
        state.hub.start()
        state.dispatcher.start()
        app.state.runrelay = state
        try:
            yield
        finally:
            await state.close()

    app = FastAPI(
        title="runrelay",
        version="0.1.0",
        summary="Run LLM agents at scale: background runs, resumable event streams.",
        lifespan=lifespan,
    )
    errors.install(app)
    app.include_router(runs.router)
    app.include_router(approvals.router)
    app.include_router(meta.router)
    app.include_router(shortcuts.router)
    app.include_router(threads.router)
    app.include_router(usage.router)
    return RequestIdMiddleware(
        BodyLimitMiddleware(app, settings.max_body_bytes, settings.body_read_timeout_s)
    )
