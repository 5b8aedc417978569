"""A fake OpenAI-compatible chat-completions server for tests, speaking the real SSE wire format.

It runs uvicorn on 127.0.0.1 (a free port) in a background thread::

    with serve_fake_openai(api_key="sk-test") as server:
        server.plan(text_answer("Hello there", chunks=3), http_error(429, retry_after=1))
        ... point a client at server.base_url (ends in /v1) ...
        server.requests[0].body["model"], server.requests[0].headers["authorization"]

How a response is chosen: every POST /v1/chat/completions takes the first queued `Plan` whose
`model` is None or equals the request's `model`; with none left it answers `server.default`
(a short text answer). Plans are built with the helpers below: `text_answer`, `tool_call_answer`
(split arguments; `reuse_index=True` for the buggy all-`index: 0` parallel form), `http_error`,
`malformed_chunk`, `truncated_stream`, `stalled_stream`, or `Plan(...)` for anything else.

Every request is recorded in `server.requests`, including ones refused for a bad key: with
`api_key` set, a request without `Authorization: Bearer <api_key>` gets OpenAI's 401 error body
and consumes no plan. The usage chunk is sent only when the request asks for it through
`stream_options.include_usage`, as OpenAI does.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = [
    "FakeOpenAI",
    "Plan",
    "RecordedRequest",
    "http_error",
    "malformed_chunk",
    "serve_fake_openai",
    "stalled_stream",
    "text_answer",
    "tool_call_answer",
    "truncated_stream",
]

ChunkSpec = dict[str, Any] | str


@dataclass
class Plan:
    """One scripted response.

    With `status` 200 the body is SSE: each of `chunks` as a `data:` event (a dict is completed into
    a `chat.completion.chunk` object; a str is sent verbatim as the data payload), then the usage
    chunk if asked for, then `data: [DONE]` if `done`. With `stall` the server sends the chunks and
    then nothing more until it shuts down. Any other status answers `error_body` as JSON.
    """

    status: int = 200
    chunks: list[ChunkSpec] = field(default_factory=list)
    usage: dict[str, int] | None = None
    done: bool = True
    stall: bool = False
    comment: str | None = None
    delay_s: float = 0.0
    error_body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    model: str | None = None


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: Any


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _split(text: str, parts: int) -> list[str]:
    size = max(1, -(-len(text) // max(1, parts)))
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _choice(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
    }


def text_answer(
    text: str = "Hello from the fake server.",
    *,
    chunks: int = 3,
    prompt_tokens: int = 12,
    completion_tokens: int = 7,
    finish_reason: str = "stop",
    comment: str | None = None,
    model: str | None = None,
) -> Plan:
    """`text` as `chunks` content deltas, after OpenAI's opening role chunk.

    `comment` is sent first as an SSE comment line, as OpenRouter and some proxies do.
    """
    specs: list[ChunkSpec] = [_choice({"role": "assistant", "content": ""})]
    specs += [_choice({"content": part}) for part in _split(text, chunks)]
    specs.append(_choice({}, finish_reason))
    return Plan(
        chunks=specs, usage=_usage(prompt_tokens, completion_tokens), comment=comment, model=model
    )


def tool_call_answer(
    calls: Sequence[tuple[str, dict[str, Any]]],
    *,
    split: int = 3,
    reuse_index: bool = False,
    prompt_tokens: int = 20,
    completion_tokens: int = 9,
    model: str | None = None,
) -> Plan:
    """Tool calls `(name, arguments)`, each call's arguments JSON cut into `split` fragments.

    The first fragment of a call carries its id, type and name with empty arguments (as OpenAI
    sends it). With `reuse_index` every call says `index: 0` and only the id tells them apart.
    """
    specs: list[ChunkSpec] = [_choice({"role": "assistant", "content": None})]
    for position, (name, arguments) in enumerate(calls):
        index = 0 if reuse_index else position
        head = {
            "index": index,
            "id": f"call_fake{position}",
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        specs.append(_choice({"tool_calls": [head]}))
        for part in _split(json.dumps(arguments), split):
            specs.append(
                _choice({"tool_calls": [{"index": index, "function": {"arguments": part}}]})
            )
    specs.append(_choice({}, "tool_calls"))
    return Plan(chunks=specs, usage=_usage(prompt_tokens, completion_tokens), model=model)


def http_error(
    status: int,
    message: str | None = None,
    *,
    retry_after: float | None = None,
    error_type: str | None = None,
    code: str | None = None,
    model: str | None = None,
) -> Plan:
    """An HTTP error with OpenAI's error body; `retry_after` sets the Retry-After header."""
    defaults = {
        401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
        429: ("Rate limit reached for requests.", "requests", "rate_limit_exceeded"),
    }
    default_message, default_type, default_code = defaults.get(
        status, (f"The server had an error (HTTP {status}).", "server_error", None)
    )
    headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
    body = {
        "error": {
            "message": message or default_message,
            "type": error_type or default_type,
            "param": None,
            "code": code or default_code,
        }
    }
    return Plan(status=status, error_body=body, headers=headers, model=model)


