"""The run lifecycle: which status may follow which, and the one owner that moves a run.

    queued ──start──▶ running ──finish──▶ completed | failed | cancelled | expired
      │  ▲              │  ▲ resume (crash, hand back: attempts + 1)
      │  └──decide──┐   ▼  │
      │        requires_action ──cancel / expire──▶ cancelled | expired
      └──cancel / enqueue failure / expire──▶ cancelled | failed | expired

`TRANSITIONS` is that picture as a table (the README's "Run statuses" mirrors it). Every status
change is one conditional UPDATE (`WHERE status IN (allowed sources)`), so a transition the
table does not allow changes nothing.

Extension point: `RunListener`s given to the lifecycle are called once per transition, inside
the transaction that made it (so what they record is as durable as the new status), then once
after it committed. A run that ended (`run.status.is_terminal`) is seen exactly once.
"""

from __future__ import annotations

from typing import Final, Protocol

from sqlmodel import Session

from runrelay.server.tables import Run
from runrelay.types import RunStatus

QUEUED, RUNNING, REQUIRES_ACTION = RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.REQUIRES_ACTION
COMPLETED, FAILED = RunStatus.COMPLETED, RunStatus.FAILED
CANCELLED, EXPIRED = RunStatus.CANCELLED, RunStatus.EXPIRED

TRANSITIONS: Final[dict[RunStatus, frozenset[RunStatus]]] = {
    QUEUED: frozenset({RUNNING, CANCELLED, FAILED, EXPIRED}),
    RUNNING: frozenset({RUNNING, REQUIRES_ACTION, COMPLETED, FAILED, CANCELLED, EXPIRED}),
    REQUIRES_ACTION: frozenset({QUEUED, CANCELLED, EXPIRED}),
    COMPLETED: frozenset(),
    FAILED: frozenset(),
    CANCELLED: frozenset(),
    EXPIRED: frozenset(),
}


def sources(target: RunStatus) -> frozenset[RunStatus]:
    """The statuses a run may move to `target` from."""
    return frozenset(s for s, targets in TRANSITIONS.items() if target in targets)


class RunListener(Protocol):
    """What attaches to the lifecycle (webhooks, batches, schedules)."""

    def in_transaction(self, session: Session, run: Run, previous: RunStatus) -> None:
        """`run` (as written, `run.status` the new status) just left `previous`; called inside
        that transaction. Raising rolls the transition back: record, don't call out."""

    async def after_commit(self, run: Run, previous: RunStatus) -> None:
        """The same transition, once committed: a place to kick off work (best effort; what
        must not be lost was recorded in `in_transaction`)."""
