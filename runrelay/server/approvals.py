"""Runs paused for approval, on the database side.

A run whose model calls an `always_require` tool is paused by its worker (`pause`): status
`requires_action`, the calls awaiting a decision and the loop's checkpoint in
`runs.required_action`, no lease, no worker. Each decision (`decide`) is written under a row
lock; the last one moves the run back to `queued` (the caller then enqueues it), adds the time
spent waiting to `waited_s` (not counted against the run's deadline) and counts a resume (not a
crash attempt).

`required_action` holds::

    {"type": "approve_tool_calls",
     "tool_calls": [{"tool_call_id", "name", "arguments", "approved": bool | None, "reason"}],
     "paused_at": ISO time, "checkpoint": {"next_seq": int, "state": LoopState dict}}
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, update
from sqlmodel import Session, col, select

from runrelay.server.tables import Run, as_utc, utcnow


class DecisionRefused(Exception):
    """The decision cannot be recorded; `code` and `param` say why (for a 409 or 422)."""

    def __init__(self, code: str, message: str, *, status: int, param: str) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.param = param


@dataclass(frozen=True)
class Decided:
    run: Run
    # True when this was the last decision: the run is queued again and must be enqueued.
    resumed: bool


def public(required_action: dict[str, Any] | None) -> dict[str, Any] | None:
    """What clients see of `required_action` (the checkpoint stays inside)."""
    if not required_action:
        return None
    return {"type": required_action["type"], "tool_calls": required_action["tool_calls"]}


def decisions(required_action: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The decisions made, as the loop's `LoopState.approvals` takes them."""
    return {
        call["tool_call_id"]: {"approved": call["approved"], "reason": call.get("reason")}
        for call in (required_action or {}).get("tool_calls", [])
        if call.get("approved") is not None
    }


def pause(
    engine: Engine,
    run_id: str,
    *,
    lease_token: str,
    tool_calls: list[dict[str, Any]],
    checkpoint: dict[str, Any],
) -> bool:
    """Park a running run as `requires_action`; only its lease holder can, and not once a
    cancel was requested. Returns whether the run was paused."""
    required = {
        "type": "approve_tool_calls",
        "tool_calls": [{**call, "approved": None, "reason": None} for call in tool_calls],
        "paused_at": utcnow().isoformat(),
        "checkpoint": checkpoint,
    }
    stmt = (
        update(Run)
        .where(col(Run.id) == run_id, col(Run.status) == "running")
        .where(col(Run.lease_token) == lease_token, col(Run.cancel_requested_at).is_(None))
        .values(status="requires_action", required_action=required, lease_token=None)
    )
    with Session(engine) as session:
        paused = session.exec(stmt).rowcount == 1
        session.commit()
        return paused


def decide(
    engine: Engine,
    run_id: str,
    *,
    call_id: str,
    approved: bool,
    reason: str | None,
) -> Decided:
    """Record one decision; DecisionRefused when the run is not waiting for this call.

    Sending a decision already recorded again is harmless (a client retrying after a lost
    answer): it returns the run as it is, with `resumed` when the run is queued to resume. The
    write is conditional on the run still being `requires_action` (a cancel may have ended it);
    concurrent decisions on one run are serialised by the row lock on PostgreSQL and by the
    caller's lock on SQLite, which has no row locks."""
    with Session(engine, expire_on_commit=False) as session:
        run = session.exec(select(Run).where(col(Run.id) == run_id).with_for_update()).one()
        required = dict(run.required_action or {})
        calls = [dict(call) for call in required.get("tool_calls", [])]
        call = next((c for c in calls if c["tool_call_id"] == call_id), None)
        if call is not None and call["approved"] == approved and run.status != "requires_action":
            return Decided(run=run, resumed=run.status == "queued")
        if run.status != "requires_action" or not required:
            raise DecisionRefused(
                "run_not_awaiting_approval",
                f"run {run_id} is {run.status}; approvals are taken only while it is "
                "requires_action",
                status=409,
                param="run_id",
            )
        if call is None:
            waiting = ", ".join(repr(c["tool_call_id"]) for c in calls)
            raise DecisionRefused(
                "unknown_call_id",
                f"call_id {call_id!r} is not awaiting approval in run {run_id} "
                f"(awaiting: {waiting})",
                status=422,
                param="call_id",
            )
        if call["approved"] is not None and call["approved"] != approved:
            raise DecisionRefused(
                "already_decided",
                f"call {call_id} was already {'approved' if call['approved'] else 'rejected'}",
                status=409,
                param="call_id",
            )
        call["approved"], call["reason"] = approved, reason
        required["tool_calls"] = calls
        values: dict[str, Any] = {"required_action": required}
        resumed = all(c["approved"] is not None for c in calls)
        if resumed:
            paused_at = as_utc(datetime.fromisoformat(required["paused_at"]))
            values["status"] = "queued"
            values["waited_s"] = (run.waited_s or 0.0) + (utcnow() - paused_at).total_seconds()
            values["resumes"] = (run.resumes or 0) + 1
        stmt = (
            update(Run)
            .where(col(Run.id) == run_id, col(Run.status) == "requires_action")
            .values(**values)
        )
        if session.exec(stmt).rowcount != 1:
            session.rollback()
            raise DecisionRefused(
                "run_not_awaiting_approval",
                f"run {run_id} stopped waiting for approval (it was cancelled)",
                status=409,
                param="run_id",
            )
        session.commit()
        for name, value in values.items():
            setattr(run, name, value)
        return Decided(run=run, resumed=resumed)
