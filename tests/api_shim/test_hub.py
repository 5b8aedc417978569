"""One hub per shim process: many SSE clients, a fixed number of Redis connections."""

from __future__ import annotations

import asyncio
import json

import httpx
import redis
from httpx_sse import aconnect_sse
from redis.asyncio import Redis

from api_shim.hub import StreamHub, Subscription
from runrelay.server.eventlog import EventLog
from runrelay.server.keys import RedisKeys
from runrelay.server.settings import Settings
from runrelay.server.store import Store
from runrelay.server.tenants import update_limits
from tests.conftest import TenantKey

CLIENTS = 40


def _shim_connections(settings: Settings) -> int:
    raw = redis.Redis.from_url(settings.redis_url)
    try:
        name = f"{settings.redis_prefix}shim"
        return sum(1 for c in raw.client_list() if c.get("name") == name)
    finally:
        raw.close()


def test_redis_connections_do_not_grow_with_sse_clients(
    api: str, tenant: TenantKey, settings: Settings, store: Store
) -> None:
    update_limits(store, tenant.tenant_id, max_concurrent_runs=CLIENTS)  # all tails live at once

    async def scenario() -> tuple[list[list[dict]], list[int]]:
        limits = httpx.Limits(max_connections=CLIENTS * 2)
        async with httpx.AsyncClient(
            base_url=api, headers=tenant.headers, timeout=60, limits=limits
        ) as http:
            runs = [
                (
                    await http.post("/v1/runs", json={"agent": "slow-analyst", "message": "go"})
                ).json()
                for _ in range(CLIENTS)
            ]
            samples: list[int] = []
            all_started = asyncio.Event()
            started = 0

            async def follow(run_id: str) -> list[dict]:
                nonlocal started
                events = []
                async with aconnect_sse(http, "GET", f"/v1/runs/{run_id}/events") as source:
                    async for sse in source.aiter_sse():
                        if not sse.data:
                            continue  # a keep-alive comment
                        events.append(json.loads(sse.data))
                        if len(events) == 1:
                            started += 1
                            if started == CLIENTS:
                                all_started.set()
                return events

            async def sample() -> None:
                await all_started.wait()
                for _ in range(10):
                    samples.append(await asyncio.to_thread(_shim_connections, settings))
                    await asyncio.sleep(0.2)

            results = await asyncio.gather(*(follow(r["id"]) for r in runs), sample())
            return results[:-1], samples

    logs, samples = asyncio.run(scenario())
    assert all(log[-1]["type"] == "done" and log[-1]["status"] == "completed" for log in logs)
    assert len(samples) == 10
    # The command pool is bounded, every tail shares the hub's one connection, and the quota
    # dispatcher and the batch feeder have one of their own each.
    assert max(samples) <= settings.shim_redis_connections + 3 < CLIENTS


def test_a_history_read_shared_by_later_opens_loses_no_event(settings: Settings) -> None:
    """Opens of a run's stream shortly after another reuse its history read, which may miss
    what came since: their tails go on from the last seq they got, so nothing is lost."""

    async def scenario() -> tuple[list[int], list[int], list[int]]:
        keys = RedisKeys(f"{settings.redis_prefix}hubshare:")
        reader, writer = Redis.from_url(settings.redis_url), Redis.from_url(settings.redis_url)
        hub = StreamHub(reader, writer, keys, block_ms=500, idle_wake_s=0.5)
        hub.start()
        key = keys.events("r1")
        try:
            for seq in (1, 2):
                await writer.xadd(key, {"t": "e", "d": json.dumps({"seq": seq})}, id=f"0-{seq}")
            first = await hub.history("r1", 0)
            await writer.xadd(key, {"t": "e", "d": "{}"}, id="0-3")
            later = await hub.history("r1", 1)  # within the reuse window: seq 3 is not in it
            sub = await hub.subscribe("r1", later[-1].seq)
            tail = []
            async with asyncio.timeout(10):
                while (tail or later)[-1].seq < 3:
                    tail += await sub.wait()
            hub.unsubscribe(sub)
            return [e.seq for e in first], [e.seq for e in later], [e.seq for e in tail]
        finally:
            await hub.stop()
            await writer.delete(key)
            await reader.aclose()
            await writer.aclose()

    first, later, tail = asyncio.run(scenario())
    assert first == [1, 2]
    assert later + tail == [2, 3]


def test_events_written_while_the_hub_waits_to_read_come_in_one_batch(settings: Settings) -> None:
    """After a read that brought events the hub waits `batch_s`: tokens written one by one
    meanwhile reach a subscriber together, and a subscriber that comes meanwhile loses none."""

    async def scenario() -> tuple[list[list[int]], list[int]]:
        keys = RedisKeys(f"{settings.redis_prefix}hubbatch:")
        reader, writer = Redis.from_url(settings.redis_url), Redis.from_url(settings.redis_url)
        hub = StreamHub(reader, writer, keys, block_ms=500, idle_wake_s=5, batch_s=0.4)
        hub.start()
        first, second = keys.events("r1"), keys.events("r2")
        takes: list[list[int]] = []

        async def collect(sub: Subscription) -> None:
            while sum(len(take) for take in takes) < 4:
                if took := await sub.wait():
                    takes.append([e.seq for e in took])

        try:
            sub = await hub.subscribe("r1", 0)
            async with asyncio.timeout(10), asyncio.TaskGroup() as group:
                group.create_task(collect(sub))
                await writer.xadd(first, {"t": "e", "d": "{}"}, id="0-1")
                while not takes:  # read at once; the hub now waits before reading again
                    await asyncio.sleep(0.01)
                for seq in (2, 3, 4):
                    await asyncio.sleep(0.05)  # each its own read, were it not for the wait
                    await writer.xadd(first, {"t": "e", "d": "{}"}, id=f"0-{seq}")
                await writer.xadd(second, {"t": "e", "d": "{}"}, id="0-1")
                late = await hub.subscribe("r2", 0)  # during the wait
                late_events = await late.wait()
            return takes, [e.seq for e in late_events]
        finally:
            await hub.stop()
            await writer.delete(first, second)
            await reader.aclose()
            await writer.aclose()

    takes, late = asyncio.run(scenario())
    assert takes == [[1], [2, 3, 4]]
    assert late == [1]


def test_events_the_scripts_wrote_and_entries_written_otherwise_read_alike(
    settings: Settings,
) -> None:
    """The hub reads XREAD's replies as Redis sends them: the scripts' entries (`d`, then `t`)
    on a short path, any other field order by name; both give the same events."""

    async def scenario() -> list[tuple[int, str, str]]:
        keys = RedisKeys(f"{settings.redis_prefix}hubfields:")
        reader, writer = Redis.from_url(settings.redis_url), Redis.from_url(settings.redis_url)
        hub = StreamHub(reader, writer, keys, block_ms=500, idle_wake_s=5)
        hub.start()
        key = keys.events("r1")
        got: list[tuple[int, str, str]] = []
        try:
            sub = await hub.subscribe("r1", 0)
            await EventLog(writer, keys, 60).append_many("r1", [(1, "delta", '{"n": 1}')])
            await writer.xadd(key, {"t": "delta", "d": '{"n": 2}'}, id="0-2")
            async with asyncio.timeout(10):
                while len(got) < 2:
                    got += [(e.seq, e.type, e.data) for e in await sub.wait()]
            return got
        finally:
            await hub.stop()
            await writer.delete(key)
            await reader.aclose()
            await writer.aclose()

    assert asyncio.run(scenario()) == [(1, "delta", '{"n": 1}'), (2, "delta", '{"n": 2}')]
