"""Every Redis key runrelay uses, in one place. Units are in the names."""

from __future__ import annotations

from dataclasses import dataclass

EXECUTE_RUN_TASK = "runrelay.execute_run"


@dataclass(frozen=True)
class RedisKeys:
    prefix: str

    def events(self, run_id: str) -> str:
        """The run's event log: a Stream whose entry ids are `0-<seq>`."""
        return f"{self.prefix}run:{run_id}:events"

    def lease(self, run_id: str) -> str:
        """Who runs the run: a string holding the fencing token, with a TTL renewed by heartbeat."""
        return f"{self.prefix}run:{run_id}:lease"

    def fence(self, run_id: str) -> str:
        """Counter handing out monotonically growing fencing tokens for the run's lease."""
        return f"{self.prefix}run:{run_id}:fence"

    def checkpoint(self, run_id: str) -> str:
        """The run's last checkpoint (JSON): loop state and next seq, written under the lease."""
        return f"{self.prefix}run:{run_id}:checkpoint"

    def cancel(self, run_id: str) -> str:
        """Present while a cancel of the run was requested and not yet carried out."""
        return f"{self.prefix}run:{run_id}:cancel"

    def requeued(self, run_id: str) -> str:
        """Set when the run was enqueued again, so the sweeper does not enqueue it twice."""
        return f"{self.prefix}run:{run_id}:requeued"

    def sweeper_lock(self) -> str:
        """Held (with a TTL the holder renews) by the one worker process that sweeps."""
        return f"{self.prefix}sweeper:lock"

    def hub_wakeup(self, hub_id: str) -> str:
        """A tiny stream the SSE hub also reads, so a new subscription wakes its blocking XREAD."""
        return f"{self.prefix}hub:{hub_id}:wakeup"


def seq_of(entry_id: str | bytes) -> int:
    """`0-17` → 17."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.partition("-")[2])


def entry_id(seq: int) -> str:
    return f"0-{seq}"
