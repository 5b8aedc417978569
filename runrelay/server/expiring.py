"""Answers trusted for a while: a map whose entries are fresh for `ttl_s` after they were read,
with a bound on its size (a process's caches of API keys and of admissions' reads)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Expiring(Generic[K, V]):
    """Key → (when it was read, monotonic; the answer). At most `max_size` entries: past it, the
    expired ones go first, then all of them."""

    def __init__(self, ttl_s: float, max_size: int) -> None:
        self.ttl_s = ttl_s
        self.max_size = max_size
        self._entries: dict[K, tuple[float, V]] = {}

    def fresh(self, key: K, now: float) -> tuple[float, V] | None:
        """`key`'s entry if it was read less than `ttl_s` before `now` (its answer may be None)."""
        entry = self._entries.get(key)
        if entry is None or now - entry[0] >= self.ttl_s:
            return None
        return entry

    def put(self, key: K, answer: V, read_at: float) -> None:
        if len(self._entries) >= self.max_size:
            self.keep(lambda entry: read_at - entry[0] < self.ttl_s)
            if len(self._entries) >= self.max_size:
                self._entries = {}
        self._entries[key] = (read_at, answer)

    def pop(self, key: K) -> None:
        self._entries.pop(key, None)

    def keep(self, wanted: Callable[[tuple[float, V]], bool]) -> None:
        """Drop the entries that are not `wanted`."""
        self._entries = {k: entry for k, entry in self._entries.items() if wanted(entry)}
