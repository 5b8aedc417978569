"""The clock and the control tasks: `runrelay beat` (Celery beat with celery-redbeat) and the
tasks it and the run lifecycle send to the workers' control queue.

`runrelay beat` sends two periodic tasks: `fire_due` every `schedule_tick_s` (fire the schedules
whose tick came) and `sweep` every `webhook_sweep_interval_s` (deliveries whose task was lost).
celery-redbeat keeps its schedule in Redis and holds a lock there: a second beat waits on it
and takes over when the first stops renewing it. The lock is only about not sending ticks
twice; firing exactly once per (schedule, tick) is the database's claim
(`runrelay.server.schedules`), so a duplicate `fire_due` fires nothing twice.

The tasks are thin: they hand a coroutine to the worker's asyncio runtime. Their resources (a
Redis pool, the database, an HTTP client, the run firer) are built on that loop at first use.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import httpx
from kombu.entity import Queue
from redis.asyncio import Redis

from runrelay.agent.config import Registry
from runrelay.server import schedules as schedule_store
from runrelay.server import webhook_send, webhooks
from runrelay.server.engine import make_engine
from runrelay.server.firing import Firer
from runrelay.server.keys import (
    DELIVER_WEBHOOK_TASK,
    FIRE_SCHEDULES_TASK,
    SWEEP_WEBHOOKS_TASK,
    RedisKeys,
)
from runrelay.server.quota import QuotaStore
from runrelay.server.settings import Settings
from runrelay.server.store import Store, new_id
from runrelay.server.tables import utcnow

if TYPE_CHECKING:
    from worker.app import WorkerApp

log = logging.getLogger(__name__)
# Fires made at once in one pass (each is a few database writes and one Lua call).
_FIRE_CONCURRENCY = 32
# A claimed tick whose run is not recorded this long after is fired again (same run id).
_STALE_FIRE_S = 120.0


def beat_config(settings: Settings) -> dict[str, Any]:
    """Celery settings of `runrelay beat`: the periodic tasks and celery-redbeat's."""
    keys = RedisKeys(settings.redis_prefix)
    tick_s = settings.schedule_tick_s
    return {
        "beat_schedule": {
            "runrelay-fire-due-schedules": {
                "task": FIRE_SCHEDULES_TASK,
                "schedule": timedelta(seconds=tick_s),
                # A tick nobody took in time is worthless: the next one fires what is due.
                "options": {"queue": settings.control_queue, "expires": max(10 * tick_s, 5.0)},
            },
            "runrelay-sweep-webhooks": {
                "task": SWEEP_WEBHOOKS_TASK,
                "schedule": timedelta(seconds=settings.webhook_sweep_interval_s),
                "options": {
                    "queue": settings.control_queue,
                    "expires": settings.webhook_sweep_interval_s,
                },
            },
        },
        "beat_scheduler": "redbeat.RedBeatScheduler",
        "beat_max_loop_interval": min(tick_s, settings.beat_lock_timeout_s / 3),
        "redbeat_redis_url": settings.redis_url,
        "redbeat_redis_options": {},
        "redbeat_key_prefix": keys.beat_prefix(),
        "redbeat_lock_timeout": settings.beat_lock_timeout_s,
    }


