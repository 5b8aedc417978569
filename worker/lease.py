"""Run leases: the truth about which worker runs a run.

A lease is a Redis string holding a fencing token (a per-run counter, so a newer holder always has
a larger token, plus a random part, so tokens stay unique even if Redis lost the counter) with a
TTL the holder renews (worker/renewals.py renews all of a process's leases at once). Event
appends check the token, so a worker that lost its lease can no longer write to the run's log.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from runrelay.server import lua
from runrelay.server.keys import RedisKeys

_FENCE_TTL_S = 30 * 24 * 3600


@dataclass(frozen=True)
class Lease:
    run_id: str
    token: str


class Leases:
    def __init__(self, redis: Redis, keys: RedisKeys, ttl_s: float) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_ms = int(ttl_s * 1000)
        self._acquire = lua.script(redis, "acquire_lease")
        self._release = lua.script(redis, "release_lease")

    async def acquire(self, run_id: str) -> Lease | None:
        """Take the run's lease, or None while another holder's lease is alive."""
        keys, args = self.acquire_call(run_id)
        return self.taken(run_id, await self._acquire(keys=keys, args=args))

    def acquire_call(self, run_id: str) -> tuple[list[str], list[Any]]:
        """`acquire_lease.lua`'s KEYS and ARGV (also run by `start_run.lua`: worker/starts.py)."""
        keys = [self.keys.fence(run_id), self.keys.lease(run_id)]
        return keys, [secrets.token_hex(6), self.ttl_ms, _FENCE_TTL_S]

    @staticmethod
    def taken(run_id: str, token: Any) -> Lease | None:
        """The lease `acquire_lease.lua` replied (its token), or None (another holder's)."""
        return Lease(run_id, token.decode()) if token is not None else None

    async def release(self, lease: Lease) -> None:
        await self._release(keys=[self.keys.lease(lease.run_id)], args=[lease.token])
