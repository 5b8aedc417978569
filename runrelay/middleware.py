"""Public import path of the middleware API (`from runrelay.middleware import ...`); it lives in
`runrelay.agent.middleware`."""

from runrelay.agent.middleware import (
    AgentMiddleware,
    AgentRunContext,
    ChatContext,
    ChatMiddleware,
    ChatResponse,
    FunctionInvocationContext,
    FunctionMiddleware,
    Middleware,
    Next,
    RunBlocked,
    agent_middleware,
    chat_middleware,
    function_middleware,
)

__all__ = [
    "AgentMiddleware",
    "AgentRunContext",
    "ChatContext",
    "ChatMiddleware",
    "ChatResponse",
    "FunctionInvocationContext",
    "FunctionMiddleware",
    "Middleware",
    "Next",
    "RunBlocked",
    "agent_middleware",
    "chat_middleware",
    "function_middleware",
]
