"""A new run's first writes to a real Redis (`EventLog.queue`): its `run_queued`, its thread's new
mark and its Celery task go in together, and a refused append writes none of them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis

from runrelay.server.eventlog import EventLog, SeqConflict
from runrelay.server.keys import RedisKeys

QUEUED = '{"seq":1,"type":"run_queued"}'


def queued_in(redis_url: str, scenario: Any) -> Any:
    async def run() -> Any:
        redis = Redis.from_url(redis_url)
        try:
            return await scenario(redis)
        finally:
            await redis.aclose()

    return asyncio.run(run())


def test_run_queued_the_mark_and_the_task_go_in_together(redis_url: str, prefix: str) -> None:
    keys = RedisKeys(prefix)
    queue, mark = f"{prefix}runs", keys.thread_new("t1", "thr_1")

    async def scenario(redis: Redis) -> tuple[Any, ...]:
        log = EventLog(redis, keys, 600)
        await log.queue("run_q", QUEUED, task=(queue, "task-1"), mark=mark, mark_ttl_s=60)
        return (
            await redis.xrange(keys.events("run_q")),
            await redis.lrange(queue, 0, -1),
            await redis.ttl(mark),
            await redis.ttl(keys.events("run_q")),
        )

    logged, tasks, mark_ttl, log_ttl = queued_in(redis_url, scenario)
    assert [(entry_id, fields) for entry_id, fields in logged] == [
        (b"0-1", {b"d": QUEUED.encode(), b"t": b"run_queued"})
    ]
    assert tasks == [b"task-1"]
    assert 0 < mark_ttl <= 60
    assert 0 < log_ttl <= 600


def test_without_a_task_or_a_mark_only_run_queued_goes_in(redis_url: str, prefix: str) -> None:
    keys = RedisKeys(prefix)
    queue = f"{prefix}runs"

    async def scenario(redis: Redis) -> tuple[int, int, list[Any]]:
        await EventLog(redis, keys, 600).queue("run_p", QUEUED)  # quotas: sent later
        return (
            await redis.xlen(keys.events("run_p")),
            await redis.llen(queue),
            await redis.keys(f"{prefix}tenant:*"),
        )

    assert queued_in(redis_url, scenario) == (1, 0, [])


def test_a_refused_append_pushes_no_task_and_sets_no_mark(redis_url: str, prefix: str) -> None:
    keys = RedisKeys(prefix)
    queue, mark = f"{prefix}runs", keys.thread_new("t1", "thr_2")

    async def scenario(redis: Redis) -> tuple[int, bool]:
        log = EventLog(redis, keys, 600)
        await log.append("run_r", 1, "run_queued", QUEUED)  # seq 1 is taken already
        with pytest.raises(SeqConflict):
            await log.queue("run_r", QUEUED, task=(queue, "task-2"), mark=mark, mark_ttl_s=60)
        return await redis.llen(queue), bool(await redis.exists(mark))

    assert queued_in(redis_url, scenario) == (0, False)
