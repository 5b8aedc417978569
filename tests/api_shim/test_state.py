"""`RecentRuns`: what the shim remembers of the runs it just created, for their streams; the
`TaskSender`: a run sent from the loop is the message Celery sends."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from datetime import UTC, datetime

import redis
import redis.asyncio as aredis

from api_shim.state import RecentRuns
from runrelay.server.settings import Settings
from runrelay.server.tables import Run, RunRef
from runrelay.server.task_sender import TaskSender


def run(run_id: str, tenant_id: str = "ten_a") -> Run:
    return Run(id=run_id, tenant_id=tenant_id, status="queued", agent_name="a", agent_id="a")


def test_a_recent_run_is_its_tenants_only_and_only_for_a_while() -> None:
    recent = RecentRuns(ttl_s=0.2)
    made = run("run_1")
    recent.add(made)

    assert recent.get("run_1", "ten_a") is made
    assert recent.get("run_1", "ten_b") is None, "another tenant reads the database (404)"
    assert recent.get("run_2", "ten_a") is None
    time.sleep(0.25)
    assert recent.get("run_1", "ten_a") is None


def test_it_keeps_at_most_max_runs_the_newest() -> None:
    recent = RecentRuns(ttl_s=60, max_runs=3)
    for n in range(5):
        recent.add(run(f"run_{n}"))

    assert [recent.get(f"run_{n}", "ten_a") is not None for n in range(5)] == [
        False,
        False,
        True,
        True,
        True,
    ]


def test_a_task_sent_from_the_loop_is_the_message_celery_sends(settings: Settings) -> None:
    """`send_async` pushes, to the same list, what Celery's `send_task` pushes, byte for byte but
    for the task id and kombu's delivery tag (a drift in Celery or kombu fails here)."""
    prefix = f"{settings.redis_prefix}sender-{secrets.token_hex(4)}:"
    ours = settings.model_copy(update={"redis_prefix": prefix})  # no worker consumes it
    client = redis.Redis.from_url(ours.redis_url)
    about = RunRef("run_one", "ten_a", "thr_a", datetime(2026, 12, 3, 9, 0, 0, 123456, UTC))

    async def send_both() -> None:
        async_redis = aredis.Redis.from_url(ours.redis_url)
        sender = TaskSender(ours, async_redis)
        try:
            sender.send("run_one", about)  # Celery and kombu, blocking
            await sender.send_async("run_one", about)
        finally:
            sender.close()
            await async_redis.aclose()

    try:
        asyncio.run(send_both())
        queue = prefix + ours.task_queue
        from_loop, from_celery = client.lrange(queue, 0, -1)  # LPUSH: the newest first
    finally:
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)
        client.close()

    def without_ids(payload: bytes) -> str:
        message = json.loads(payload)
        text = payload.decode()
        for unique in (message["headers"]["id"], message["properties"]["delivery_tag"]):
            text = text.replace(unique, "<id>")
        return text

    assert without_ids(from_loop) == without_ids(from_celery)
    args, kwargs, _ = json.loads(base64.b64decode(json.loads(from_loop)["body"]))
    assert args == ["run_one"]
    assert RunRef.of_message("run_one", kwargs["about"]) == about  # what the worker reads back
