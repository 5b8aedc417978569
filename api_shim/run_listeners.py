"""The shim's run listeners (schedules, webhooks): called where the shim itself ends a run.

TEMPORARY (issue 12): until the lifecycle of issue 10 holds the listener list and calls it in
the transaction of every status change; see `runrelay.server.webhooks.transitioned`.
"""

from __future__ import annotations

from typing import Any

from api_shim.state import ShimState
from runrelay.server import webhooks
from runrelay.server.schedules import ScheduleListener
from runrelay.types import RunStatus


def listeners(state: ShimState) -> list[Any]:
    engine = state.store.engine
    return [
        webhooks.WebhookListener(engine, state.sender.send_delivery),
        ScheduleListener(engine),
    ]


async def transitioned(state: ShimState, run_id: str, previous: RunStatus) -> None:
    await webhooks.transitioned(state.store.engine, run_id, previous, listeners(state))
