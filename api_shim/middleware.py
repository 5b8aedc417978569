"""ASGI middleware: request ids on every response, and the request body size limit.

Both are plain ASGI (not BaseHTTPMiddleware) so that SSE responses stream through untouched.
`RequestIdMiddleware`, the outermost of ours, also leaves two things in the scope for a long
response (an SSE stream with thousands of clients sends a chunk per event):

- `BODY_SEND`, the `send` it was given: once a response has started, its body chunks need none
  of the wrappers between there and the route (ours, Starlette's and FastAPI's only look at, or
  change, the start of the response). It is taken out of the scope when the layers return:
  the server's `send` is a method of the object that holds the scope, and left there it would
  tie the request's objects (its transport among them) into a cycle that only the garbage
  collector frees, a full collection for a stream that lived long enough to reach the old
  generation;
- `DETACH`, a function that takes the coroutine which sends the rest of the body: the route's
  coroutine and every layer above it up to this middleware may then return, and this
  middleware awaits that coroutine in their place. A waiting stream's writer then sits under
  three frames (uvicorn's, its proxy-headers layer, this one), not the twenty layers of
  middleware and routing with their requests, exit stacks and closures: about a third of the
  objects the garbage collector walked per open stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
from collections.abc import Awaitable, Coroutine, Mapping
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api_shim.errors import STORE_RETRY_AFTER_S, is_store_outage

log = logging.getLogger(__name__)
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,64}$")
BODY_SEND = "runrelay.body_send"
DETACH = "runrelay.detach"


def _error_body(status: int, code: str, message: str, request_id: str) -> bytes:
    kind = {503: "service_unavailable"}.get(
        status, "invalid_request_error" if status < 500 else "api_error"
    )
    return json.dumps(
        {
            "error": {
                "type": kind,
                "code": code,
                "message": message,
                "param": None,
                "request_id": request_id,
            }
        }
    ).encode()


async def _send_json(
    send: Send, status: int, body: bytes, request_id: str, *, retry_after: int | None = None
) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
    ]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestIdMiddleware:
    """Takes a caller's `X-Request-ID` when it is sane, else makes one; echoes it on the response.

    Also the last line of defence: an exception escaping the app becomes a JSON 500 that still
    carries the request id.
    """

    def __init__(self, app: ASGIApp, *, detach: bool = True) -> None:
        """`detach`: offer `DETACH` to the app (off: a response's body is sent under every
        layer, as when a layer must see the request end, e.g. OpenTelemetry's duration)."""
        self.app = app
        self.detach = detach

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rest = await self._respond(scope, receive, send)
        if rest is None:
            return
        # The body of a response that the layers below handed over (`DETACH`) and returned:
        # this frame holds no more than that coroutine while it sends.
        try:
            await rest
        except Exception:
            log.exception("unhandled error (request %s)", scope["state"]["request_id"])
            raise  # the response has started: the server closes the connection

    async def _respond(
        self, scope: Scope, receive: Receive, send: Send
    ) -> Coroutine[Any, Any, None] | None:
        """Calls the app; the coroutine sending the rest of the body, if it handed one over."""
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _VALID_REQUEST_ID.match(given) else f"req_{secrets.token_hex(12)}"
        scope.setdefault("state", {})["request_id"] = request_id
        scope[BODY_SEND] = send
        detached: list[Coroutine[Any, Any, None]] = []
        if self.detach:
            scope[DETACH] = detached.append
        started = False
        ours = set(scope)

        # A plain function returning `send`'s awaitable: every chunk of every SSE stream passes
        # here, so no coroutine of its own per message.
        def send_with_id(message: Message) -> Awaitable[None]:
            nonlocal started
            if not started and message["type"] == "http.response.start":
                started = True
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"x-request-id"]
                message["headers"] = [*headers, (b"x-request-id", request_id.encode())]
            return send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            for rest in detached:
                rest.close()  # handed over, then the layers failed: never to run
            log.exception("unhandled error (request %s)", request_id)
            if started:
                raise
            if is_store_outage(exc):
                message = "Redis or the database is unavailable; try again shortly"
                body = _error_body(503, "store_unavailable", message, request_id)
                await _send_json(send, 503, body, request_id, retry_after=STORE_RETRY_AFTER_S)
                return None
            body = _error_body(
                500, "internal_error", "internal error; report it with the request id", request_id
            )
            await _send_json(send, 500, body, request_id)
            return None
        finally:
            # Taken by whoever sends the body; left here, a cycle through the server's `send`.
            scope.pop(BODY_SEND, None)
        if not detached:
            return None
        # What the layers below left in the scope for their own use (FastAPI's exit stacks,
        # the route, its parameters) is theirs, and they have returned.
        for key in [key for key in scope if key not in ours or key == DETACH]:
            del scope[key]
        (rest,) = detached
        return rest


