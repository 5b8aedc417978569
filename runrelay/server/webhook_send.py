"""One attempt at delivering a webhook over HTTP, and what to do next.

Safety: only `http`/`https`; the host is resolved here, at send time, and every address it
resolves to must be public unless `webhook_allow_private_targets` (private, loopback,
link-local, multicast, reserved and unspecified addresses are refused); the request then goes to
that very address (the `Host` header and TLS server name stay the URL's), so a DNS answer that
changes between the check and the connection (rebinding) cannot reach another address. No
redirects are followed; `webhook_timeout_s` bounds the attempt; at most
`webhook_max_response_bytes` of the answer are read.

Next step (`decide`): 2xx delivered; 410 Gone disables; timeouts, connection errors, 5xx and 429
are retried after the configured delay (jittered ±20 %, never sooner than `Retry-After`) until
the delays run out; any other answer fails the delivery.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit, urlunsplit

import httpx

from runrelay.server.errors import Invalid
from runrelay.server.settings import Settings
from runrelay.server.tables import utcnow


class TargetRefused(Invalid):
    """The URL may not be called (scheme, or an address that is not public)."""


@dataclass(frozen=True)
class AttemptResult:
    status_code: int | None
    error: str | None
    duration_ms: int
    response: str | None
    retry_after_s: float | None = None

    def as_log(self, at: datetime) -> dict[str, object]:
        return {
            "at": at.isoformat(),
            "status_code": self.status_code,
            "error": self.error,
            "duration_ms": self.duration_ms,
            "response": self.response,
        }


@dataclass(frozen=True)
class Next:
    status: str  # pending | delivered | failed | disabled
    at: datetime | None = None


async def resolve_public(url: str, *, allow_private: bool) -> tuple[str, int, list[str]]:
    """(host, port, addresses) for the URL, or TargetRefused."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TargetRefused(f"only http(s) URLs with a host are called (got {url!r})")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            parts.hostname, port, type=socket.SOCK_STREAM
        )
    except OSError as exc:
        raise TargetRefused(f"cannot resolve {parts.hostname!r}: {exc}") from exc
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not allow_private:
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%")[0])
            if not ip.is_global or ip.is_multicast:
                raise TargetRefused(
                    f"{parts.hostname} resolves to {address}, which is not a public address "
                    "(private, loopback and link-local targets are refused; "
                    "RUNRELAY_WEBHOOK_ALLOW_PRIVATE_TARGETS allows them)"
                )
    return parts.hostname, port, addresses


async def attempt(
    http: httpx.AsyncClient,
    settings: Settings,
    *,
    url: str,
    body: str,
    headers: dict[str, str],
) -> AttemptResult:
    """POST once; TargetRefused when the URL may not be called."""
    started = time.monotonic()

    def elapsed() -> int:
        return int((time.monotonic() - started) * 1000)

    host, port, addresses = await resolve_public(
        url, allow_private=settings.webhook_allow_private_targets
    )
    parts = urlsplit(url)
    pinned = addresses[0]
    netloc = f"[{pinned}]:{port}" if ":" in pinned else f"{pinned}:{port}"
    target = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    request_headers = {
        **headers,
        "Host": parts.netloc.rpartition("@")[2],
        "Content-Type": "application/json",
        "User-Agent": "runrelay-webhooks/1",
    }
    try:
        async with asyncio.timeout(settings.webhook_timeout_s):
            request = http.build_request(
                "POST",
                target,
                content=body.encode(),
                headers=request_headers,
                extensions={"sni_hostname": host},
            )
            response = await http.send(request, stream=True, follow_redirects=False)
            try:
                text = await _read_some(response, settings.webhook_max_response_bytes)
            finally:
                await response.aclose()
    except TimeoutError:
        return AttemptResult(
            None, f"timed out after {settings.webhook_timeout_s:g} s", elapsed(), None
        )
    except httpx.HTTPError as exc:
        return AttemptResult(None, f"{type(exc).__name__}: {exc}", elapsed(), None)
    return AttemptResult(
        response.status_code,
        None,
        elapsed(),
        text,
        _retry_after(response.headers.get("Retry-After")),
    )


async def _read_some(response: httpx.Response, limit: int) -> str:
    data = b""
    async for chunk in response.aiter_raw():
        data += chunk
        if len(data) >= limit:
            break
    return data[:limit].decode(errors="replace")


def _retry_after(value: str | None) -> float | None:
    """Seconds from `Retry-After` (delta-seconds or an HTTP date)."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        return max(0.0, (parsedate_to_datetime(value) - utcnow()).total_seconds())
    except (TypeError, ValueError):
        return None


def decide(result: AttemptResult, attempts_made: int, settings: Settings) -> Next:
    """What follows attempt number `attempts_made` (1 for the first)."""
    code = result.status_code
    if code is not None and 200 <= code < 300:
        return Next("delivered")
    if code == 410:
        return Next("disabled")
    retryable = code is None or code >= 500 or code == 429
    delays = settings.webhook_retry_delays_s
    if not retryable or attempts_made > len(delays):
        return Next("failed")
    delay = delays[attempts_made - 1] * random.uniform(0.8, 1.2)  # noqa: S311  (jitter)
    if result.retry_after_s is not None:
        delay = max(delay, result.retry_after_s)
    return Next("pending", utcnow() + timedelta(seconds=delay))
