"""The bench's HTTP clients, as `throughput.py`'s runs use them: a POST, and a run's events as
Server-Sent Events, from `raw` (the default: HTTP/1.1 on asyncio's transports, parsed by
httptools, uvicorn's C parser), `aiohttp` (a C parser too, with a session, a connection pool and
a response object per request) or `httpx` (what the SDK uses, with httpx-sse's decoder). The SSE
body is parsed a chunk at a time by `SSEParser` (but with httpx). On a small machine the client's
own CPU competes with the server's, so what it spends per run is kept low."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import aiohttp
import httptools
import httpx
import orjson
from bench_stack import BenchError, Stack
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


class RawClient:
    """HTTP/1.1 on asyncio's transports, one request at a time per connection, with the
    responses parsed by httptools (uvicorn's parser): what `one_run` needs (a POST with a JSON
    body, a response's status, headers and body, an SSE body as it arrives) and nothing else,
    about half of aiohttp's CPU per run. Connections are kept alive and reused (last in, first
    out); one whose response was not read to its end, or that the server will close, is closed."""

    def __init__(self, stack: Stack, concurrency: int) -> None:
        host, _, port = stack.base_url.removeprefix("http://").rpartition(":")
        self._host, self._port = host, int(port)
        self._head = (f"Host: {host}:{port}\r\nAuthorization: Bearer {stack.api_key}\r\n"
                      "Accept-Encoding: identity\r\n").encode()
        self._idle: list[_Connection] = []

    async def _connection(self) -> _Connection:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_Connection, self._host, self._port)
        return conn

    def _done_with(self, conn: _Connection) -> None:
        if conn.reusable():
            self._idle.append(conn)
        else:
            conn.close()

    def _request(self, method: str, path: str, body: dict[str, Any] | None,
                 accept: bytes = b"") -> bytes:
        if body is None:
            return b"%s %s HTTP/1.1\r\n%s%s\r\n" % (method.encode(), path.encode(), self._head,
                                                     accept)
        data = orjson.dumps(body)
        return b"%s %s HTTP/1.1\r\n%s%sContent-Type: application/json\r\nContent-Length: %d" \
               b"\r\n\r\n%s" % (method.encode(), path.encode(), self._head, accept, len(data),
                                  data)

    async def post(self, path: str, body: dict[str, Any]) -> Response:
        conn = await self._connection()
        try:
            await conn.send(self._request("POST", path, body))
            chunks = [chunk async for chunk in conn.body()]
        except BaseException:
            conn.close()
            raise
        self._done_with(conn)
        return Response(conn.status, conn.headers, b"".join(chunks))

    @contextlib.asynccontextmanager
    async def sse(self, method: str, path: str,
                  body: dict[str, Any] | None = None) -> AsyncIterator[EventSource]:
        conn = await self._connection()
        try:
            await conn.send(self._request(method, path, body, b"Accept: text/event-stream\r\n"))
            await conn.head()  # as aiohttp's and httpx's: entered once the head is in
            yield _RawEvents(conn)
        except BaseException:
            conn.close()
            raise
        self._done_with(conn)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class _Headers(dict[str, str]):
    """A response's headers, looked up whatever the case of the name (as aiohttp's and httpx's
    are); one value per name (the bench reads none that repeats)."""

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(name.lower(), default)


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: a request written, then its response's head and body chunks as
    httptools parses them (chunked encoding undone)."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[None] | None = None
        self._chunks: list[bytes] = []
        self._failure: BaseException | None = None
        self.closed = False
        self.status = 0
        self.headers = _Headers()
        self._head_done = self._complete = False
        self._keep_alive = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._failure = BenchError(f"unreadable HTTP response: {exc}")
            self.close()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self._complete and self._failure is None:
            self._failure = ConnectionError(f"the server closed the connection ({exc})")
        self._wake()

    # httptools' callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode().lower()] = value.decode()

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self._keep_alive = self._parser.should_keep_alive()
        self._head_done = True

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        self._complete = True

    # the client's side

    async def send(self, request: bytes) -> None:
        """Write a request; its response is read with `head` and `body`."""
        if self.closed or self._transport is None:
            raise ConnectionError("the connection is closed")
        self._parser = httptools.HttpResponseParser(self)
        self.status, self.headers, self._chunks = 0, _Headers(), []
        self._head_done = self._complete = False
        self._transport.write(request)

    async def head(self) -> None:
        while not self._head_done:
            await self._wait()

    async def body(self) -> AsyncIterator[bytes]:
        """The response's body as it arrives (after its head), to its end."""
        while True:
            if self._chunks:
                chunks, self._chunks = self._chunks, []
                yield chunks[0] if len(chunks) == 1 else b"".join(chunks)
            elif self._complete:
                return
            else:
                await self._wait()

    def reusable(self) -> bool:
        return self._complete and self._keep_alive and not self.closed

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    async def _wait(self) -> None:
        """Until the parser has more (or the connection failed: raised, once what came before
        the failure was read)."""
        if self._failure is not None:
            raise self._failure
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _RawEvents:
    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self.response = Response(conn.status, conn.headers)

    async def events(self) -> AsyncIterator[tuple[str, str | bytes]]:
        conn = self._conn
        if conn.status >= 300:
            self.response.body = b"".join([chunk async for chunk in conn.body()])
            return
        parser = SSEParser()
        async for chunk in conn.body():
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
    "raw": RawClient, "aiohttp": AiohttpClient, "httpx": HttpxClient}
