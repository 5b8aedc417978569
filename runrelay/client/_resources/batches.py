"""`client.batches`: submit a JSONL file (or any iterable of run requests) as a batch, follow it,
read its results and errors, cancel it.

    batch = client.batches.create("requests.jsonl", agent="credit-analyst")
    batch = client.batches.wait(batch.id, progress=True)
    for row in client.batches.results(batch.id):
        print(row.custom_id, row.output)

The upload is streamed (a 100,000-line file is never read whole) and, unlike other creates, not
retried: a batch has no idempotency key, so a retry could submit it twice.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from runrelay.batch_types import BatchError, BatchList, BatchObject, BatchResult
from runrelay.client._resources.base import Resource
from runrelay.client._transport import Request
from runrelay.errors import status_error, transport_error

Source = str | os.PathLike[str] | Iterable[dict[str, Any]]
AsyncSource = Source | AsyncIterable[dict[str, Any]]
Progress = bool | Callable[[BatchObject], None]
Row = TypeVar("Row", bound=BaseModel)
_CHUNK = 64 * 1024
_UPLOAD_TIMEOUT = httpx.Timeout(60.0, write=600.0, read=600.0)


def _params(options: dict[str, Any]) -> dict[str, str]:
    """The batch options as the JSONL upload's query string (objects as JSON)."""
    params = {}
    for name, value in options.items():
        if value is None:
            continue
        params[name] = json.dumps(value) if isinstance(value, dict) else str(value)
    return params


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            yield chunk


def _line_chunks(requests: Iterable[dict[str, Any]]) -> Iterator[bytes]:
    buffer: list[str] = []
    size = 0
    for request in requests:
        line = json.dumps(request, ensure_ascii=False) + "\n"
        buffer.append(line)
        size += len(line)
        if size >= _CHUNK:
            yield "".join(buffer).encode()
            buffer, size = [], 0
    if buffer:
        yield "".join(buffer).encode()


def _chunks(source: Source) -> Iterator[bytes]:
    if isinstance(source, str | os.PathLike):
        return _file_chunks(Path(source))
    return _line_chunks(source)


async def _achunks(source: AsyncSource) -> AsyncIterator[bytes]:
    if isinstance(source, AsyncIterable):
        buffer: list[dict[str, Any]] = []
        async for request in source:
            buffer.append(request)
            if len(buffer) >= 256:
                for chunk in _line_chunks(buffer):
                    yield chunk
                buffer = []
        for chunk in _line_chunks(buffer):
            yield chunk
        return
    for chunk in _chunks(source):  # a file read is quick next to the upload
        yield chunk


def _upload_headers() -> dict[str, str]:
    return {"Content-Type": "application/jsonl"}


