"""Server-Sent Events responses: the part a run's stream and a batch's progress stream share.

`SseResponse` sends the headers, then hands the coroutine that writes the body to
`RequestIdMiddleware` (`DETACH`), which awaits it in place of the route's twenty layers of
middleware and routing; the body is written with the server's own `send` (`BODY_SEND`). A task
per stream waits for the client to go. A subclass writes its events in `_stream`. (sse-starlette's
response runs four tasks and a cancel scope per message for each stream, and a stream that ends
leaves its request's objects, the transport among them, in reference cycles that only the
garbage collector frees.)
"""

from __future__ import annotations

import asyncio

from sse_starlette.sse import AppStatus
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from api_shim.middleware import BODY_SEND, DETACH

PING = b": ping\n\n"


def shutting_down() -> bool:
    """Whether the server is stopping: every stream then ends (the client reconnects to
    another process, or to this one once it is back)."""
    return bool(AppStatus.should_exit)


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class SseResponse(Response):
    """A `text/event-stream` response whose body `_stream` writes."""

    media_type = "text/event-stream"

    def __init__(self, headers: dict[str, str]) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        if scope.get("method") == "HEAD":
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        body = self._body(scope.get(BODY_SEND, send), receive)
        detach = scope.get(DETACH)
        if detach is not None:
            detach(body)  # the request's layers return; the outermost awaits `body` instead
            return
        await body

    async def _body(self, send: Send, receive: Receive) -> None:
        gone = asyncio.ensure_future(_until_disconnect(receive))
        try:
            if not await self._stream(send, gone):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            gone.cancel()

    async def _stream(self, send: Send, gone: asyncio.Future[None]) -> bool:
        """Write the events until the stream ends, the client goes (`gone`) or the server
        stops; True if the last chunk written ended the body (`more_body` False)."""
        raise NotImplementedError
