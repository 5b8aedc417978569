"""A run's start in one Redis round trip: its lease, its thread, its slot and its log's last seq.

Each of the first three is its own script with its own owner (`acquire_lease`: worker/lease.py,
`thread_enter`: runrelay/server/thread_gate.py, `quota_hold`: runrelay/server/quota.py), and the
executor used to call them, then read the log's last seq, one after the other: four round trips
before every run, each a write, a read and a wake-up of the worker's loop (bench/README.md).
`start_run.lua` runs the same three scripts, on the KEYS and ARGV their owners give, in the same
order and with the same stops (a lease another worker holds: nothing else; a thread another run
holds: parked, no slot), then reads the last seq: what four calls would do, in one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runrelay.server import lua
from runrelay.server.keys import RedisKeys, seq_of
from runrelay.server.quota import QuotaStore, as_text, reserved_period
from runrelay.server.tables import RunIdentity
from runrelay.server.thread_gate import ThreadGate
from worker.lease import Lease, Leases

# A step the script skips: its KEYS unused, its first ARGV ''.
_NO_LEASE: tuple[list[str], list[Any]] = (["", ""], ["", "", ""])
_NO_THREAD: tuple[list[str], list[Any]] = (["", "", ""], ["", "", ""])


@dataclass(frozen=True)
class Started:
    """What `Starts.start` did."""

    lease: Lease | None  # None: another worker's lease is alive, and nothing else was done
    # The run that holds the thread (maybe finished: `ThreadGate.enter` checks): the run is
    # parked among its waiters, with no slot taken and no seq read. None: the run holds it.
    holder: str | None
    new_thread: bool  # the first run to hold a thread made for it (`ThreadGate.new_mark`)
    period: str | None  # the slot is the run's: the budget period of its token reservation
    last_seq: int  # the last seq of the run's log (0: empty, or lost)


class Starts:
    def __init__(self, leases: Leases, threads: ThreadGate, slot_ttl_ms: int) -> None:
        self.keys: RedisKeys = leases.keys
        self.leases = leases
        self.threads = threads
        self.quotas: QuotaStore = threads.quotas
        self.slot_ttl_ms = slot_ttl_ms
        self._start = lua.script(
            leases.redis, "start_run", uses=("acquire_lease", "thread_enter", "quota_hold")
        )

    async def start(self, run: RunIdentity, lease: Lease | None = None) -> Started:
        """Take `run`'s lease (unless `lease`, already taken), its thread, and if it holds the
        thread its slot, and read its log's last seq."""
        lease_keys, lease_args = _NO_LEASE if lease else self.leases.acquire_call(run.id)
        thread_keys, thread_args = (
            _NO_THREAD if run.thread_id is None else self.threads.enter_call(run)
        )
        hold_keys, hold_args = self.quotas.hold_call(run.tenant_id, run.id, self.slot_ttl_ms)
        token, holder, new, reservation, last = await self._start(
            keys=[*lease_keys, *thread_keys, *hold_keys, self.keys.events(run.id)],
            args=[*lease_args, *thread_args, *hold_args],
        )
        taken = lease or self.leases.taken(run.id, token)
        if taken is None:
            return Started(None, None, False, None, 0)
        holder = as_text(holder)
        return Started(
            lease=taken,
            holder=holder or None,
            new_thread=bool(int(new)),
            period=reserved_period(reservation),
            last_seq=seq_of(last) if last else 0,
        )
