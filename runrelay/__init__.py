"""runrelay: run LLM agents at scale.

`pip install runrelay` gives the client SDK (`Client`, `AsyncClient`) and the `runrelay` command;
the server side (worker, HTTP shim) comes with the `server` extra. The SDK imports only httpx,
httpx-sse and pydantic.
"""

__version__ = "0.1.0"

from runrelay.client import AsyncClient, Client
from runrelay.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    NetworkError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RunrelayError,
    UnprocessableEntityError,
    ValidationError,
)
from runrelay.params import AgentRunParams, ModelParams
from runrelay.responses import (
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
from runrelay.streaming import EventStream
from runrelay.types import (
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
    "ConflictError",
    "CustomEvent",
    "EventStream",
    "InternalServerError",
    "InvokeResponse",
    "ModelParams",
    "NetworkError",
    "NotFoundError",
    "OutputTextDeltaEvent",
    "PermissionDeniedError",
    "RateLimitError",
    "RunList",
    "RunObject",
    "RunrelayError",
    "ShortcutDefinition",
    "ShortcutResolution",
    "StreamChunk",
    "SuggestionItem",
    "SuggestionsEvent",
    "ThreadMessageObject",
    "ThreadObject",
    "ToolCallDeltaEvent",
    "ToolCallResultEvent",
    "UnprocessableEntityError",
    "Usage",
    "UsageInfo",
    "ValidationError",
    "__version__",
]
