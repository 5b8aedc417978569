"""The bench's HTTP clients, as `throughput.py`'s runs use them: a POST, and a run's events as
Server-Sent Events, from `aiohttp` (the default: a C parser, and the SSE body parsed a chunk at a
time by `SSEParser`) or `httpx` (what the SDK uses, with httpx-sse's decoder). On a small machine
the client's own CPU competes with the server's, so what it spends per run is kept low."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import aiohttp
import httpx
from bench_stack import Stack
from httpx_sse import aconnect_sse


class Response:
    """A response as `one_run` needs it, whichever HTTP client made it."""

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes = b"") -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def text(self) -> str:
        return self.body[:200].decode(errors="replace")


class EventSource(Protocol):
    response: Response

    def events(self) -> AsyncIterator[tuple[str, str | bytes]]:
        """(id, data) of each event; keep-alive comments are left out."""
        ...


class Client(Protocol):
    """The bench's HTTP client: `aiohttp` (default, a C parser: the client's own CPU competes
    with the server's on a small machine) or `httpx` (what the SDK uses)."""

    async def post(self, path: str, body: dict[str, Any]) -> Response: ...

    def sse(self, method: str, path: str,
            body: dict[str, Any] | None = None) -> AbstractAsyncContextManager[EventSource]: ...

    async def aclose(self) -> None: ...


class HttpxClient:
    def __init__(self, stack: Stack, concurrency: int) -> None:
        limits = httpx.Limits(max_connections=2 * concurrency + 10,
                              max_keepalive_connections=2 * concurrency + 10)
        self._http = httpx.AsyncClient(base_url=stack.base_url, limits=limits,
                                       headers={"Authorization": f"Bearer {stack.api_key}"},
                                       timeout=httpx.Timeout(60.0, connect=10.0))

    async def post(self, path: str, body: dict[str, Any]) -> Response:
        got = await self._http.post(path, json=body)
        return Response(got.status_code, got.headers, got.content)

    @contextlib.asynccontextmanager
    async def sse(self, method: str, path: str,
                  body: dict[str, Any] | None = None) -> AsyncIterator[EventSource]:
        async with aconnect_sse(self._http, method, path, json=body) as source:
            yield _HttpxEvents(source)

    async def aclose(self) -> None:
        await self._http.aclose()


class _HttpxEvents:
    def __init__(self, source: Any) -> None:
        self._source = source
        self.response = Response(source.response.status_code, source.response.headers)

    async def events(self) -> AsyncIterator[tuple[str, str | bytes]]:
        if self.response.status >= 300:
            self.response.body = await self._source.response.aread()
            return
        async for sse in self._source.aiter_sse():
            if sse.data:
                yield sse.id, sse.data


class AiohttpClient:
    def __init__(self, stack: Stack, concurrency: int) -> None:
        self._base = stack.base_url
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=2 * concurrency + 10),
            headers={"Authorization": f"Bearer {stack.api_key}"},
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10.0, sock_read=60.0))

    async def post(self, path: str, body: dict[str, Any]) -> Response:
        async with self._http.post(self._base + path, json=body) as got:
            return Response(got.status, got.headers, await got.read())

    @contextlib.asynccontextmanager
    async def sse(self, method: str, path: str,
                  body: dict[str, Any] | None = None) -> AsyncIterator[EventSource]:
        headers = {"Accept": "text/event-stream"}
        async with self._http.request(method, self._base + path, json=body,
                                      headers=headers) as got:
            yield _AiohttpEvents(got)

    async def aclose(self) -> None:
        await self._http.close()


class _AiohttpEvents:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.response = Response(response.status, response.headers)

    async def events(self) -> AsyncIterator[tuple[str, str | bytes]]:
        if self.response.status >= 300:
            self.response.body = await self._response.read()
            return
        parser = SSEParser()
        async for chunk in self._response.content.iter_any():
            for event in parser.feed(chunk):
                yield event


_LINE_END = re.compile(rb"\r\n|\r|\n")


class SSEParser:
    """Server-Sent Events as the spec reads them (lines end in CRLF, LF or CR; `:` starts a
    comment; a blank line dispatches), fed the body's chunks as they arrive, several events at a
    time: the client's CPU competes with the server's on a small machine, and a line-by-line
    reader (aiohttp's `readline`, then a decoder per line) was half of it."""

    def __init__(self) -> None:
        self._rest = b""
        self._id = ""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        """(id, data) of each event the chunk completes that has data."""
        text = self._rest + chunk
        # A CR at the end may be the first half of a CRLF: keep it for the next chunk.
        held = 1 if text.endswith(b"\r") else 0
        lines = _LINE_END.split(text[: len(text) - held])
        self._rest = lines.pop() + text[len(text) - held :]
        events = []
        for line in lines:
            if not line:
                if self._data:
                    events.append((self._id, b"\n".join(self._data)))
                    self._data = []
                continue
            name, _, value = line.partition(b":")
            if value.startswith(b" "):
                value = value[1:]
            if name == b"data":
                self._data.append(value)
            elif name == b"id" and b"\0" not in value:
                self._id = value.decode()
        return events


CLIENTS: dict[str, Callable[[Stack, int], Client]] = {
    "aiohttp": AiohttpClient, "httpx": HttpxClient}
