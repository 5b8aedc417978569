"""The provider for OpenAI-compatible chat-completions servers (OpenAI, vLLM, Ollama, llama.cpp,
LiteLLM): the request body, the SSE stream parser, retries on 429/5xx, and the one place where
HTTP statuses and httpx exceptions become `ProviderError`s.

Retries happen only on an error status, which always arrives before the first chunk, so a caller
never sees a chunk twice. Tool-call fragments are passed through as the wire delivers them; the
agent loop joins them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime
from time import time
from typing import Any, TypeVar

import httpx

from runrelay._backoff import backoff_s
from runrelay.agent.config import ConfigError, ProviderConfig
from runrelay.agent.providers.base import (
    Chunk,
    Finish,
    ModelRequest,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderConnectionError,
    ProviderError,
    ProviderProtocolError,
    ProviderRateLimited,
    ProviderServerError,
    ProviderTimeout,
    TextDelta,
    ToolCallFragment,
    UsageReport,
)

__all__ = ["OpenAIProvider"]

MAX_RETRY_WAIT_S = 30.0
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 8.0
EXCERPT_CHARS = 200

_T = TypeVar("_T")


class OpenAIProvider:
    name = "openai"

    def __init__(self, config: ProviderConfig, client: httpx.AsyncClient) -> None:
        if not config.base_url:
            raise ConfigError(
                "an openai provider needs base_url, e.g. http://localhost:8000/v1 (got none)"
            )
        self._config = config
        self._client = client
        self._base_url = config.base_url.rstrip("/")
        self._url = f"{self._base_url}/chat/completions"

    async def stream(self, request: ModelRequest) -> AsyncIterator[Chunk]:
        body = _request_body(request)
        headers = {"Accept": "text/event-stream"}
        if self._config.api_key:
            headers["Authorization"] = f"Bearer {self._config.api_key}"
        timeout = httpx.Timeout(self._config.timeout_s)
        attempt = 0
        while True:
            try:
                async with self._client.stream(
                    "POST", self._url, json=body, headers=headers, timeout=timeout
                ) as response:
                    if response.is_success:
                        async for chunk in _parse_stream(response, self._url):
                            yield chunk
                        return
                    await response.aread()
                    error, server_wait = self._status_error(response)
            except httpx.TimeoutException as exc:
                raise ProviderTimeout(self._timeout_message(exc)) from exc
            except httpx.ConnectError as exc:
                raise ProviderConnectionError(
                    f"cannot reach {self._base_url}: {str(exc) or type(exc).__name__}"
                ) from exc
            except httpx.RemoteProtocolError as exc:
                raise ProviderProtocolError(
                    f"{self._url} broke the HTTP protocol mid-response: {exc}"
                ) from exc
            except httpx.TransportError as exc:
                raise ProviderConnectionError(
                    f"connection to {self._base_url} failed: {str(exc) or type(exc).__name__}"
                ) from exc
            retryable = isinstance(error, ProviderRateLimited | ProviderServerError)
            if not retryable or attempt >= self._config.max_retries:
                raise error
            await asyncio.sleep(_retry_wait(server_wait, attempt))
            attempt += 1

    def _status_error(self, response: httpx.Response) -> tuple[ProviderError, float | None]:
        """The error for an HTTP error status, and the server's Retry-After in seconds if any."""
        status = response.status_code
        detail = _error_detail(response)
        wait = _retry_after_s(response.headers)
        where = f"{self._url} returned HTTP {status}: {detail}"
        if status in (401, 403):
            hint = "check the provider's api_key" if self._config.api_key else "no api_key is set"
            return ProviderAuthError(f"{where} ({hint})", status_code=status), wait
        if status == 429:
            return ProviderRateLimited(where, retry_after=wait, status_code=status), wait
        if status >= 500:
            return ProviderServerError(where, status_code=status), wait
        return ProviderBadRequest(where, status_code=status), wait

    def _timeout_message(self, exc: httpx.TimeoutException) -> str:
        limit = f"{self._config.timeout_s:g} s"
        if isinstance(exc, httpx.ConnectTimeout):
            return f"could not connect to {self._base_url} within {limit}"
        if isinstance(exc, httpx.ReadTimeout):
            return f"{self._url} sent nothing for {limit} (raise the provider's timeout_s?)"
        return f"request to {self._url} timed out after {limit} ({type(exc).__name__})"


def _request_body(request: ModelRequest) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": request.model,
        "messages": request.messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if request.tools:
        body["tools"] = request.tools
    optional = {
        "temperature": request.temperature,
        "max_tokens": request.max_tokens,
        "seed": request.seed,
    }
    body.update({key: value for key, value in optional.items() if value is not None})
    return body


