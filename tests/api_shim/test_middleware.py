"""`RequestIdMiddleware`'s hand-over of a long response body (`DETACH`), called as the server
calls it: the layers under it return while the body goes on, and the body still ends, or is
cancelled, with its request."""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref

from starlette.types import Message, Receive, Scope, Send

from api_shim.middleware import BODY_SEND, DETACH, RequestIdMiddleware


class _Routing:
    """Stands for the layers between the middleware and a route: it leaves something of its own
    in the scope and notes when it returns."""

    def __init__(self, route: object) -> None:
        self.route = route
        self.returned = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["router"] = self
        await self.route(scope, receive, send)  # type: ignore[operator]
        self.returned.set()


class _StreamedRoute:
    """Starts the response and hands the rest of the body over: two chunks, the second only
    once the test lets it go."""

    def __init__(self) -> None:
        self.go_on = asyncio.Event()
        self.cancelled = False
        self.scope_while_sending: set[str] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        scope[DETACH](self._rest(scope, scope[BODY_SEND]))

    async def _rest(self, scope: Scope, send: Send) -> None:
        await send({"type": "http.response.body", "body": b"one\n", "more_body": True})
        try:
            await self.go_on.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        self.scope_while_sending = set(scope)
        await send({"type": "http.response.body", "body": b"two\n", "more_body": False})


def _request() -> tuple[Scope, Receive, list[Message], Send]:
    scope = {"type": "http", "method": "GET", "path": "/events", "headers": []}
    sent: list[Message] = []

    async def receive() -> Message:
        await asyncio.Event().wait()  # the client stays
        raise AssertionError

    async def send(message: Message) -> None:
        sent.append(message)

    return scope, receive, sent, send


async def _handed_over() -> tuple[_StreamedRoute, list[Message], asyncio.Future[None]]:
    """A streamed request through the middleware, once the layers under it have returned."""
    route = _StreamedRoute()
    routing = _Routing(route)
    scope, receive, sent, send = _request()
    request = asyncio.ensure_future(RequestIdMiddleware(routing)(scope, receive, send))
    await asyncio.wait_for(routing.returned.wait(), 5)
    return route, sent, request


def test_a_detached_body_goes_on_after_the_layers_returned() -> None:
    async def scenario() -> None:
        route, sent, request = await _handed_over()
        assert not request.done()  # the middleware waits for the body in the layers' place
        route.go_on.set()
        await asyncio.wait_for(request, 5)

        start, *chunks = sent
        assert start["type"] == "http.response.start"
        assert dict(start["headers"])[b"x-request-id"].startswith(b"req_")
        assert [(c["body"], c["more_body"]) for c in chunks] == [
            (b"one\n", True),
            (b"two\n", False),
        ]
        # What the layers below left in the scope went with them; the server's own keys stayed.
        assert "router" not in route.scope_while_sending
        assert {"type", "method", "path", "headers"} <= route.scope_while_sending

    asyncio.run(scenario())


def test_a_detached_body_is_cancelled_with_its_request() -> None:
    async def scenario() -> None:
        route, _sent, request = await _handed_over()
        request.cancel()
        await asyncio.gather(request, return_exceptions=True)
        assert route.cancelled

    asyncio.run(scenario())


def test_an_error_in_a_detached_body_ends_the_request_with_it() -> None:
    class _Failing(_StreamedRoute):
        async def _rest(self, scope: Scope, send: Send) -> None:
            raise RuntimeError("the body broke")

    async def scenario() -> None:
        scope, receive, sent, send = _request()
        try:
            await asyncio.wait_for(RequestIdMiddleware(_Failing())(scope, receive, send), 5)
        except RuntimeError as exc:
            assert str(exc) == "the body broke"  # the server closes the connection
        else:
            raise AssertionError("the error was swallowed")
        assert [m["type"] for m in sent] == ["http.response.start"]  # no 500 after a 200

    asyncio.run(scenario())


def test_without_detach_the_body_is_sent_under_every_layer() -> None:
    class _InPlace(_StreamedRoute):
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            assert DETACH not in scope
            await send({"type": "http.response.start", "status": 200, "headers": []})
            self.go_on.set()
            await self._rest(scope, scope[BODY_SEND])

    async def scenario() -> None:
        route = _InPlace()
        routing = _Routing(route)
        scope, receive, sent, send = _request()
        await asyncio.wait_for(RequestIdMiddleware(routing, detach=False)(scope, receive, send), 5)
        assert "router" in route.scope_while_sending  # the layers were still there
        assert [m.get("more_body") for m in sent] == [None, True, False]

    asyncio.run(scenario())


class _Connection:
    """Stands for the server's object of one request: it holds the scope, and the `send` it
    gives the app is its own method (as uvicorn's `RequestResponseCycle` does)."""

    def __init__(self) -> None:
        self.scope, self.receive, self.sent, self._send = _request()

    async def send(self, message: Message) -> None:
        await self._send(message)


def test_a_finished_request_is_freed_without_the_garbage_collector() -> None:
    """Nothing the middleware leaves in the scope ties the server's objects into a cycle: once
    a request ends they go by reference counting, not in a full collection that stalls every
    open stream (one that lived long enough to reach the old generation waits for one)."""

    async def one(app: object, detach: bool) -> weakref.ref[_Connection]:
        connection = _Connection()
        middleware = RequestIdMiddleware(app, detach=detach)  # type: ignore[arg-type]
        await middleware(connection.scope, connection.receive, connection.send)
        assert connection.sent[-1].get("more_body", False) is False  # the response was sent
        return weakref.ref(connection)

    class _Ends(_StreamedRoute):
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            self.go_on.set()
            await super().__call__(scope, receive, send)

    class _InPlace(_Ends):
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

    async def _failing(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("the route broke")  # answered with a 500 by the middleware

    async def scenario() -> None:
        for app, detach in [(_Ends(), True), (_InPlace(), False), (_failing, True)]:
            freed = await one(app, detach)
            assert freed() is None, f"{app!r} (detach={detach}) left a reference cycle"

    # The 500's log record would hold the traceback, and with it the request, in pytest's
    # capture of the logs.
    logger = logging.getLogger("api_shim.middleware")
    gc.disable()
    logger.disabled = True
    try:
        asyncio.run(scenario())
    finally:
        logger.disabled = False
        gc.enable()
