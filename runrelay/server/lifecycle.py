"""The run lifecycle's one owner: it moves a run through its statuses (`runrelay.server.run_table`)
and does what each move owes the event log, the quotas, the thread and the listeners.

Who calls what: the shim creates runs (`create`), cancels them (`request_cancel`) and records
approval decisions (`decide`); the worker starts (`start`), pauses (`pause`) and ends them
(`finish`); the sweeper expires runs left waiting for approval (`expire`). Every ending goes
through `finish`: the outcome and the archived log in one transaction, then exactly one `done`
in the stream, then the tenant's slot and token reservation, then the thread.

Extension point: `RunListener`s given to the lifecycle are called once per transition, inside
the transaction that made it (so what they record is as durable as the new status), then once
after it committed. A run that ended (`run.status.is_terminal`) is seen exactly once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import Engine

from runrelay.agent._driver import Outcome
from runrelay.agent.config import AgentSpec
from runrelay.agent.events import encode, make_event
from runrelay.agent.messages import ApprovalRequest
from runrelay.server.approvals import Decision, PausedCalls, SavedCheckpoint
from runrelay.server.autopipeline import together
from runrelay.server.eventlog import EventLog, LeaseLost, LogText
from runrelay.server.keys import RedisKeys
from runrelay.server.quota import QuotaStore
from runrelay.server.run_table import (
    COMPLETED,
    EXPIRED,
    NO_SEQS,
    QUEUED,
    REQUIRES_ACTION,
    RUNNING,
    Decided,
    Ending,
    Moved,
    RunListener,
    RunTable,
    SeqBlock,
)
from runrelay.server.settings import Settings
from runrelay.server.store import Store, new_id
from runrelay.server.tables import Run, new_row, utcnow
from runrelay.server.thread_gate import ThreadGate
from runrelay.server.threads import Threads
from runrelay.types import RunCreate, RunStatus, ToolApproval

log = logging.getLogger(__name__)


def queued_run(
    run_id: str, tenant_id: str, body: RunCreate, agent: AgentSpec, **extra: Any
) -> Run:
    """The row of a new run asked for by `body` (the API, a schedule's tick), `queued`; `extra`
    sets the columns the request does not give (request id, schedule)."""
    return new_row(
        Run,
        id=run_id,
        tenant_id=tenant_id,
        status=QUEUED,
        agent_name=agent.name,
        agent_id=agent.id,
        agent_revision=agent.revision,
        agent_tag=body.tag,
        thread_id=body.thread_id or new_id("thr"),
        input=body.input,
        message=body.message,
        model_id=body.model_id,
        model_params=body.model_params.model_dump(exclude_none=True) if body.model_params else None,
        end_user_id=body.end_user_id,
        run_metadata=body.metadata,
        timeout_s=body.timeout_s,
        webhook=body.webhook.model_dump(mode="json") if body.webhook else None,
        **extra,
    )


# The lifecycle (async: the shim's routes, the worker's executor, the sweeper) ------------------


class Lifecycle:
    """The one owner of run status changes; built once per process and passed in."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        events: EventLog,
        quotas: QuotaStore,
        threads: ThreadGate,
        listeners: Sequence[RunListener] = (),
    ) -> None:
        self.settings = settings
        self.table = RunTable(engine, listeners)
        self.events = events
        self.quotas = quotas
        self.threads = threads
        self.listeners = tuple(listeners)

    @classmethod
    def build(
        cls,
        settings: Settings,
        store: Store,
        redis: Redis,
        listeners: Sequence[RunListener] = (),
    ) -> Lifecycle:
        """A lifecycle on its own Redis parts (the sweeper's tests, tools)."""
        keys = RedisKeys(settings.redis_prefix)
        quotas = QuotaStore(redis, keys, dispatch_timeout_s=settings.dispatch_timeout_s)
        events = EventLog(redis, keys, settings.events_ttl_s)
        return cls(settings, store.engine, events, quotas, ThreadGate(quotas, store), listeners)

    async def _after_commit(self, moved: Moved | None) -> None:
        if moved is None:
            return
        for listener in self.listeners:
            try:
                await listener.after_commit(moved.run, moved.previous)
            except Exception:  # best effort by contract: the transition stands
                log.exception("run %s: listener %r failed after commit", moved.run.id, listener)

    async def create(
        self,
        run: Run,
        queued: dict[str, Any],
        *,
        reject_if_busy: bool = False,
        new_thread: bool = False,
        task: tuple[str, str] | None = None,
    ) -> list[Run]:
        """Insert the queued run (and its thread, if new), then append `run_queued` (seq 1) and
        push its Celery task (`task`: `TaskSender.run_message`'s; None: sent later), in one
        round trip. Returns its thread's runs that were active before it (`ThreadBusy` with
        `reject_if_busy` when there are some, and nothing is written). `new_thread`: its
        thread id was made for this run."""
        threads = Threads(self.table.engine)
        active = await threads.create_run_async(
            run, reject_if_busy=reject_if_busy, new_thread=new_thread
        )
        mark = ""
        if new_thread and run.thread_id is not None:  # its worker will read no history
            mark = self.threads.new_mark(run)
        event = make_event(run.id, 1, "run_queued", queued)
        await self.events.queue(
            run.id, encode(event), task=task, mark=mark, mark_ttl_s=self.settings.events_ttl_s
        )
        return active

    async def start(
        self, run_id: str, *, lease_token: str, seqs: SeqBlock = NO_SEQS
    ) -> Run | None:
        moved = await self.table.start_async(run_id, lease_token, seqs)
        await self._after_commit(moved)
        return moved.run if moved else None

    async def pause(
        self,
        run_id: str,
        *,
        lease_token: str,
        tool_calls: Sequence[ApprovalRequest],
        checkpoint: SavedCheckpoint,
    ) -> bool:
        """Park the run as `requires_action` (see `RunTable.pause`); whether it was."""
        paused = PausedCalls(
            tool_calls=[
                ToolApproval(
                    tool_call_id=call["tool_call_id"],
                    name=call["name"],
                    arguments=call["arguments"],
                )
                for call in tool_calls
            ],
            paused_at=utcnow(),
            checkpoint=checkpoint,
        )
        moved = await asyncio.to_thread(self.table.pause, run_id, lease_token, paused)
        await self._after_commit(moved)
        return moved is not None

    async def decide(self, run_id: str, decision: Decision) -> Decided:
        """Record a decision; on the last one the run goes back to the head of its tenant's
        queue, to be resumed from its checkpoint by whichever worker takes it."""
        decided = await asyncio.to_thread(self.table.decide, run_id, decision)
        if decided.moved is not None:
            await self.quotas.resume(decided.run.tenant_id, run_id)
        await self._after_commit(decided.moved)
        return decided

    async def handed_back(self, run_id: str, *, lease_token: str) -> bool:
        return await self.table.count_handback_async(run_id, lease_token)

    async def request_cancel(self, run: Run) -> Run | None:
        """Ask `run` to stop: a queued or paused one (no worker holds it) ends here, a running
        one is flagged and its worker stops it. None when it already ended."""
        requested = await asyncio.to_thread(self.table.flag_cancel, run.id)
        if requested is None:
            return None
        unstarted = requested.status in (QUEUED, REQUIRES_ACTION)
        if not (unstarted and await self._end_unstarted(requested, Outcome.cancelled())):
            # Running (or a worker took it just now): its worker sees the flag and stops it.
            flag = self.events.keys.cancel(run.id)
            await self.events.redis.set(flag, "1", ex=self.settings.events_ttl_s)
        return requested

    async def expire(self, run: Run, code: str, message: str) -> bool:
        """End a run no worker holds (paused for approval too long; queued past a window)
        `expired`; False when it moved on meanwhile."""
        outcome = Outcome(EXPIRED, error={"code": code, "message": message})
        return await self._end_unstarted(run, outcome)

    async def _end_unstarted(self, run: Run, outcome: Outcome) -> bool:
        paused = PausedCalls.of(run.required_action) if run.status == REQUIRES_ACTION else None
        return await self.finish(
            run,
            outcome,
            ending=Ending.from_(RunStatus(run.status)),
            used_tokens=paused.used_tokens if paused else 0,
            usage=paused.usage if paused else None,
        )

    async def finish(
        self,
        run: Run,
        outcome: Outcome,
        *,
        ending: Ending,
        duration_ms: int = 0,
        used_tokens: int = 0,
        usage: dict[str, Any] | None = None,
        token_period: str | None = None,
        next_seq: int = 0,
        history: LogText | None = None,
    ) -> bool:
        """End the run as `outcome` says, if `ending` holds; whether it did. `token_period`:
        the budget period its tokens were reserved in ("-" for none), if the caller knows it;
        `next_seq`: the seq after the last one its writer appended (the worker's); `history`:
        its log, if the caller read it with its last append (the worker's `RunWriter.close`).

        In this order, which is what clients and the other runs rely on: the outcome and the
        archived log (with `done`) in one transaction, so a client that sees `done` finds the
        run ended in the database; then `done` in the stream; then the tenant's slot and token
        reservation (settled at `used_tokens`); then the thread (its next run may start). The
        last three are one Redis round trip: sent together, run by Redis in that order."""
        if history is None:
            history = LogText.of(await self.events.read(run.id))
        # Above the writer's last seq too: if Redis lost the log meanwhile, `done` must still
        # come after every seq a client may hold.
        seq = max(history.last_seq + 1, next_seq)
        done = make_event(
            run.id, seq, "done", outcome.done_data(duration_ms=duration_ms, usage=usage)
        )
        result = recorded = None
        if outcome.result is not None:
            tool_calls = [vars(record) for record in outcome.result.tool_calls]
            result = {"output": outcome.output, "tool_calls": tool_calls}
            # The run row keeps the usage per model too (`usage_by_model` in the API).
            recorded = {
                **outcome.result.usage.model_dump(),
                "by_model": outcome.result.usage_by_model,
            }
        moved = await self.table.end_async(
            run.id,
            outcome.status,
            ending=ending,
            log=history.plus(seq, encode(done)),
            thread_messages=outcome.thread_messages if outcome.status == COMPLETED else (),
            known=run,
            output=outcome.output,
            result=result,
            usage=recorded if outcome.result is not None else usage,
            error=outcome.error,
        )
        appended: Awaitable[None] | None = None
        if moved is not None:
            appended = self._append_done(run.id, seq, encode(done))
        else:
            moved = await self._ended_before(run.id, outcome.status, ending)
            if moved is None:
                return False
        released: Awaitable[Any]
        if moved.previous == RUNNING:
            released = self.quotas.release(
                moved.run.tenant_id, run.id, used_tokens=used_tokens, period=token_period
            )
        else:  # it may still sit in its tenant's pending queue
            released = self.quotas.abandon(moved.run.tenant_id, run.id, used_tokens=used_tokens)
        # `done`, the slot, the thread: issued together, in one Redis round trip, in this order.
        await together(*([appended] if appended else []), released, self.threads.release(moved.run))
        await self._after_commit(moved)
        return True

    async def _append_done(self, run_id: str, seq: int, done: str) -> None:
        try:
            await self.events.append(
                run_id,
                seq,
                "done",
                done,
                # Not fenced by the Redis lease: the database's conditional UPDATE already was
                # (a worker's lease token, or the expected status), and the lease key is gone if
                # Redis lost its data, which must not keep `done` from live clients.
                token="",
                ttl_s=self.settings.events_ttl_after_done_s,
            )
        except (LeaseLost, RedisError) as exc:  # the archive has `done`; replay falls back to it
            log.warning("run %s: ended, but `done` did not reach its stream: %r", run_id, exc)

    async def _ended_before(self, run_id: str, status: RunStatus, ending: Ending) -> Moved | None:
        """A worker's `finish` tried again after its ending committed (the reply was lost, or
        Redis failed right after it) finds the run ended under its own lease: the ending it
        made, or None. The archived `done` goes to the stream unless it is there already, so
        that the stream still holds exactly one `done`, the archive's."""
        if ending.lease_token is None:
            return None
        ended = await asyncio.to_thread(self.table.ended_by, run_id, status, ending.lease_token)
        if ended is None:
            return None
        moved, seq, done = ended
        log.warning("run %s: its ending had committed before a store failed; finishing it", run_id)
        if await self.events.last_seq(run_id) < seq:
            await self._append_done(run_id, seq, done)
        return moved
