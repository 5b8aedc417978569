"""Self-resuming event streams.

An `EventStream` reads a run's Server-Sent Events and survives the connection: after a drop, or
a clean end without `done`, it reconnects to `GET /v1/runs/{id}/events` with `Last-Event-ID` set
to the last seq it delivered, after a jittered backoff. Attempts are bounded
(`max_reconnects` in a row without progress; any new event resets the count). An event is never
delivered twice: seqs at or below the last one are skipped. If the run id is not known yet (the
create request itself failed), the create is sent again with the same idempotency key, which
yields the same run.

The same object iterates synchronously (`for`) and asynchronously (`async for`).

`EventStream.output` is the run's text so far. After a worker crash the resumed run appends a
`metadata` event `{"superseded": {"from_seq", "to_seq"}}`: the text deltas in that range were
replaced by what the resumed run says next, so `output` leaves them out.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Generic, TypeVar

import httpx
from httpx_sse import EventSource, ServerSentEvent, SSEError

from runrelay._backoff import backoff_s
from runrelay.client._transport import ClientOptions, Request, is_retryable
from runrelay.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    status_error,
    transport_error,
)

T = TypeVar("T")
DEFAULT_MAX_RECONNECTS = 5
_MAX_BACKOFF_S = 5.0


class _Cursor:
    """Where a stream is: the run, the last seq delivered, and the reconnect budget."""

    def __init__(
        self,
        create: Request | None,
        run_id: str | None,
        after: int,
        stop_types: frozenset[str],
        max_reconnects: int,
    ) -> None:
        if create is None and run_id is None:
            raise ValueError("a stream needs a create request or a run id")
        self.create = create
        self.run_id = run_id
        self.last_seq = after
        self.stop_types = stop_types
        self.max_reconnects = max_reconnects
        self.finished = False
        self.deltas: list[tuple[int, str]] = []
        self._failures = 0
        self._progress = False

    def request(self, timeout: float) -> Request:
        if self.run_id is None:
            assert self.create is not None  # checked in __init__
            return self.create
        headers = {"Accept": "text/event-stream"}
        if self.last_seq:
            headers["Last-Event-ID"] = str(self.last_seq)
        return Request("GET", f"/v1/runs/{self.run_id}/events", headers=headers, timeout=timeout)

    def opened(self, response: httpx.Response) -> None:
        self.run_id = self.run_id or response.headers.get("x-run-id")

    def accept(self, sse: ServerSentEvent) -> dict[str, Any] | None:
        """The event to deliver, or None for keep-alives and events already delivered."""
        if not sse.data:
            return None  # httpx-sse reports a `: ping` comment as an event without data
        try:
            event: dict[str, Any] = json.loads(sse.data)
            seq = int(event.get("seq", sse.id or 0))
        except (ValueError, TypeError, AttributeError) as exc:
            raise APIError(f"malformed event {sse.id!r} in the stream: {sse.data[:200]!r}") from exc
        if seq <= self.last_seq:
            return None
        self.last_seq = seq
        self.run_id = self.run_id or event.get("run_id")
        self._progress = True
        self._accumulate(seq, event)
        if event.get("type") in self.stop_types:
            self.finished = True
        return event

    def _accumulate(self, seq: int, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "output_text_delta" and isinstance(event.get("delta"), str):
            self.deltas.append((seq, event["delta"]))
        elif kind == "metadata" and isinstance(event.get("superseded"), dict):
            span = event["superseded"]
            low, high = int(span.get("from_seq", 0)), int(span.get("to_seq", -1))
            self.deltas = [(n, text) for n, text in self.deltas if not low <= n <= high]

    def backoff(self, error: APIError) -> float:
        """Seconds to wait before reconnecting; raises once the attempts are used up."""
        if self._progress:
            self._failures, self._progress = 0, False
        self._failures += 1
        if not is_retryable(error):
            raise error
        if self.run_id is None and isinstance(error, APIConnectionError) and error.connect_failed:
            raise error  # nothing was created and the server is not there: say so at once
        if self._failures > self.max_reconnects and isinstance(error, APIStatusError):
            raise error  # the server answered, and kept refusing: say what it said
        if self._failures > self.max_reconnects:
            raise APIConnectionError(
                f"the stream of run {self.run_id or '(not created)'} could not be resumed after "
                f"{self.max_reconnects} attempts (last event id {self.last_seq}): {error}",
                request=error.request,
                last_event_id=str(self.last_seq) if self.last_seq else None,
            ) from error
        if isinstance(error, APIStatusError) and error.retry_after is not None:
            return min(error.retry_after, 60.0)
        return backoff_s(self._failures - 1, base_s=0.2, cap_s=_MAX_BACKOFF_S)


_EOF = "the stream ended before its `done` event"


class EventStream(Generic[T]):
    """A run's events converted to `T`, resumed across dropped connections.

    `run_id` and `last_event_id` (the seq of the last event delivered, as the SSE id) are known
    while iterating and after; pass `last_event_id` back to resume later.
    """

    def __init__(
        self,
        options: ClientOptions,
        convert: Callable[[dict[str, Any]], T | None],
        *,
        create: Request | None = None,
        run_id: str | None = None,
        after: int = 0,
        stop_types: frozenset[str] = frozenset({"done"}),
        max_reconnects: int = DEFAULT_MAX_RECONNECTS,
        sync_http: httpx.Client | None = None,
        async_http: httpx.AsyncClient | None = None,
    ) -> None:
        self._options = options
        self._convert = convert
        self._cursor = _Cursor(create, run_id, after, stop_types, max_reconnects)
        self._sync_http = sync_http
        self._async_http = async_http

    @property
    def run_id(self) -> str | None:
        return self._cursor.run_id

    @property
    def last_event_id(self) -> str | None:
        return str(self._cursor.last_seq) if self._cursor.last_seq else None

    @property
    def output(self) -> str:
        """The text delivered so far, without deltas a resumed run superseded."""
        return "".join(text for _, text in self._cursor.deltas)

    # Synchronous -----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[T]:
        if self._sync_http is None:
            raise TypeError("this client is asynchronous: use `async for`")
        return self._iterate(self._sync_http)

    def _iterate(self, http: httpx.Client) -> Iterator[T]:
        cursor = self._cursor
        while not cursor.finished:
            request = cursor.request(self._options.timeout)
            try:
                with http.stream(
                    request.method, request.path, **request.kwargs(self._options.timeout)
                ) as response:
                    if response.status_code == 204:  # the run ended before the cursor: all seen
                        cursor.finished = True
                        return
                    if not response.is_success:
                        response.read()
                        error: APIError = status_error(response)
                    else:
                        cursor.opened(response)
                        for sse in EventSource(response).iter_sse():
                            event = cursor.accept(sse)
                            item = self._convert(event) if event is not None else None
                            if item is not None:
                                yield item
                            if cursor.finished:
                                return
                        error = APIConnectionError(_EOF, request=response.request)
            except httpx.TransportError as exc:
                error = transport_error(exc)
            except SSEError as exc:
                raise APIError(f"the response is not an event stream: {exc}") from exc
            time.sleep(cursor.backoff(error))

    # Asynchronous ----------------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[T]:
        return self._aiterate()

    async def _aiterate(self) -> AsyncIterator[T]:
        if self._async_http is not None:
            async for item in self._aiterate_with(self._async_http):
                yield item
            return
        async with self._options.async_http() as http:  # a sync client streaming with `async for`
            async for item in self._aiterate_with(http):
                yield item

    async def _aiterate_with(self, http: httpx.AsyncClient) -> AsyncIterator[T]:
        cursor = self._cursor
        while not cursor.finished:
            request = cursor.request(self._options.timeout)
            try:
                async with http.stream(
                    request.method, request.path, **request.kwargs(self._options.timeout)
                ) as response:
                    if response.status_code == 204:  # the run ended before the cursor: all seen
                        cursor.finished = True
                        return
                    if not response.is_success:
                        await response.aread()
                        error: APIError = status_error(response)
                    else:
                        cursor.opened(response)
                        async for sse in EventSource(response).aiter_sse():
                            event = cursor.accept(sse)
                            item = self._convert(event) if event is not None else None
                            if item is not None:
                                yield item
                            if cursor.finished:
                                return
                        error = APIConnectionError(_EOF, request=response.request)
            except httpx.TransportError as exc:
                error = transport_error(exc)
            except SSEError as exc:
                raise APIError(f"the response is not an event stream: {exc}") from exc
            await asyncio.sleep(cursor.backoff(error))
