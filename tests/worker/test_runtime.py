"""The worker's runtime: one event loop in a thread of its own, closed with what lives on it."""

from __future__ import annotations

import threading

from runrelay.server.settings import Settings
from worker.runtime import AsyncRuntime


def test_closing_the_runtime_closes_what_was_registered_then_its_loop_in_its_thread(
    settings: Settings,
) -> None:
    runtime = AsyncRuntime(settings.model_copy(update={"sweeper_enabled": False}))
    closed: list[str] = []

    async def closer() -> None:
        closed.append(threading.current_thread().name)

    runtime.close_with(closer)
    runtime.close()
    assert closed == ["runrelay-asyncio"]  # awaited on the loop, before it stopped
    assert not runtime._thread.is_alive()
    assert runtime._loop.is_closed()  # by its own thread, where it ran
