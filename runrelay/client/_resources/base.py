"""What every SDK resource shares: its client's options and transports, how a create request
carries its idempotency key, and how a stream is opened."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from runrelay.client._streaming import EventStream
from runrelay.client._transport import (
    WAIT_READ_TIMEOUT_S,
    AsyncTransport,
    ClientOptions,
    Request,
    SyncTransport,
    new_idempotency_key,
)

Event = dict[str, Any]


def create_request(
    path: str, body: dict[str, Any], key: str | None, options: ClientOptions
) -> Request:
    """A create, with its idempotency key fixed now so every retry of it carries the same one;
    `/wait` may take as long as the run."""
    timeout = None
    if path.endswith("/wait"):
        timeout = httpx.Timeout(options.timeout, read=max(options.timeout, WAIT_READ_TIMEOUT_S))
    headers = {"Idempotency-Key": key or new_idempotency_key()}
    return Request("POST", path, json=body, headers=headers, timeout=timeout)


def raw(event: Event) -> Event:
    return event


class Resource:
    """A resource of a `Client` (sync transport; async calls open a short-lived async one) or of
    an `AsyncClient` (async transport only)."""

    def __init__(
        self,
        options: ClientOptions,
        sync: SyncTransport | None,
        async_: AsyncTransport | None,
    ) -> None:
        self._options = options
        self._sync = sync
        self._async = async_

    @property
    def _transport(self) -> SyncTransport:
        if self._sync is None:
            raise TypeError("this resource belongs to an AsyncClient: await its methods")
        return self._sync

    @asynccontextmanager
    async def _atransport(self) -> AsyncIterator[AsyncTransport]:
        if self._async is not None:
            yield self._async
            return
        async with self._options.async_http() as http:  # async calls on a sync Client
            yield AsyncTransport(self._options, http)

    def _stream(self, convert: Any, **kwargs: Any) -> EventStream[Any]:
        return EventStream(
            self._options,
            convert,
            sync_http=self._sync.http if self._sync else None,
            async_http=self._async.http if self._async else None,
            **kwargs,
        )