def malformed_chunk(model: str | None = None) -> Plan:
    """A good first chunk, then `data: {not json`."""
    return Plan(chunks=[_choice({"role": "assistant", "content": "Hi"}), "{not json"], model=model)


def truncated_stream(model: str | None = None) -> Plan:
    """Two content chunks, then the body ends: no finish_reason and no `[DONE]`."""
    return Plan(
        chunks=[
            _choice({"role": "assistant", "content": "Half an "}),
            _choice({"content": "answ"}),
        ],
        done=False,
        model=model,
    )


def stalled_stream(model: str | None = None) -> Plan:
    """Two content chunks, then silence until the server shuts down."""
    return Plan(
        chunks=[
            _choice({"role": "assistant", "content": "Let me think"}),
            _choice({"content": "..."}),
        ],
        done=False,
        stall=True,
        model=model,
    )


class FakeOpenAI:
    """The app's state: planned responses, recorded requests, the expected key."""

    def __init__(self, api_key: str | None = None) -> None:
        self.api_key = api_key
        self.base_url = ""
        self.requests: list[RecordedRequest] = []
        self.default = text_answer()
        self._plans: list[Plan] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._counter = 0
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat_completions, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
            ]
        )

    def plan(self, *plans: Plan) -> None:
        """Queue responses for the next requests, in order."""
        with self._lock:
            self._plans.extend(plans)

    @property
    def pending(self) -> list[Plan]:
        with self._lock:
            return list(self._plans)

    def _take(self, model: Any) -> Plan:
        with self._lock:
            for position, planned in enumerate(self._plans):
                if planned.model is None or planned.model == model:
                    return self._plans.pop(position)
        return self.default

    async def _models(self, request: Request) -> Response:
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": "fake-model", "object": "model", "created": 0, "owned_by": "fake"}],
            }
        )

    async def _chat_completions(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body: Any = json.loads(raw)
        except json.JSONDecodeError:
            body = raw.decode(errors="replace")
        self.requests.append(RecordedRequest(request.url.path, dict(request.headers), body))
        if self.api_key is not None and (
            request.headers.get("authorization") != f"Bearer {self.api_key}"
        ):
            return self._error_response(http_error(401))
        if not isinstance(body, dict) or "model" not in body or "messages" not in body:
            return self._error_response(
                http_error(
                    400,
                    "The request body must be a JSON object with model and messages.",
                    error_type="invalid_request_error",
                )
            )
        if body.get("stream") is not True:
            return self._error_response(
                http_error(
                    400,
                    "This fake server only streams; send stream: true.",
                    error_type="invalid_request_error",
                )
            )
        planned = self._take(body["model"])
        if planned.status != 200:
            return self._error_response(planned)
        stream_options = body.get("stream_options") or {}
        with_usage = isinstance(stream_options, dict) and stream_options.get("include_usage")
        return StreamingResponse(
            self._events(planned, body["model"], bool(with_usage)),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", **planned.headers},
        )

    @staticmethod
    def _error_response(planned: Plan) -> Response:
        return JSONResponse(
            planned.error_body or {}, status_code=planned.status, headers=planned.headers
        )

    async def _events(self, planned: Plan, model: str, with_usage: bool) -> AsyncIterator[str]:
        self._counter += 1
        envelope = {
            "id": f"chatcmpl-fake{self._counter}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_fake",
        }
        if planned.comment is not None:
            yield f": {planned.comment}\n\n"
        for spec in planned.chunks:
            if planned.delay_s:
                await asyncio.sleep(planned.delay_s)
            if isinstance(spec, str):
                yield f"data: {spec}\n\n"
            else:
                usage_field = {"usage": None} if with_usage else {}
                yield f"data: {json.dumps({**envelope, **spec, **usage_field})}\n\n"
        if planned.stall:
            # Polling, not waiting forever, so that shutting the server down ends the response.
            while not self._closing.is_set():
                await asyncio.sleep(0.05)
            return
        if with_usage and planned.usage is not None:
            yield f"data: {json.dumps({**envelope, 'choices': [], 'usage': planned.usage})}\n\n"
        if planned.done:
            yield "data: [DONE]\n\n"


@contextmanager
def serve_fake_openai(api_key: str | None = None) -> Iterator[FakeOpenAI]:
    """Run a `FakeOpenAI` on a free 127.0.0.1 port for the duration of the block."""
    fake = FakeOpenAI(api_key)
    config = uvicorn.Config(
        fake.app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        ws="none",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        fake.base_url = f"http://127.0.0.1:{port}/v1"
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"fake-openai-{port}", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the fake OpenAI server did not start")
            time.sleep(0.01)
        try:
            yield fake
        finally:
            fake._closing.set()
            server.should_exit = True
            thread.join(timeout=10)
    finally:
        sock.close()
