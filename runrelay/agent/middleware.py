"""Hooks around the agent run, each model call and each tool call, in the shape of the Agent
Framework's agent / chat / function middleware.

A middleware is `async def hook(context, next)`: it may inspect or change `context` before
calling `await next(context)`, look at `context.result` after it, replace the result, or not call
`next` at all (the model or the tool is then not called and `context.result` stands in for it)::

    @function_middleware
    async def no_large_payments(context: FunctionInvocationContext, next: Next) -> None:
        if context.function.name == "make_payment" and context.arguments["amount"] > 10_000:
            context.result = "blocked by policy: payments above 10,000 need a second officer"
            return  # the tool does not run; the model gets this text as its result
        await next(context)

Setting `context.terminate = True` stops the pipeline: the middleware after it (and the wrapped
call, if not yet reached) are skipped, and the run ends after the current step — for a function
middleware, with the tool's result as the run's output. Raising `RunBlocked` fails the run with
code `blocked` and the message given.

Mark plain functions with `agent_middleware`, `chat_middleware` or `function_middleware`, or
subclass `AgentMiddleware`, `ChatMiddleware` or `FunctionMiddleware` and implement `process`.
Agents list them in their config (`middleware: ["package.module:attribute"]`); the embedded
`Runrelay.run(..., hooks=[...])` takes the objects themselves.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from runrelay.agent.messages import ChatMessage, ToolCall
from runrelay.errors import RunrelayError
from runrelay.types import Usage

if TYPE_CHECKING:
    from runrelay.agent._loop import LoopResult
    from runrelay.agent.tools import Tool

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

Kind = Literal["agent", "chat", "function"]
C = TypeVar("C")
Next = Callable[[C], Awaitable[None]]
Handler = Callable[[C, Next[C]], Awaitable[None]]


class RunBlocked(RunrelayError):
    """Raised by a middleware to stop the run as failed (code `blocked`) with this message."""

    def __repr__(self) -> str:
        return f"RunBlocked({self.args[0] if self.args else ''!r})"


@dataclass
class AgentRunContext:
    """One run of the agent. `messages` is what the run starts from; `result` (a `LoopResult`)
    is set once the run is done — set it before calling `next` (to a `LoopResult` or a string)
    to answer without calling the model at all."""

    agent_name: str
    messages: list[ChatMessage]
    run_id: str | None = None
    thread_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    result: LoopResult | str | None = None
    terminate: bool = False


@dataclass
class ChatResponse:
    """A model's answer in one turn: text and/or tool calls (`{"id", "name", "arguments"}` with
    `arguments` a JSON string)."""

    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    model: str | None = None


@dataclass
class ChatContext:
    """One model call. `model`, `messages`, `tools` and `params` (temperature, max_tokens, seed)
    may be changed before `next`; `result` is the model's `ChatResponse` after it."""

    model: str
    messages: list[ChatMessage]
    tools: list[dict[str, Any]]
    params: dict[str, Any]
    turn: int
    metadata: dict[str, Any] = field(default_factory=dict)
    result: ChatResponse | None = None
    terminate: bool = False


@dataclass
class FunctionInvocationContext:
    """One tool call. `arguments` (the model's, parsed) may be changed before `next`; `result` is
    the tool's return value after it (a failed tool raises `ToolError` out of `next`)."""

    function: Tool
    arguments: dict[str, Any]
    call_id: str
    metadata: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    terminate: bool = False


class _Base(ABC, Generic[C]):
    kind: Kind

    @abstractmethod
    async def process(self, context: C, next: Next[C]) -> None: ...


class AgentMiddleware(_Base[AgentRunContext]):
    kind: Kind = "agent"


class ChatMiddleware(_Base[ChatContext]):
    kind: Kind = "chat"


class FunctionMiddleware(_Base[FunctionInvocationContext]):
    kind: Kind = "function"


_KIND_ATTRIBUTE = "__runrelay_middleware__"
Middleware = AgentMiddleware | ChatMiddleware | FunctionMiddleware | Callable[..., Awaitable[None]]


def _mark(kind: Kind) -> Callable[[Handler[Any]], Handler[Any]]:
    def decorator(fn: Handler[Any]) -> Handler[Any]:
        setattr(fn, _KIND_ATTRIBUTE, kind)
        return fn

    return decorator


agent_middleware = _mark("agent")
chat_middleware = _mark("chat")
function_middleware = _mark("function")


def kind_of(middleware: object) -> Kind:
    if isinstance(middleware, _Base):
        return middleware.kind
    kind: Kind | None = getattr(middleware, _KIND_ATTRIBUTE, None)
    if kind is None:
        raise TypeError(
            f"{middleware!r} is not a middleware: decorate it with agent_middleware, "
            "chat_middleware or function_middleware, or subclass AgentMiddleware, "
            "ChatMiddleware or FunctionMiddleware"
        )
    return kind


@dataclass(frozen=True)
class Pipelines:
    """Middleware sorted by kind, in the order given (the first one is the outermost)."""

    agent: tuple[Handler[AgentRunContext], ...] = ()
    chat: tuple[Handler[ChatContext], ...] = ()
    function: tuple[Handler[FunctionInvocationContext], ...] = ()

    @classmethod
    def of(cls, middleware: Sequence[object]) -> Pipelines:
        handlers: dict[Kind, list[Handler[Any]]] = {"agent": [], "chat": [], "function": []}
        for item in middleware:
            process = item.process if isinstance(item, _Base) else item
            handlers[kind_of(item)].append(process)  # type: ignore[arg-type]  # checked by kind_of
        return cls(tuple(handlers["agent"]), tuple(handlers["chat"]), tuple(handlers["function"]))


async def run_pipeline(
    handlers: Sequence[Handler[Any]], context: Any, final: Callable[[Any], Awaitable[None]]
) -> None:
    """Call `handlers` around `final`; a context with `terminate` set goes no further."""
    await _step(handlers, final, 0, context)


async def _step(
    handlers: Sequence[Handler[Any]], final: Callable[[Any], Awaitable[None]], index: int, ctx: Any
) -> None:
    # A function of the module, not a closure that calls itself: that closure would hold itself
    # in a cell, and with it `final` and the whole run, which only the garbage collector frees.
    if ctx.terminate:
        return
    if index == len(handlers):
        await final(ctx)
        return
    await handlers[index](ctx, lambda c: _step(handlers, final, index + 1, c))


def import_middleware(path: str) -> object:
    """Load `package.module:attribute` (a marked function or a middleware instance or class)."""
    module_name, _, attribute = path.partition(":")
    if not attribute:
        raise ValueError(f"middleware path {path!r} must look like 'package.module:attribute'")
    target = getattr(importlib.import_module(module_name), attribute)
    if isinstance(target, type) and issubclass(target, _Base):
        target = target()
    kind_of(target)
    return target
