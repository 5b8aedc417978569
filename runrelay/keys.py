"""Every Redis key runrelay uses, in one place. Units are in the names."""

from __future__ import annotations

import hashlib
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

    def idempotency(self, tenant_id: str, key: str) -> str:
        """A tenant's idempotency key → JSON `{"fingerprint", "run_id"}` of the run it created;
        TTL `Settings.idempotency_ttl_s`. The key is hashed so its length is bounded."""
        digest = hashlib.sha256(key.encode()).hexdigest()[:32]
        return f"{self.prefix}idem:{tenant_id}:{digest}"

    def hub_wakeup(self, hub_id: str) -> str:
        """A tiny stream the SSE hub also reads, so a new subscription wakes its blocking XREAD."""
        return f"{self.prefix}hub:{hub_id}:wakeup"


def seq_of(entry_id: str | bytes) -> int:
    """`0-17` → 17."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.partition("-")[2])


def entry_id(seq: int) -> str:
    return f"0-{seq}"