class ProgressLine:
    """A one-line, tqdm-style progress display on stderr: done/total, rate, ETA, failures."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self.first_done: int | None = None

    def __call__(self, batch: BatchObject) -> None:
        counts = batch.request_counts
        done, total = counts.done, counts.total
        if self.first_done is None:
            self.first_done = done
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = (done - self.first_done) / elapsed
        eta = f"{(total - done) / rate:.0f}s" if rate > 0 else "?"
        failures = counts.failed + counts.cancelled + counts.expired
        width = 30
        filled = width * done // total if total else width
        bar = "#" * filled + "-" * (width - filled)
        self.stream.write(
            f"\r{batch.id} [{bar}] {done}/{total} {rate:.1f}/s ETA {eta} "
            f"failed {failures} running {counts.running} {batch.status.value}   "
        )
        if batch.status.is_terminal:
            self.stream.write("\n")
        self.stream.flush()


def _progress(progress: Progress) -> Callable[[BatchObject], None] | None:
    if progress is True:
        return ProgressLine()
    if callable(progress):
        return progress
    return None


def _list_request(limit: int, cursor: str | None) -> Request:
    return Request("GET", "/v1/batches", params={"limit": limit, "cursor": cursor})


def _options(**options: Any) -> dict[str, Any]:
    return {k: v for k, v in options.items() if v is not None}


class Batches(Resource):
    """`client.batches` of the sync `Client`."""

    def create(
        self,
        source: Source,
        *,
        agent: str | None = None,
        completion_window: str | None = None,
        on_invalid: str | None = None,
        metadata: dict[str, Any] | None = None,
        model_params: dict[str, Any] | None = None,
        webhook: str | None = None,
        **options: Any,
    ) -> BatchObject:
        """Submit `source` — a JSONL file's path, or an iterable of run requests, each with a
        `custom_id` — as a batch; the other arguments are the batch's defaults and options.
        A batch with bad lines raises `UnprocessableEntityError` naming each (see `.body`)."""
        params = _params(
            _options(
                agent=agent,
                completion_window=completion_window,
                on_invalid=on_invalid,
                metadata=metadata,
                model_params=model_params,
                webhook=webhook,
                **options,
            )
        )
        http = self._transport.http
        try:
            response = http.post(
                "/v1/batches",
                content=_chunks(source),
                params=params,
                headers=_upload_headers(),
                timeout=_UPLOAD_TIMEOUT,
            )
        except httpx.TransportError as exc:
            raise transport_error(exc) from exc
        if not response.is_success:
            raise status_error(response)
        return BatchObject.model_validate(response.json())

    def get(self, batch_id: str) -> BatchObject:
        response = self._transport.send(Request("GET", f"/v1/batches/{batch_id}"))
        return BatchObject.model_validate(response.json())

    def list(self, *, limit: int = 20, cursor: str | None = None) -> BatchList:
        return BatchList.model_validate(self._transport.send(_list_request(limit, cursor)).json())

    def cancel(self, batch_id: str) -> BatchObject:
        """Lines not started never start, running ones are cancelled; results keep the rest."""
        response = self._transport.send(Request("POST", f"/v1/batches/{batch_id}/cancel"))
        return BatchObject.model_validate(response.json())

    def results(self, batch_id: str) -> Iterator[BatchResult]:
        """The completed lines so far, in line order, streamed."""
        return self._rows(f"/v1/batches/{batch_id}/results", BatchResult)

    def errors(self, batch_id: str) -> Iterator[BatchError]:
        """The failed, cancelled and expired lines so far, in line order, streamed."""
        return self._rows(f"/v1/batches/{batch_id}/errors", BatchError)

    def _rows(self, path: str, model: type[Row]) -> Iterator[Row]:
        try:
            with self._transport.http.stream("GET", path) as response:
                if not response.is_success:
                    response.read()
                    raise status_error(response)
                for line in response.iter_lines():
                    if line.strip():
                        yield model.model_validate_json(line)
        except httpx.TransportError as exc:
            raise transport_error(exc) from exc

    def wait(
        self,
        batch_id: str,
        *,
        progress: Progress = False,
        poll_s: float = 1.0,
        timeout_s: float | None = None,
    ) -> BatchObject:
        """Poll until the batch ended; `progress=True` draws a progress line on stderr, or pass
        a callable to be given the batch at each poll. past `timeout_s` raises `TimeoutError`."""
        show = _progress(progress)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            batch = self.get(batch_id)
            if show is not None:
                show(batch)
            if batch.status.is_terminal:
                return batch
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"batch {batch_id} is still {batch.status.value}")
            time.sleep(poll_s)


class AsyncBatches(Resource):
    """`client.batches` of `AsyncClient`."""

    async def create(
        self,
        source: AsyncSource,
        *,
        agent: str | None = None,
        completion_window: str | None = None,
        on_invalid: str | None = None,
        metadata: dict[str, Any] | None = None,
        model_params: dict[str, Any] | None = None,
        webhook: str | None = None,
        **options: Any,
    ) -> BatchObject:
        params = _params(
            _options(
                agent=agent,
                completion_window=completion_window,
                on_invalid=on_invalid,
                metadata=metadata,
                model_params=model_params,
                webhook=webhook,
                **options,
            )
        )
        async with self._atransport() as transport:
            try:
                response = await transport.http.post(
                    "/v1/batches",
                    content=_achunks(source),
                    params=params,
                    headers=_upload_headers(),
                    timeout=_UPLOAD_TIMEOUT,
                )
            except httpx.TransportError as exc:
                raise transport_error(exc) from exc
        if not response.is_success:
            raise status_error(response)
        return BatchObject.model_validate(response.json())

    async def get(self, batch_id: str) -> BatchObject:
        async with self._atransport() as transport:
            response = await transport.send(Request("GET", f"/v1/batches/{batch_id}"))
        return BatchObject.model_validate(response.json())

    async def list(self, *, limit: int = 20, cursor: str | None = None) -> BatchList:
        async with self._atransport() as transport:
            response = await transport.send(_list_request(limit, cursor))
        return BatchList.model_validate(response.json())

    async def cancel(self, batch_id: str) -> BatchObject:
        async with self._atransport() as transport:
            response = await transport.send(Request("POST", f"/v1/batches/{batch_id}/cancel"))
        return BatchObject.model_validate(response.json())

    def results(self, batch_id: str) -> AsyncIterator[BatchResult]:
        return self._rows(f"/v1/batches/{batch_id}/results", BatchResult)

    def errors(self, batch_id: str) -> AsyncIterator[BatchError]:
        return self._rows(f"/v1/batches/{batch_id}/errors", BatchError)

    async def _rows(self, path: str, model: type[Row]) -> AsyncIterator[Row]:
        async with self._atransport() as transport:
            try:
                async with transport.http.stream("GET", path) as response:
                    if not response.is_success:
                        await response.aread()
                        raise status_error(response)
                    async for line in response.aiter_lines():
                        if line.strip():
                            yield model.model_validate_json(line)
            except httpx.TransportError as exc:
                raise transport_error(exc) from exc

    async def wait(
        self,
        batch_id: str,
        *,
        progress: Progress = False,
        poll_s: float = 1.0,
        timeout_s: float | None = None,
    ) -> BatchObject:
        show = _progress(progress)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            batch = await self.get(batch_id)
            if show is not None:
                show(batch)
            if batch.status.is_terminal:
                return batch
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"batch {batch_id} is still {batch.status.value}")
            await asyncio.sleep(poll_s)