async def _parse_stream(response: httpx.Response, url: str) -> AsyncIterator[Chunk]:
    """Chunks from an SSE body of `chat.completion.chunk` objects, up to `data: [DONE]`."""
    finished = False
    events = 0
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue  # blank lines, `: comments`, `event:`/`id:`/`retry:` fields
        data = line[5:].removeprefix(" ")
        if data.strip() == "[DONE]":
            return
        events += 1
        for chunk in _chunks_of(_decode(data, url)):
            finished = finished or isinstance(chunk, Finish)
            yield chunk
    if not finished:
        content_type = response.headers.get("content-type", "none")
        raise ProviderProtocolError(
            f"the stream from {url} ended without `data: [DONE]` or a finish_reason "
            f"(after {events} data events; content-type {content_type})"
        )


def _decode(data: str, url: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except json.JSONDecodeError as exc:
        raise ProviderProtocolError(
            f"{url} sent a chunk that is not valid JSON ({exc.msg}): {_excerpt(data)}"
        ) from exc
    if not isinstance(obj, dict):
        raise ProviderProtocolError(
            f"{url} sent a chunk that is not a JSON object: {_excerpt(data)}"
        )
    if obj.get("error") is not None:
        # OpenAI and vLLM report failures after the 200 status as a chunk with an error object.
        raise ProviderServerError(f"{url} reported an error mid-stream: {_message_of(obj, data)}")
    return obj


def _chunks_of(obj: dict[str, Any]) -> list[Chunk]:
    chunks: list[Chunk] = []
    choices = _field(obj, "choices", list, obj, default=[])
    if choices:
        choice = choices[0]
        if not isinstance(choice, dict):
            raise _malformed("choices[0] is not an object", obj)
        delta = _field(choice, "delta", dict, obj, default={})
        content = _field(delta, "content", str, obj, default="")
        if content:
            chunks.append(TextDelta(content))
        tool_calls = _field(delta, "tool_calls", list, obj, default=[])
        chunks.extend(_fragment(position, item, obj) for position, item in enumerate(tool_calls))
        reason = _field(choice, "finish_reason", str, obj, default="")
        if reason:
            chunks.append(Finish(reason))
    usage = _field(obj, "usage", dict, obj, default={})
    if usage:
        prompt = _field(usage, "prompt_tokens", int, obj, default=0)
        completion = _field(usage, "completion_tokens", int, obj, default=0)
        chunks.append(UsageReport(prompt_tokens=prompt, completion_tokens=completion))
    return chunks


def _fragment(position: int, item: Any, obj: dict[str, Any]) -> ToolCallFragment:
    if not isinstance(item, dict):
        raise _malformed(f"delta.tool_calls[{position}] is not an object", obj)
    # Some servers omit `index` when they send one call per chunk; its place in the list stands in.
    index = _field(item, "index", int, obj, default=position)
    function = _field(item, "function", dict, obj, default={})
    arguments = function.get("arguments")
    if isinstance(arguments, dict):
        arguments = json.dumps(arguments)  # a few servers send the arguments already parsed
    elif arguments is not None and not isinstance(arguments, str):
        raise _malformed("delta.tool_calls[].function.arguments is not a string", obj)
    return ToolCallFragment(
        index=index,
        id=_field(item, "id", str, obj, default="") or None,
        name=_field(function, "name", str, obj, default="") or None,
        arguments=arguments or "",
    )


def _field(
    holder: dict[str, Any], key: str, kind: type[_T], obj: dict[str, Any], *, default: _T
) -> _T:
    """`holder[key]` if it has type `kind`; `default` if absent or null; else a protocol error."""
    value = holder.get(key)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _malformed(f"`{key}` should be {kind.__name__}, got {type(value).__name__}", obj)
    return value


def _malformed(what: str, obj: dict[str, Any]) -> ProviderProtocolError:
    return ProviderProtocolError(f"unexpected chunk structure: {what}: {_excerpt(json.dumps(obj))}")


def _error_detail(response: httpx.Response) -> str:
    text = response.text
    try:
        body = json.loads(text)
    except json.JSONDecodeError:
        return _excerpt(text) or "(empty body)"
    return _message_of(body, text)


def _message_of(body: Any, raw: str) -> str:
    """The human message in an error body: OpenAI `{"error": {"message"}}`, or vLLM/Ollama forms."""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return _excerpt(error["message"])
        for candidate in (error, body.get("message"), body.get("detail")):
            if isinstance(candidate, str):
                return _excerpt(candidate)
    return _excerpt(raw) or "(empty body)"


def _excerpt(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= EXCERPT_CHARS else flat[: EXCERPT_CHARS - 1] + "…"


def _retry_after_s(headers: httpx.Headers) -> float | None:
    """Retry-After as seconds (OpenAI's `retry-after-ms`, delta-seconds or an HTTP date)."""
    millis = _number(headers.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _number(value)
    if seconds is not None:
        return seconds
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time())
    except (TypeError, ValueError):
        return None


def _number(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _retry_wait(server_wait: float | None, attempt: int) -> float:
    if server_wait is not None:
        return min(server_wait, MAX_RETRY_WAIT_S)
    return backoff_s(attempt, base_s=BACKOFF_BASE_S, cap_s=BACKOFF_MAX_S)
