"""The SDK's HTTP layer over httpx: settings, headers, retries, and the mapping of failures to
`runrelay.errors`.

A request is retried on 408, 409, 429 and 5xx answers and on connection errors, at most
`max_retries` times, after a jittered exponential backoff or the server's `Retry-After`. Creates
carry an `Idempotency-Key` that stays the same across those retries, so a retry never makes a
second run. A request the server cannot recognise when repeated (`retry_refusals_only`: a
schedule's create, a trigger) is retried only after a 429, which made nothing.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from runrelay import __version__
from runrelay._backoff import backoff_s
from runrelay.errors import (
    APIError,
    APIStatusError,
    ValidationError,
    status_error,
    transport_error,
)

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_RETRIES = 2
# How long `POST /v1/runs/wait` may take to answer: the server's wait limit plus a margin.
WAIT_READ_TIMEOUT_S = 660.0
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
_MAX_BACKOFF_S = 8.0
_MAX_RETRY_AFTER_S = 60.0


def new_idempotency_key() -> str:
    return f"rr-{uuid.uuid4()}"


@dataclass(frozen=True)
class ClientOptions:
    api_key: str | None
    base_url: str
    timeout: float
    max_retries: int
    default_headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        api_key: str | None,
        base_url: str | None,
        timeout: float,
        max_retries: int,
        default_headers: Mapping[str, str] | None,
    ) -> ClientOptions:
        """Arguments first, then `RUNRELAY_API_KEY` / `RUNRELAY_BASE_URL`, then the defaults."""
        if max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more (got {max_retries})")
        api_key = api_key or os.environ.get("RUNRELAY_API_KEY") or None
        if api_key is None:
            raise ValidationError(
                "no API key: pass api_key=... (the CLI's --api-key) or set RUNRELAY_API_KEY; "
                "`runrelay dev` prints a demo key and `runrelay keys create` makes one",
                param="api_key",
            )
        url = (base_url or os.environ.get("RUNRELAY_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        if "://" not in url:  # `127.0.0.1:8000` means what it says
            url = f"http://{url}"
        return cls(
            api_key=api_key,
            base_url=url,
            timeout=timeout,
            max_retries=max_retries,
            default_headers=dict(default_headers or {}),
        )

    def headers(self) -> dict[str, str]:
        headers = {"User-Agent": f"runrelay-python/{__version__}", **self.default_headers}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def sync_http(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=self.headers(), timeout=self.timeout)

    def async_http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.base_url, headers=self.headers(), timeout=self.timeout
        )


def retry_delay(attempt: int, error: APIError | None) -> float:
    """Seconds to wait before retry number `attempt + 1`."""
    retry_after = error.retry_after if isinstance(error, APIStatusError) else None
    if retry_after is not None and retry_after <= _MAX_RETRY_AFTER_S:
        return retry_after
    return backoff_s(attempt, base_s=0.5, cap_s=_MAX_BACKOFF_S, jitter=0.25)


def is_retryable(error: APIError) -> bool:
    if isinstance(error, APIStatusError):
        if error.status_code == 409:
            # Only "the first request with this key is still being admitted" goes away by
            # itself; any other conflict (e.g. cancelling a finished run) will not.
            return error.code == "idempotency_key_in_progress"
        if error.code == "wait_timeout":
            return False  # the server already waited its limit; the run goes on
        if error.status_code == 429 and (error.retry_after or 0) > _MAX_RETRY_AFTER_S:
            return False  # e.g. a token budget that renews next month: fail fast
        return error.status_code in RETRY_STATUSES
    return True  # connection errors and timeouts


@dataclass
class Request:
    method: str
    path: str
    json: Any = None
    params: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: httpx.Timeout | float | None = None
    retry_refusals_only: bool = False

    def retryable(self, error: APIError) -> bool:
        if self.retry_refusals_only and not (
            isinstance(error, APIStatusError) and error.status_code == 429
        ):
            return False  # the first attempt may have made something a retry would make again
        return is_retryable(error)

    def kwargs(self, default_timeout: float) -> dict[str, Any]:
        params = {k: v for k, v in (self.params or {}).items() if v is not None}
        return {
            "json": self.json,
            "params": params or None,
            "headers": dict(self.headers),
            "timeout": self.timeout if self.timeout is not None else default_timeout,
        }


class SyncTransport:
    def __init__(self, options: ClientOptions, http: httpx.Client) -> None:
        self.options = options
        self.http = http

    def send(self, request: Request) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = self.http.request(
                    request.method, request.path, **request.kwargs(self.options.timeout)
                )
            except httpx.TransportError as exc:
                error: APIError = transport_error(exc)
            else:
                if response.is_success:
                    return response
                error = status_error(response)
            if attempt >= self.options.max_retries or not request.retryable(error):
                raise error
            time.sleep(retry_delay(attempt, error))
            attempt += 1

    def close(self) -> None:
        self.http.close()


class AsyncTransport:
    def __init__(self, options: ClientOptions, http: httpx.AsyncClient) -> None:
        self.options = options
        self.http = http

    async def send(self, request: Request) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = await self.http.request(
                    request.method, request.path, **request.kwargs(self.options.timeout)
                )
            except httpx.TransportError as exc:
                error: APIError = transport_error(exc)
            else:
                if response.is_success:
                    return response
                error = status_error(response)
            if attempt >= self.options.max_retries or not request.retryable(error):
                raise error
            await asyncio.sleep(retry_delay(attempt, error))
            attempt += 1

    async def close(self) -> None:
        await self.http.aclose()
