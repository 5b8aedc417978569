"""The Lua scripts runrelay runs in Redis: one `.lua` file each, whose header lists its KEYS and
ARGV. `script(redis, "name")` registers `name.lua` on a client (EVALSHA, loaded on first use)."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

_DIR = Path(__file__).parent


@cache
def source(name: str) -> str:
    return (_DIR / f"{name}.lua").read_text()


def script(redis: Any, name: str) -> Any:
    """`name.lua` registered on `redis` (a sync or an asyncio client)."""
    return redis.register_script(source(name))
