"""Idempotent run creation, per tenant: a create carrying an idempotency key (`Idempotency-Key`
header or `idempotency_key` field) makes at most one run.

The first request claims the key atomically (`SET NX` with a TTL) for the run id it is about to
create, with a fingerprint of its body. A repeat with the same body gets that run back (waiting
briefly if the first request has not written it yet); a repeat with another body is a 422.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time

from fastapi import Request

from api_shim.errors import HTTPProblem
from api_shim.state import ShimState
from runrelay.server import lua
from runrelay.server.keys import RedisKeys
from runrelay.server.tables import Run
from runrelay.types import RunCreate

_MAX_KEY_CHARS = 200
# How long a repeat waits for the first request to write its run before answering 409.
_EARLIER_RUN_WAIT_S = 10.0


def idempotency_key(request: Request, body: RunCreate) -> str | None:
    header = request.headers.get("idempotency-key")
    if header is not None and body.idempotency_key is not None and header != body.idempotency_key:
        raise HTTPProblem(
            422,
            "validation_error",
            "the Idempotency-Key header and the idempotency_key field differ; send one",
            param="idempotency_key",
        )
    key = header if header is not None else body.idempotency_key
    if key is not None and not 1 <= len(key) <= _MAX_KEY_CHARS:
        raise HTTPProblem(
            422,
            "validation_error",
            f"Idempotency-Key must be 1 to {_MAX_KEY_CHARS} characters (got {len(key)})",
            param="idempotency_key",
        )
    return key


def fingerprint(body: RunCreate) -> str:
    fields = body.model_dump(mode="json", exclude={"idempotency_key"})
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _redis_key(state: ShimState, tenant_id: str, key: str) -> str:
    return RedisKeys(state.settings.redis_prefix).idempotency(tenant_id, key)


async def claim(
    state: ShimState, tenant_id: str, key: str, body_fingerprint: str, run_id: str
) -> str | None:
    """None when this request now owns the key; else the id of the run the key already made."""
    redis_key = _redis_key(state, tenant_id, key)
    value = json.dumps({"fingerprint": body_fingerprint, "run_id": run_id})
    for _ in range(3):  # the key may expire between SET NX and GET
        if await state.redis.set(redis_key, value, nx=True, ex=state.settings.idempotency_ttl_s):
            return None
        existing = await state.redis.get(redis_key)
        if existing is None:
            continue
        earlier = json.loads(existing)
        if earlier["fingerprint"] != body_fingerprint:
            raise HTTPProblem(
                422,
                "idempotency_key_reused",
                "this Idempotency-Key was already used with a different request body; "
                "use a new key for a new run",
                param="idempotency_key",
            )
        return str(earlier["run_id"])
    raise HTTPProblem(
        409, "idempotency_key_in_progress", "retry shortly", headers={"Retry-After": "1"}
    )


async def release(state: ShimState, tenant_id: str, key: str, run_id: str) -> None:
    script = lua.script(state.redis, "release_idempotency")
    await script(keys=[_redis_key(state, tenant_id, key)], args=[run_id])


async def earlier_run(state: ShimState, run_id: str) -> Run:
    deadline = time.monotonic() + _EARLIER_RUN_WAIT_S
    while True:
        run = await state.store.get_run_async(run_id)
        if run is not None:
            return run
        if time.monotonic() > deadline:
            raise HTTPProblem(
                409,
                "idempotency_key_in_progress",
                "a request with this Idempotency-Key is still being processed; retry shortly",
                param="idempotency_key",
                headers={"Retry-After": "1"},
            )
        await asyncio.sleep(0.05)
