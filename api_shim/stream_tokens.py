"""Browsers following runs: `POST /v1/runs/{id}/stream_token`, the `stream_url` of a new run,
and who may read a run's events (an API key, or a stream token for that run as `?token=`).

The tokens themselves are `runrelay.server.stream_tokens`; this module maps their failures to
HTTP: expired or forged → 401, a token for another run → 404, a revoked issuing key → 401.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from api_shim.auth import Caller, Credentials, acting_tenant, principal
from api_shim.errors import HTTPProblem
from api_shim.state import state_of
from runrelay.server.store import Principal
from runrelay.server.stream_tokens import StreamTokenError, TokenExpired, TokenInvalid
from runrelay.server.tables import Run

_RUN_ID = re.compile(r"[A-Za-z0-9_\-]{1,64}")


class StreamToken(BaseModel):
    """A read-only token for one run's events; `stream_url` needs no API key."""

    object: str = "stream_token"
    run_id: str
    token: str
    stream_url: str
    expires_at: datetime


async def stream_token_for(request: Request, run: Run, caller: Principal) -> StreamToken:
    tokens = state_of(request).stream_tokens
    try:
        token, claims = await tokens.issue(
            run_id=run.id, tenant_id=run.tenant_id, key_id=caller.key_id
        )
    except StreamTokenError as exc:
        raise HTTPProblem(503, "not_ready", f"{exc}") from exc
    return StreamToken(
        run_id=run.id,
        token=token,
        stream_url=f"/v1/runs/{run.id}/events?token={token}",
        expires_at=claims.expires_at,
    )


async def _tenant_run(request: Request, tenant_id: str, run_id: str) -> Run:
    if not _RUN_ID.fullmatch(run_id):  # a NUL or other junk would reach the database
        raise HTTPProblem(404, "run_not_found", f"no run {run_id!r}", param="run_id")
    store = state_of(request).store
    run = await store.get_run_async(run_id, tenant_id=tenant_id)
    if run is None:
        raise HTTPProblem(404, "run_not_found", f"no run {run_id!r}", param="run_id")
    return run


async def _token_run(request: Request, token: str, run_id: str) -> ReadableRun:
    state = state_of(request)
    try:
        claims = await state.stream_tokens.verify(token)
    except TokenExpired as exc:
        raise HTTPProblem(
            401,
            "stream_token_expired",
            f"{exc}; get a new one with POST /v1/runs/{exc.claims.run}/stream_token",
            param="token",
        ) from exc
    except TokenInvalid as exc:
        raise HTTPProblem(401, "invalid_stream_token", str(exc), param="token") from exc
    except StreamTokenError as exc:
        raise HTTPProblem(503, "not_ready", str(exc)) from exc
    if claims.run != run_id:
        raise HTTPProblem(
            404,
            "run_not_found",
            f"this stream token is for run {claims.run!r}, not {run_id!r}",
            param="token",
        )
    if not await state.api_keys.active(claims.key):
        raise HTTPProblem(
            401,
            "stream_token_revoked",
            "the API key that issued this stream token was revoked",
            param="token",
        )
    return ReadableRun(await _tenant_run(request, claims.ten, run_id), claims.key)


@dataclass(frozen=True)
class ReadableRun:
    """A run a request may read, and the API key it reads by (its own, or the one that issued
    its stream token): the stream ends once that key is revoked. `recent`: `run` is as this
    process created it moments ago (`RecentRuns`), not read now."""

    run: Run
    key_id: str
    recent: bool = False


async def readable_run(
    request: Request,
    run_id: str,
    token: Annotated[
        str | None,
        Query(
            max_length=1000,
            description="a stream token (POST /v1/runs/{id}/stream_token) instead of the API key",
        ),
    ] = None,
    _declared: Credentials = None,
) -> ReadableRun:
    """The run whose events this request may read: by API key, or by a stream token for it."""
    if token is not None:
        return await _token_run(request, token, run_id)
    caller = await principal(request)
    tenant_id = await acting_tenant(request, caller, None)
    recent = state_of(request).recent_runs.get(run_id, tenant_id)  # created here just now
    if recent is not None:
        return ReadableRun(recent, caller.key_id, recent=True)
    return ReadableRun(await _tenant_run(request, tenant_id, run_id), caller.key_id)


router = APIRouter(prefix="/v1/runs", tags=["runs"])
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or invalid API key"},
    404: {"description": "no such run for this tenant"},
}


@router.post(
    "/{run_id}/stream_token",
    response_model=StreamToken,
    responses=_ERRORS,
    summary="A short-lived, read-only token for one run's events (for browsers)",
)
async def stream_token(request: Request, caller: Caller, run_id: str) -> StreamToken:
    """Give `stream_url` to `EventSource`: it reads only this run's events, until `expires_at`
    or until the key that asked for it is revoked."""
    tenant = await acting_tenant(request, caller, None)
    run = await _tenant_run(request, tenant, run_id)
    return await stream_token_for(request, run, caller)
