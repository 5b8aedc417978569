"""The Lua scripts runrelay runs in Redis: one `.lua` file each, whose header lists its KEYS and
ARGV. `script(redis, "name")` registers `name.lua` on a client (EVALSHA, loaded on first use).

A script may call others, to do in one round trip what they do one after the other:
`script(redis, "name", uses=("other",))` puts `other.lua` before `name.lua` as a local function
`other(KEYS, ARGV)`, which runs it on the tables it is given and returns what it returns."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import NoScriptError

_DIR = Path(__file__).parent


@cache
def source(name: str, uses: tuple[str, ...] = ()) -> str:
    """`name.lua`, after the scripts it `uses` as local functions."""
    functions = [f"local function {used}(KEYS, ARGV)\n{source(used)}\nend\n" for used in uses]
    return "".join(functions) + (_DIR / f"{name}.lua").read_text()


def script(redis: Any, name: str, uses: tuple[str, ...] = ()) -> Any:
    """`name.lua` registered on `redis` (a sync or an asyncio client), with the scripts it
    `uses` (see above)."""
    if isinstance(redis, AsyncRedis):
        return AsyncScript(redis, source(name, uses))
    return redis.register_script(source(name, uses))


class AsyncScript:
    """redis-py's `AsyncScript` without its per-call `isinstance(client, Pipeline)`: that goes
    through `typing.Protocol`'s instance check (the commands' base class), a few microseconds
    on every call of the hot path's scripts. No pipelines here: every call is EVALSHA on the
    client (which `PipelinedRedis` batches), the source loaded once if the server lacks it."""

    def __init__(self, redis: AsyncRedis, text: str) -> None:
        self.redis = redis
        self.script = text
        self.sha = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()

    async def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        try:
            return await self.redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:  # a new, restarted or flushed server: load it, then once again
            self.sha = await self.redis.script_load(self.script)
            return await self.redis.evalsha(self.sha, len(keys), *keys, *args)
