"""Cancelling a run from the shim: one that no worker holds (queued, or paused for approval) is
ended here; a running one is flagged, and its worker stops it within about a second."""

from __future__ import annotations

import asyncio
from typing import Any

from api_shim import run_listeners
from api_shim.state import ShimState
from runrelay.agent.events import CANCELLED_ERROR, encode, is_terminal, make_event
from runrelay.server.tables import Run
from runrelay.types import RunStatus

# How long a cancel request waits for a running run to stop (it does within a second).
CANCEL_WAIT_S = 3.0


async def _cancel_unstarted(state: ShimState, run: Run) -> bool:
    """End a run that no worker holds — queued, or paused for approval — here: archive its log
    with `done`, only if it is still in that status (a conditional UPDATE); False when a worker
    started it (or a decision resumed it) meanwhile."""
    history = await state.events.read(run.id)
    seq = (history[-1].seq if history else 0) + 1
    usage = _paused_usage(run)
    done = make_event(
        run.id,
        seq,
        "done",
        {
            "status": "cancelled",
            "output": "",
            "usage": usage,
            "error": CANCELLED_ERROR,
            "duration_ms": 0,
        },
    )
    archive = [(e.seq, e.type, e.data) for e in history] + [(seq, "done", encode(done))]
    finished = await asyncio.to_thread(
        state.store.finish_run,
        run.id,
        status="cancelled",
        output=None,
        result=None,
        usage=usage,
        error=CANCELLED_ERROR,
        events=archive,
        only_from=run.status,
    )
    if finished:
        # quotas: the run leaves its tenant's queue (or gives back the slot dispatch gave it)
        # and its token reservation is settled at what it used before pausing.
        used = int((usage or {}).get("total_tokens", 0))
        await state.quotas.backend.abandon(run.tenant_id, run.id, used_tokens=used)
        await state.threads.release(run)  # threads: the next run of its thread may start
        await state.events.append(
            run.id, seq, "done", encode(done), ttl_s=state.settings.events_ttl_after_done_s
        )
        # TEMPORARY (issue 12): webhooks and schedule bookkeeping, until the lifecycle does it.
        await run_listeners.transitioned(state, run.id, RunStatus(run.status))
    return finished


def _paused_usage(run: Run) -> dict[str, Any] | None:
    if run.status != "requires_action" or not run.required_action:
        return None
    usage: dict[str, Any] = run.required_action["checkpoint"]["state"]["usage"]
    return usage


async def request_cancel(state: ShimState, run: Run) -> Run | None:
    """Ask `run` to stop: a queued or paused one ends here, a running one is flagged for its
    worker. None when it already finished. (The cancel endpoint, and `interrupt` on a thread.)"""
    requested = await asyncio.to_thread(state.store.request_cancel, run.id)
    if requested is None:
        return None
    unstarted = requested.status in ("queued", "requires_action")
    if not (unstarted and await _cancel_unstarted(state, requested)):
        # Running (or a worker took it just now): its worker sees the flag and stops it.
        flag = state.events.keys.cancel(run.id)
        await state.redis.set(flag, "1", ex=state.settings.events_ttl_s)
    return requested


async def wait_finished(state: ShimState, run_id: str, timeout_s: float) -> Run:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        run = await asyncio.to_thread(state.store.get_run, run_id)
        assert run is not None  # runs are never deleted
        if is_terminal(run.status) or asyncio.get_running_loop().time() > deadline:
            return run
        await asyncio.sleep(0.1)
