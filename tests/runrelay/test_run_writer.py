"""The worker's run writer against a real Redis: a checkpoint takes the events emitted since the
last append with it, in the same call, after the append already out, so the log stays gapless
and in order and the checkpoint is never ahead of an event emitted before it."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from redis.asyncio import Redis

from runrelay.agent._state import LoopState
from runrelay.server.eventlog import EventLog, LeaseLost, LogText
from runrelay.server.keys import RedisKeys
from worker.checkpoints import Checkpoint, Checkpoints
from worker.lease import Lease
from worker.writer import RunWriter


def writer_of(
    events: EventLog, checkpoints: Checkpoints, lease: Lease, *, next_seq: int
) -> RunWriter:
    """A writer of `lease`'s run whose seqs are reserved already (no database)."""

    async def reserve(_upto: int) -> None:
        return None

    return RunWriter(
        events, checkpoints, lease.run_id, lease, next_seq, reserved=100, reserve=reserve
    )


def test_a_checkpoint_takes_the_events_emitted_while_an_append_was_out(
    redis_url: str, prefix: str
) -> None:
    async def scenario() -> tuple[list[int], list[str], int, int]:
        redis = Redis.from_url(redis_url)
        try:
            return await steps(redis)
        finally:
            await redis.aclose()

    async def steps(redis: Redis) -> tuple[list[int], list[str], int, int]:
        keys = RedisKeys(prefix)
        events = EventLog(redis, keys, 600)
        checkpoints = Checkpoints(redis, keys, 600, store=None)  # type: ignore[arg-type]
        await redis.set(keys.lease("run_w"), "token-1")
        append_calls = 0
        first_out, release = asyncio.Event(), asyncio.Event()
        script = events._append

        async def held_append(*, keys: Any, args: Any) -> Any:
            nonlocal append_calls
            append_calls += 1
            if append_calls == 1:  # the first append stays out until released
                first_out.set()
                await release.wait()
            return await script(keys=keys, args=args)

        events._append = held_append  # type: ignore[assignment]
        writer = writer_of(events, checkpoints, Lease("run_w", "token-1"), next_seq=1)
        await writer.emit("run_started", {"attempt": 1})
        await first_out.wait()
        await writer.emit("output_text_delta", {"delta": "a"})  # while the append is out
        await writer.emit("output_text_delta", {"delta": "b"})
        saving = asyncio.ensure_future(
            writer.checkpoint(LoopState(messages=[]), ("approval_required", {"tool_call_id": "c1"}))
        )
        await asyncio.sleep(0.05)
        assert not saving.done(), "the checkpoint waits for the append already out"
        release.set()
        await saving
        logged = await redis.xrange(keys.events("run_w"))
        saved = Checkpoint.from_json(await redis.get(keys.checkpoint("run_w")))
        seqs = [int(entry_id.split(b"-")[1]) for entry_id, _ in logged]
        types = [fields[b"t"].decode() for _, fields in logged]
        return seqs, types, saved.next_seq, append_calls

    seqs, types, next_seq, append_calls = asyncio.run(scenario())
    assert seqs == [1, 2, 3, 4]
    assert types == ["run_started", "output_text_delta", "output_text_delta", "approval_required"]
    assert next_seq == 5, "the checkpoint is after every event emitted before it"
    assert append_calls == 1, "the deltas went with the checkpoint, not in an append of their own"


def test_closing_appends_the_last_events_and_returns_the_whole_log_in_one_call(
    redis_url: str, prefix: str
) -> None:
    """The end of an attempt: the events still pending go in the call that reads the log back
    (what the run's archive holds), after the append already out; a writer whose lease is gone
    appends nothing and learns it (`LeaseLost`)."""

    async def scenario() -> tuple[list[tuple[int, str]], int, int, bool, list[int]]:
        redis = Redis.from_url(redis_url)
        try:
            keys = RedisKeys(prefix)
            events = EventLog(redis, keys, 600)
            checkpoints = Checkpoints(redis, keys, 600, store=None)  # type: ignore[arg-type]
            await events.append("run_c", 1, "run_queued", '{"seq":1}')  # the API's
            await redis.set(keys.lease("run_c"), "token-1")
            calls = {"append": 0, "append_read": 0}
            append, append_read = events._append, events._append_read

            async def counted_append(*, keys: Any, args: Any) -> Any:
                calls["append"] += 1
                return await append(keys=keys, args=args)

            async def counted_append_read(*, keys: Any, args: Any) -> Any:
                calls["append_read"] += 1
                return await append_read(keys=keys, args=args)

            events._append = counted_append  # type: ignore[assignment]
            events._append_read = counted_append_read  # type: ignore[assignment]
            writer = writer_of(events, checkpoints, Lease("run_c", "token-1"), next_seq=2)
            await writer.emit("run_started", {"attempt": 1})
            await writer.emit("output_text_delta", {"delta": "a"})
            await writer.emit("chat_completed", {"status": "completed"})
            log = await writer.close()

            # Another worker took the run: closing appends nothing more.
            stale = writer_of(events, checkpoints, Lease("run_c", "token-0"), next_seq=5)
            await stale.emit("output_text_delta", {"delta": "late"})
            try:
                await stale.close()
                refused = False
            except LeaseLost:
                refused = True
            logged = [int(i.split(b"-")[1]) for i, _ in await redis.xrange(keys.events("run_c"))]
            as_read = LogText.of(await events.read("run_c"))  # as the archive joins a log read
            return log, calls["append"], calls["append_read"], refused, logged, as_read
        finally:
            await redis.aclose()

    log, appends, closes, refused, logged, as_read = asyncio.run(scenario())
    lines = log.text.split("\n")
    assert lines[0] == '1 {"seq":1}'
    assert [orjson.loads(line.partition(" ")[2])["type"] for line in lines[1:]] == [
        "run_started", "output_text_delta", "chat_completed"
    ]  # fmt: skip
    assert [line.partition(" ")[0] for line in lines] == ["1", "2", "3", "4"]
    assert log == as_read and log.last_seq == 4
    assert closes == 2
    assert appends <= 1, "the events pending at the close went with its read"
    assert refused
    assert logged == [1, 2, 3, 4]
