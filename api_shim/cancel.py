"""Cancelling a run from the shim: the lifecycle ends a run no worker holds (queued, or paused
for approval) at once, and flags a running one, which its worker stops within about a second."""

from __future__ import annotations

import asyncio

from api_shim.state import ShimState
from runrelay.server.tables import Run

# How long a cancel request waits for a running run to stop (it does within a second).
CANCEL_WAIT_S = 3.0


async def request_cancel(state: ShimState, run: Run) -> Run | None:
    """Ask `run` to stop; None when it already finished. (The cancel endpoint, and
    `interrupt` on a thread.)"""
    return await state.lifecycle.request_cancel(run)


async def wait_finished(state: ShimState, run_id: str, timeout_s: float) -> Run:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        run = await state.store.get_run_async(run_id)
        assert run is not None  # runs are never deleted
        if run.status.is_terminal or asyncio.get_running_loop().time() > deadline:
            return run
        await asyncio.sleep(0.1)
