"""A `RunListener` that records what the lifecycle tells it, for the tests to check."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from sqlmodel import Session

from runrelay.server.tables import Run
from runrelay.types import RunStatus

# Metadata by which a run asks the session's listener to record it.
RECORDED = {"recorded_by": "tests"}


@dataclass
class RecordingListener:
    """(run id, new status, previous status) for each call, in call order. It records every
    run (`every`), or only those created with `RECORDED` in their metadata: the session's
    worker and shim have one of those, so that the other runs end as most runs do, with no
    listener recording (one statement on PostgreSQL)."""

    every: bool = True
    in_transaction_calls: list[tuple[str, RunStatus, RunStatus]] = field(default_factory=list)
    after_commit_calls: list[tuple[str, RunStatus, RunStatus]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def records(self, run: Run) -> bool:
        return self.every or (run.run_metadata or {}).get("recorded_by") == "tests"

    def in_transaction(self, session: Session, run: Run, previous: RunStatus) -> None:
        with self._lock:
            self.in_transaction_calls.append((run.id, run.status, previous))

    async def after_commit(self, run: Run, previous: RunStatus) -> None:
        with self._lock:
            self.after_commit_calls.append((run.id, run.status, previous))

    def endings(self, run_id: str) -> tuple[list[RunStatus], list[RunStatus]]:
        """The ended statuses the run was seen with: in the transaction, and after commit."""
        with self._lock:
            return (
                [s for r, s, _ in self.in_transaction_calls if r == run_id and s.is_terminal],
                [s for r, s, _ in self.after_commit_calls if r == run_id and s.is_terminal],
            )
