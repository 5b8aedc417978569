"""What the agent loop needs from a model provider, and the errors a provider may raise.

A provider streams one model turn as `Chunk`s. Exceptions (a `ProviderError` is a
`runrelay.errors.RunrelayError`, so the embedded loop raises nothing outside the SDK's tree)::

    ProviderError                 any failure of a model call; .code names it in the error event
    ├── ProviderAuthError        401/403, bad or missing credentials       provider_auth
    ├── ProviderRateLimited      429 after retries; .retry_after seconds   provider_rate_limited
    ├── ProviderServerError      5xx after retries                         provider_server_error
    ├── ProviderBadRequest       other 4xx: the request was refused        provider_bad_request
    ├── ProviderProtocolError    a malformed stream                        provider_protocol_error
    ├── ProviderTimeout          connect timeout, or silence too long      provider_timeout
    └── ProviderConnectionError  the server cannot be reached              provider_unreachable
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from runrelay.agent.messages import ChatMessage
from runrelay.errors import RunrelayError


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ToolCallFragment:
    """A piece of a tool call as the wire delivers it (OpenAI `delta.tool_calls[i]`)."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True)
class UsageReport:
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Finish:
    reason: str


Chunk = TextDelta | ToolCallFragment | UsageReport | Finish


@dataclass(frozen=True)
class ModelRequest:
    """One model turn: OpenAI chat-completions shaped messages and tool schemas."""

    model: str
    messages: list[ChatMessage]
    tools: list[dict[str, Any]] = field(default_factory=list)
    temperature: float | None = None
    max_tokens: int | None = None
    seed: int | None = None


class ModelProvider(Protocol):
    name: str

    def stream(self, request: ModelRequest) -> AsyncIterator[Chunk]:
        """Stream one model turn. Raises ProviderError subclasses on failure."""
        ...


class ProviderError(RunrelayError):
    code = "provider_error"

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code


class ProviderAuthError(ProviderError):
    code = "provider_auth"


class ProviderRateLimited(ProviderError):
    code = "provider_rate_limited"

    def __init__(
        self, message: str, *, retry_after: float | None = None, status_code: int | None = 429
    ) -> None:
        super().__init__(message, status_code=status_code)
        self.retry_after = retry_after


class ProviderServerError(ProviderError):
    code = "provider_server_error"


class ProviderBadRequest(ProviderError):
    code = "provider_bad_request"


class ProviderProtocolError(ProviderError):
    code = "provider_protocol_error"


class ProviderTimeout(ProviderError):
    code = "provider_timeout"


class ProviderConnectionError(ProviderError):
    code = "provider_unreachable"
