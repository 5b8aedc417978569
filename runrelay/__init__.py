"""runrelay: run LLM agents at scale.

`pip install runrelay` gives the client SDK (`Client`, `AsyncClient`), the embedded agent loop
(`Runrelay`) and the `runrelay` command; the server side (worker, HTTP shim) comes with the
`server` extra. The SDK imports only httpx, httpx-sse and pydantic (and PyYAML when the embedded
loop reads a YAML config).
"""

__version__ = "0.1.0"

from runrelay.agent.providers.base import ProviderError
from runrelay.client._client import AsyncClient, Client
from runrelay.client._params import AgentRunParams
from runrelay.client._responses import (
    AgentErrorEvent,
    AgentResolvedEvent,
    AgentResponse,
    AgentRunResult,
    AgentStreamEvent,
    AgentToolCall,
    ChatCompletedEvent,
    CustomEvent,
    InvokeResponse,
    OutputTextDeltaEvent,
    StreamChunk,
    SuggestionItem,
    SuggestionsEvent,
    ToolCallDeltaEvent,
    ToolCallResultEvent,
    UsageInfo,
)
from runrelay.client._streaming import EventStream
from runrelay.embedded._runtime import Runrelay, RunResult, ToolUse
from runrelay.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConfigError,
    ConflictError,
    InternalServerError,
    MissingCredentialsError,
    NetworkError,
    NotFoundError,
    PermissionDeniedError,
    ProviderUnreachableError,
    RateLimitError,
    RunrelayError,
    RunTimeoutError,
    SessionError,
    UnprocessableEntityError,
    ValidationError,
)
from runrelay.types import (
    ModelParams,
    RunList,
    RunObject,
    ShortcutDefinition,
    ShortcutResolution,
    ThreadMessageObject,
    ThreadObject,
    Usage,
)

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AgentErrorEvent",
    "AgentResolvedEvent",
    "AgentResponse",
    "AgentRunParams",
    "AgentRunResult",
    "AgentStreamEvent",
    "AgentToolCall",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "ChatCompletedEvent",
    "Client",
    "ConfigError",
    "ConflictError",
    "CustomEvent",
    "EventStream",
    "InternalServerError",
    "InvokeResponse",
    "MissingCredentialsError",
    "ModelParams",
    "NetworkError",
    "NotFoundError",
    "OutputTextDeltaEvent",
    "PermissionDeniedError",
    "ProviderError",
    "ProviderUnreachableError",
    "RateLimitError",
    "RunList",
    "RunObject",
    "RunResult",
    "RunTimeoutError",
    "Runrelay",
    "RunrelayError",
    "SessionError",
    "ShortcutDefinition",
    "ShortcutResolution",
    "StreamChunk",
    "SuggestionItem",
    "SuggestionsEvent",
    "ThreadMessageObject",
    "ThreadObject",
    "ToolCallDeltaEvent",
    "ToolCallResultEvent",
    "ToolUse",
    "UnprocessableEntityError",
    "Usage",
    "UsageInfo",
    "ValidationError",
    "__version__",
]
