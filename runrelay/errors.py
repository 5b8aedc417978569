"""The SDK's exceptions: everything the client and the embedded loop raise is a `RunrelayError`.

RunrelayError
├── ValidationError              bad parameters, raised before any request is sent
├── ConfigError                  the agents config is missing, invalid or unusable (file, field)
│   └── MissingCredentialsError  a hosted provider has no api_key (embedded loop)
├── ProviderUnreachableError     a local provider's base_url does not answer (embedded loop)
├── ProviderError                a model call failed (runrelay.agent.providers.base; `.code`)
├── SessionError                 an embedded session's history file cannot be read
├── RunTimeoutError              an embedded run passed its agent's timeout_s (a TimeoutError)
├── RunBlocked                   a middleware stopped the run (runrelay.agent.middleware)
├── McpServerError               an MCP server cannot be started or reached (runrelay.agent._mcp)
├── McpToolConflict              two tools of an agent share a name (runrelay.agent._mcp)
├── AgentNotFound                no agent by that name or shortcut (runrelay.agent.config; a
│                                LookupError)
├── ToolError                    a tool reports a failure; the model sees the message
│                                (runrelay.agent.tools)
└── APIError (= NetworkError)    the request failed
    ├── APIConnectionError       no usable response (refused, reset, a stream that gave up)
    │   └── APITimeoutError      connect, read or write timed out
    └── APIStatusError           an answer 4xx/5xx: .status_code, .request_id, .body, .code
        ├── BadRequestError            400
        ├── AuthenticationError        401
        ├── PermissionDeniedError      403
        ├── NotFoundError              404
        ├── ConflictError              409
        ├── UnprocessableEntityError   422
        ├── RateLimitError             429 (.retry_after)
        └── InternalServerError        5xx

The server side (worker, API) has a tree of its own: `runrelay/server/errors.py`.

`NetworkError` is the Mentiora SDK's name for "the call failed"; it is `APIError` itself, so
`except NetworkError` catches every failure of a request.
"""

from __future__ import annotations

import email.utils
import time
from typing import Any

import httpx


class RunrelayError(Exception):
    """Base of every exception the runrelay SDK raises."""


class ValidationError(RunrelayError, ValueError):
    """Parameters break a rule; nothing was sent. The message names the field and the rule."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class ConfigError(RunrelayError):
    """The agents config file is missing, invalid, or names something unusable; the message
    says which file and which field."""


class MissingCredentialsError(ConfigError):
    """A hosted provider has no api_key. `env_var` is the variable that would supply it."""

    def __init__(self, message: str, *, provider: str, env_var: str | None) -> None:
        super().__init__(message)
        self.provider = provider
        self.env_var = env_var


class ProviderUnreachableError(RunrelayError):
    """A local provider's base URL does not answer (the server is not running, or elsewhere)."""

    def __init__(self, message: str, *, provider: str, url: str) -> None:
        super().__init__(message)
        self.provider = provider
        self.url = url


class SessionError(RunrelayError):
    """An embedded session's history file cannot be used; the message names the file."""


class RunTimeoutError(RunrelayError, TimeoutError):
    """An embedded run took longer than its agent's `timeout_s`."""


class APIError(RunrelayError):
    """A request to the runrelay API failed."""

    def __init__(self, message: str, *, request: httpx.Request | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request = request


NetworkError = APIError


class APIConnectionError(APIError):
    """No usable response arrived. `last_event_id` is set when a stream gave up resuming."""

    def __init__(
        self,
        message: str = "connection error",
        *,
        request: httpx.Request | None = None,
        last_event_id: str | None = None,
        connect_failed: bool = False,
    ) -> None:
        super().__init__(message, request=request)
        self.last_event_id = last_event_id
        # No connection could be opened at all (refused, unknown host): nothing was sent.
        self.connect_failed = connect_failed


class APITimeoutError(APIConnectionError):
    """The request timed out (connect, read or write)."""


class APIStatusError(APIError):
    """The server answered with an error status; `body` is its parsed JSON (or text)."""

    def __init__(self, message: str, *, response: httpx.Response, body: Any) -> None:
        super().__init__(message, request=response.request)
        self.response = response
        self.status_code = response.status_code
        self.body = body
        detail = body.get("error") if isinstance(body, dict) else None
        detail = detail if isinstance(detail, dict) else {}
        self.code: str | None = detail.get("code")
        self.param: str | None = detail.get("param")
        self.request_id: str | None = response.headers.get("x-request-id") or detail.get(
            "request_id"
        )
        self.retry_after: float | None = parse_retry_after(response.headers.get("retry-after"))

    def __str__(self) -> str:
        suffix = f" (request {self.request_id})" if self.request_id else ""
        return f"{self.status_code} {self.code or 'error'}: {self.message}{suffix}"


class BadRequestError(APIStatusError):
    pass


class AuthenticationError(APIStatusError):
    pass


class PermissionDeniedError(APIStatusError):
    pass


class NotFoundError(APIStatusError):
    pass


class ConflictError(APIStatusError):
    pass


class UnprocessableEntityError(APIStatusError):
    pass


class RateLimitError(APIStatusError):
    """A quota refused the request; `retry_after` (seconds) says when to try again."""


class InternalServerError(APIStatusError):
    pass


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` as seconds: a number, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def status_error(response: httpx.Response) -> APIStatusError:
    """The typed error for a read error response (the one mapping from HTTP to exceptions)."""
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    detail = body.get("error") if isinstance(body, dict) else None
    message = (
        str(detail["message"])
        if isinstance(detail, dict) and detail.get("message")
        else (response.text[:200] or response.reason_phrase or f"HTTP {response.status_code}")
    )
    status = response.status_code
    cls = _BY_STATUS.get(status) or (InternalServerError if status >= 500 else APIStatusError)
    return cls(message, response=response, body=body)


def transport_error(exc: httpx.TransportError) -> APIConnectionError:
    request = None
    try:
        request = exc.request
    except RuntimeError:  # httpx raises when the error carries no request
        request = None
    where = f" ({request.method} {request.url})" if request is not None else ""
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"request timed out{where}: {type(exc).__name__}", request=request)
    if isinstance(exc, httpx.ConnectError) and request is not None:
        origin = f"{request.url.scheme}://{request.url.netloc.decode()}"
        return APIConnectionError(
            f"could not connect to {origin} ({exc}); is the runrelay API running there? "
            "Point the client elsewhere with base_url / --base-url / RUNRELAY_BASE_URL",
            request=request,
            connect_failed=True,
        )
    return APIConnectionError(
        f"connection error{where}: {type(exc).__name__}: {exc}", request=request
    )
