"""How the shim is served: uvicorn's httptools protocol with a request-header read timeout.

uvicorn times out idle keep-alive connections and nothing else: a client that trickles its
request headers one byte every few seconds holds a connection (and a file descriptor) for as
long as it likes. `HeaderTimeoutProtocol` gives every request `header_read_timeout_s` from its
first byte (a new connection: from its opening) to its last header line, then answers 408 and
closes; a new connection that sent nothing at all by then is closed without an answer (a
client's idle pooled connection must not read a 408 as the answer to its next request). Idle
keep-alive stays uvicorn's `timeout_keep_alive`; slow bodies are `BodyLimitMiddleware`'s
(`RUNRELAY_BODY_READ_TIMEOUT_S`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import secrets
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["HeaderTimeoutProtocol", "http_protocol"]


class HeaderTimeoutProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, header_read_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_read_timeout_s = header_read_timeout_s
        self._header_timer: asyncio.TimerHandle | None = None
        self._reading_headers = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # (uvicorn's own signature narrows asyncio's BaseTransport the same way)
        super().connection_made(transport)
        self._start_header_timer()  # a new connection must send its first request in time

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_headers = True
        self._start_header_timer()

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._stop_header_timer()
        super().on_headers_complete()

    def _start_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(
                self.header_read_timeout_s, self._headers_too_slow
            )

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined request trickles in behind a response still being sent (an SSE
            # stream): that response goes on, and the connection closes after it.
            self.cycle.keep_alive = False
            return
        if self._reading_headers:
            self.transport.write(_answer_408(self.header_read_timeout_s))
        self.transport.close()


def _answer_408(timeout_s: float) -> bytes:
    request_id = f"req_{secrets.token_hex(12)}"
    message = (
        f"the request headers did not arrive within {timeout_s:g} s "
        "(RUNRELAY_HEADER_READ_TIMEOUT_S)"
    )
    body = json.dumps(
        {
            "error": {
                "type": "invalid_request_error",
                "code": "request_timeout",
                "message": message,
                "param": None,
                "request_id": request_id,
            }
        }
    ).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        f"x-request-id: {request_id}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def http_protocol(header_read_timeout_s: float) -> type[asyncio.Protocol]:
    """What to give uvicorn as `http=`. uvicorn only calls it (with its config and state) to
    make each connection's protocol, so a partial of the class does; unlike a class made here,
    it pickles by reference, as `uvicorn.run(..., workers=N)` needs for its worker processes."""
    factory = functools.partial(HeaderTimeoutProtocol, header_read_timeout_s=header_read_timeout_s)
    return cast("type[asyncio.Protocol]", factory)
