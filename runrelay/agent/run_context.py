"""What code running inside a run — a tool, a middleware — can add to the run's event log:
progress and other `custom` events, and follow-up suggestions.

    @tool
    def crunch(rows: int) -> dict:
        for done in range(0, rows, 1000):
            report_progress(f"{done}/{rows} rows", progress=done, total=rows)
        ...
        suggest("Show the outliers", "List the 10 largest outliers in the data")

Both work from async and sync tools (a sync tool runs in a thread); outside a run they do
nothing, so a tool stays callable as a plain function.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine
from contextvars import ContextVar
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from runrelay.agent.tools import current_tool_call_id
from runrelay.types import MAX_SUGGESTIONS

__all__ = ["Suggestion", "emit_custom", "report_progress", "suggest"]

log = logging.getLogger(__name__)

MAX_LABEL_CHARS = 40
# A sync tool waits at most this long for its event to be written before going on.
_THREAD_EMIT_TIMEOUT_S = 10.0

EmitFn = Callable[[Any, dict[str, Any]], Coroutine[Any, Any, None]]


class Suggestion(BaseModel):
    """A follow-up the user can click: `label` is shown, `message` is sent."""

    model_config = ConfigDict(extra="forbid")
    label: str = Field(min_length=1, max_length=MAX_LABEL_CHARS)
    message: str = Field(min_length=1, max_length=4000)


class RunEvents:
    """The current run's sink for events raised by tools and middleware (set by the loop)."""

    def __init__(self, emit: EmitFn, suggestions: list[dict[str, Any]]) -> None:
        self._emit = emit
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._pending: set[asyncio.Future[None]] = set()
        self.suggestions = suggestions
        # Set when the run returned: a sync tool still running in its thread after a timeout
        # must not add events to a run that has moved on.
        self.closed = False

    def emit(self, type: str, data: dict[str, Any]) -> None:
        if self.closed:
            log.debug("event %s dropped: its run already returned", type)
            return
        if threading.get_ident() == self._loop_thread:
            task = self._loop.create_task(self._emit(type, data))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
            return
        future = asyncio.run_coroutine_threadsafe(self._emit(type, data), self._loop)
        future.result(timeout=_THREAD_EMIT_TIMEOUT_S)

    async def flush(self) -> None:
        """Wait for events emitted from the loop's thread (they are written in order)."""
        while self._pending:
            await asyncio.gather(*list(self._pending))

    def suggest(self, item: Suggestion) -> None:
        if any(known["label"] == item.label for known in self.suggestions):
            return  # the same follow-up offered twice (a tool called twice) is shown once
        if len(self.suggestions) >= MAX_SUGGESTIONS:
            log.warning("suggestion %r dropped: at most %d per run", item.label, MAX_SUGGESTIONS)
            return
        self.suggestions.append(item.model_dump())


current_run_events: ContextVar[RunEvents | None] = ContextVar("current_run_events", default=None)


def emit_custom(event: str, data: Any = None) -> None:
    """Append a `custom` event `{"event": event, "data": data}` to the current run's log."""
    sink = current_run_events.get()
    if sink is None:
        return
    payload: dict[str, Any] = {"event": event, "data": data}
    call_id = current_tool_call_id.get()
    if call_id is not None:
        payload["tool_call_id"] = call_id
    sink.emit("custom", payload)


def report_progress(
    message: str | None = None,
    *,
    progress: float | None = None,
    total: float | None = None,
    **details: Any,
) -> None:
    """A `custom` event named `progress`: what a long tool is doing and how far it is."""
    data = {"message": message, "progress": progress, "total": total, **details}
    emit_custom("progress", {key: value for key, value in data.items() if value is not None})


def suggest(label: str, message: str | None = None) -> None:
    """Offer a follow-up prompt (label ≤ 40 characters; at most 6 per run), sent in the run's
    `suggestions` event after its answer. Raises ValueError for an invalid suggestion."""
    item = Suggestion(label=label, message=message or label)
    sink = current_run_events.get()
    if sink is not None:
        sink.suggest(item)
