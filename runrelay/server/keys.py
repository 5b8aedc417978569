"""Every Redis key runrelay uses, in one place. Units are in the names."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

EXECUTE_RUN_TASK = "runrelay.execute_run"
# Schedules and webhooks (issue 12): tasks on the control queue, by name.
FIRE_SCHEDULES_TASK = "runrelay.schedules.fire_due"
DELIVER_WEBHOOK_TASK = "runrelay.webhooks.deliver"
SWEEP_WEBHOOKS_TASK = "runrelay.webhooks.sweep"


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

    # Quotas and fair admission (api_shim/quotas.py, api_shim/dispatcher.py, worker/slots.py)

    def tenant_rate(self, tenant_id: str) -> str:
        """GCRA state of the tenant's request rate: the theoretical arrival time, in ms."""
        return f"{self.prefix}tenant:{tenant_id}:rate"

    def tenant_slots(self, tenant_id: str) -> str:
        """Concurrency slots: a sorted set, member = run id, score = lease expiry (epoch ms)."""
        return f"{self.prefix}tenant:{tenant_id}:slots"

    def tenant_pending(self, tenant_id: str) -> str:
        """Runs admitted above the concurrency cap, oldest first: the tenant's own queue (list)."""
        return f"{self.prefix}tenant:{tenant_id}:pending"

    def tenant_limits(self, tenant_id: str) -> str:
        """Hash of the limits admission last applied, for the dispatcher and workers."""
        return f"{self.prefix}tenant:{tenant_id}:limits"

    def tenant_budget(self, tenant_id: str, period: str) -> str:
        """Tokens charged in one budget period (`2026-11` or `2026-11-21`): settled usage plus
        the reservations of runs not finished yet."""
        return f"{self.prefix}tenant:{tenant_id}:budget:{period}"

    def tenant_reservations(self, tenant_id: str) -> str:
        """Hash run id → `<period>|<tokens charged so far>` for the tenant's unfinished runs."""
        return f"{self.prefix}tenant:{tenant_id}:reservations"

    def pending_tenants(self) -> str:
        """Set of tenants whose pending queue is not empty: what the dispatcher goes round."""
        return f"{self.prefix}quota:pending-tenants"

    def quota_tenants(self) -> str:
        """Set of every tenant admission has seen (for /metrics)."""
        return f"{self.prefix}quota:tenants"

    def dispatching(self) -> str:
        """Runs given a slot and sent (or about to be sent) to Celery but not started yet:
        sorted set, member = `<tenant id> <run id>`, score = when to send again (epoch ms)."""
        return f"{self.prefix}quota:dispatching"

    def dispatch_wakeup(self) -> str:
        """List pushed when a slot frees, so the dispatcher's blocking pop wakes at once."""
        return f"{self.prefix}quota:dispatch-wakeup"

    def broker_queue(self, queue: str) -> str:
        """The Celery queue's list (kombu's `global_keyprefix` puts our prefix in front)."""
        return f"{self.prefix}{queue}"

    # Threads (runrelay/server/thread_gate.py)

    def thread_owner(self, tenant_id: str, thread_id: str) -> str:
        """The one active run of a thread: a string holding its run id, no TTL. A worker takes
        it before starting a run of the thread; the run's end hands it to the oldest waiter."""
        return f"{self.prefix}tenant:{tenant_id}:thread:{thread_id}:owner"

    def thread_new(self, tenant_id: str, thread_id: str) -> str:
        """A thread made for the run that created it, which no run has held yet: a string, with
        a TTL. The first run to take the thread deletes it and so knows the thread has no
        messages (it reads no history); without it (expired, lost with Redis's data), a run
        reads its thread's history as always."""
        return f"{self.prefix}tenant:{tenant_id}:thread:{thread_id}:new"

    def thread_waiting(self, tenant_id: str, thread_id: str) -> str:
        """Runs of a thread parked until it is free: sorted set, member = run id, score = the
        run's creation time (epoch ms), so the oldest is handed the thread first."""
        return f"{self.prefix}tenant:{tenant_id}:thread:{thread_id}:waiting"

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

    # Batches (api_shim/batch_feeder.py)

    def batch_feeder_lock(self) -> str:
        """Held (with a TTL the holder renews) by the one shim process that feeds batches."""
        return f"{self.prefix}batch:feeder-lock"

    def batch_wakeup(self) -> str:
        """List pushed when a batch's run ends, so the feeder's blocking pop wakes at once."""
        return f"{self.prefix}batch:wakeup"

    # Schedules (worker/beat.py): celery-redbeat keeps its entries and its lock under this.

    def beat_prefix(self) -> str:
        """Prefix of celery-redbeat's keys (its schedule, statics and `<prefix>:lock`, the
        lock a second beat waits on)."""
        return f"{self.prefix}beat:"

    def hub_wakeup(self, hub_id: str) -> str:
        """A tiny stream the SSE hub also reads, so a new subscription wakes its blocking XREAD."""
        return f"{self.prefix}hub:{hub_id}:wakeup"

    # Browsers (api_shim/stream_tokens.py)

    def stream_token_secret(self) -> str:
        """The HMAC key of stream tokens when `RUNRELAY_STREAM_TOKEN_SECRET` is unset: set once
        (SET NX) by the first shim, so every shim, and a restarted one, accepts the same tokens."""
        return f"{self.prefix}stream_token:secret"


def seq_of(entry_id: str | bytes) -> int:
    """`0-17` → 17."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.partition("-")[2])


def entry_id(seq: int) -> str:
    return f"0-{seq}"