class Control:
    """What the control tasks of one worker process use; built on the runtime's loop."""

    def __init__(self, settings: Settings, app: WorkerApp) -> None:
        self.settings = settings
        self.app = app
        keys = RedisKeys(settings.redis_prefix)
        self.redis = Redis.from_url(settings.redis_url, max_connections=50)
        self.store = Store(make_engine(settings))
        self.http = httpx.AsyncClient(limits=httpx.Limits(max_connections=100))
        self.firer = Firer(
            settings=settings,
            store=self.store,
            lifecycle=app.runtime.lifecycle,
            quotas=QuotaStore(self.redis, keys, dispatch_timeout_s=settings.dispatch_timeout_s),
            registry=Registry.from_file(settings.agents_config, os.environ),
            send=app.send_run,
        )
        self.schedules = schedule_store.Schedules(self.store.engine)

    async def fire_due(self) -> int:
        """Fire every schedule whose tick came (and ticks left half-fired); returns how many."""
        now = utcnow()
        stale = await asyncio.to_thread(
            self.schedules.stale_fires, now - timedelta(seconds=_STALE_FIRE_S)
        )
        claimed = await asyncio.to_thread(
            self.schedules.claim_due,
            now,
            limit=self.settings.schedule_fire_batch,
            misfire_grace_s=self.settings.schedule_misfire_grace_s,
            new_run_id=new_id,
        )
        gate = asyncio.Semaphore(_FIRE_CONCURRENCY)

        async def fire(one: schedule_store.Fire) -> None:
            async with gate:
                await self.firer.fire(one)

        await asyncio.gather(*(fire(one) for one in [*stale, *claimed]))
        return len(claimed)

    async def deliver(self, delivery_id: str) -> str | None:
        """One attempt at a delivery, if it is due; schedules the next one. Returns the
        delivery's status after it (None: not due, or not pending)."""
        settings = self.settings
        engine = self.store.engine
        hold_s = settings.webhook_timeout_s + 5
        delivery = await asyncio.to_thread(
            webhooks.take_attempt, engine, delivery_id, hold_s=hold_s
        )
        if delivery is None:
            return None
        secrets = await asyncio.to_thread(
            webhooks.signing_secrets,
            engine,
            delivery.tenant_id,
            grace_s=settings.webhook_secret_rotation_grace_s,
        )
        now = utcnow()
        headers = {
            "webhook-id": delivery.id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": webhooks.sign(secrets, delivery.id, now, delivery.body),
        }
        try:
            result = await webhook_send.attempt(
                self.http, settings, url=delivery.url, body=delivery.body, headers=headers
            )
            following = webhook_send.decide(result, len(delivery.attempts) + 1, settings)
        except webhook_send.TargetRefused as exc:
            result = webhook_send.AttemptResult(None, f"refused: {exc}", 0, None)
            following = webhook_send.Next("failed")
        await asyncio.to_thread(
            webhooks.record_attempt,
            engine,
            delivery.id,
            result.as_log(now),
            status=following.status,
            next_attempt_at=following.at,
        )
        if following.at is not None:
            countdown = max(0.0, (following.at - utcnow()).total_seconds())
            self.send_delivery(delivery.id, countdown=countdown)
        return following.status

    async def sweep(self) -> list[str]:
        """Send the deliveries whose task was lost again; returns their ids."""
        due_before = utcnow() - timedelta(seconds=self.settings.webhook_lost_after_s)
        lost = await asyncio.to_thread(webhooks.lost, self.store.engine, due_before=due_before)
        for delivery_id in lost:
            self.send_delivery(delivery_id)
        if lost:
            log.warning("webhook deliveries sent again (their task was lost): %s", lost)
        return lost

    def send_delivery(self, delivery_id: str, *, countdown: float = 0.0) -> None:
        self.app.send_task(
            DELIVER_WEBHOOK_TASK,
            args=[delivery_id],
            queue=self.settings.control_queue,
            countdown=countdown or None,
        )

    async def close(self) -> None:
        await self.http.aclose()
        await self.redis.aclose()
        self.store.engine.dispose()


def register(app: WorkerApp) -> None:
    """The control queue and its tasks, on the worker's Celery app."""
    settings = app.settings
    queues = [settings.task_queue, settings.control_queue]
    app.conf.task_queues = [Queue(name) for name in queues]  # type: ignore[no-untyped-call]  # kombu is untyped
    lock = threading.Lock()
    holder: list[Control] = []

    def control() -> Control:
        with lock:
            if not holder:
                holder.append(Control(settings, app))
                app.runtime.close_with(holder[0].close)  # its clients live on the runtime's loop
            return holder[0]

    @app.task(name=FIRE_SCHEDULES_TASK, ignore_result=True)  # type: ignore[untyped-decorator]
    def fire_due() -> int:
        return app.runtime.call(control().fire_due())

    @app.task(name=DELIVER_WEBHOOK_TASK, ignore_result=True)  # type: ignore[untyped-decorator]
    def deliver(delivery_id: str) -> str | None:
        return app.runtime.call(control().deliver(delivery_id))

    @app.task(name=SWEEP_WEBHOOKS_TASK, ignore_result=True)  # type: ignore[untyped-decorator]
    def sweep() -> list[str]:
        return app.runtime.call(control().sweep())


def run_beat(settings: Settings, *, loglevel: str = "INFO") -> None:
    """`runrelay beat`: blocks; a second one started elsewhere stands by on the lock."""
    from worker.app import create_app

    app = create_app(settings)
    app.conf.update(beat_config(settings))
    app.start(argv=["beat", f"--loglevel={loglevel}"])