class BodyLimitMiddleware:
    """Answers 413 to bodies over `max_bytes`, declared by Content-Length or streamed, and 408
    to bodies not received in full within `read_timeout_s` (a client trickling its body must
    not hold a connection and a request slot indefinitely; uvicorn has no body read timeout).

    `streamed` maps (path, content types) to a larger limit for uploads their route reads as a
    stream (batches): those are passed through unbuffered, 413 only when the declared length
    is over that limit; the route enforces it on what it reads."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        streamed: Mapping[tuple[str, tuple[str, ...]], int] | None = None,
        read_timeout_s: float | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.streamed = dict(streamed or {})
        self.read_timeout_s = read_timeout_s

    def _streamed_limit(self, scope: Scope) -> int | None:
        headers = dict(scope["headers"])
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        media = content_type.split(";")[0].strip().lower()
        for (path, types), limit in self.streamed.items():
            if scope["path"].rstrip("/") == path and media in types:
                return limit
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        request_id = scope.get("state", {}).get("request_id", "")
        declared = dict(scope["headers"]).get(b"content-length")
        streamed_limit = self._streamed_limit(scope)
        if streamed_limit is not None:
            if declared is not None and declared.isdigit() and int(declared) > streamed_limit:
                await self._too_large(send, request_id, streamed_limit)
                return
            await self.app(scope, receive, send)
            return
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(send, request_id)
            return
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.read_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_bytes:
                        await self._too_large(send, request_id)
                        return
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            message_text = f"the request body did not arrive within {self.read_timeout_s:g} s"
            body_408 = _error_body(408, "request_timeout", message_text, request_id)
            await _send_json(send, 408, body_408, request_id)
            return
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send, request_id: str, limit: int | None = None) -> None:
        message = f"the request body is larger than the limit of {limit or self.max_bytes} bytes"
        await _send_json(
            send, 413, _error_body(413, "body_too_large", message, request_id), request_id
        )


class JsonBodyMiddleware:
    """The API takes JSON bodies. One sent without `Content-Type` is read as JSON; one declared
    as something else (curl's `-d` says `application/x-www-form-urlencoded`) is a 415 that
    names the header, rather than a 422 about a dictionary the caller never saw."""

    def __init__(
        self, app: ASGIApp, other_types: Mapping[str, tuple[str, ...]] | None = None
    ) -> None:
        """`other_types` maps a path to the other content types its route reads itself (e.g.
        a JSONL batch upload)."""
        self.app = app
        self.other_types = {
            path: tuple(t.encode() for t in types) for path, types in (other_types or {}).items()
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        has_body = headers.get(b"content-length", b"0") != b"0" or b"transfer-encoding" in headers
        if not declared:
            scope = {
                **scope,
                "headers": [*scope["headers"], (b"content-type", b"application/json")],
            }
        elif (
            has_body
            and declared != b"application/json"
            and not declared.endswith(b"+json")
            and declared not in self.other_types.get(scope["path"].rstrip("/"), ())
        ):
            request_id = scope.get("state", {}).get("request_id", "")
            message = (
                f"the body must be JSON: send `Content-Type: application/json` "
                f"(got {declared.decode('latin-1')!r})"
            )
            body = _error_body(415, "unsupported_media_type", message, request_id)
            await _send_json(send, 415, body, request_id)
            return
        await self.app(scope, receive, send)
