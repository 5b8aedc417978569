"""What every runrelay process attaches to the run lifecycle's one extension point
(`runrelay.server.lifecycle.RunListener`): a batch line's outcome and its batch's counters,
a schedule's last status, and the run's webhook deliveries. Each records in the transaction of
the run's transition, so nothing it owes is lost with a process that dies after it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from runrelay.server.batches import BatchListener
from runrelay.server.keys import RedisKeys
from runrelay.server.run_table import RunListener
from runrelay.server.schedules import ScheduleListener
from runrelay.server.webhooks import WebhookListener


def standard_listeners(
    redis: Any, keys: RedisKeys, send_delivery: Callable[[str], None]
) -> tuple[RunListener, ...]:
    """`redis` (asyncio) wakes the batch feeder; `send_delivery` enqueues a webhook delivery."""
    return (BatchListener(redis, keys), ScheduleListener(), WebhookListener(send_delivery))
