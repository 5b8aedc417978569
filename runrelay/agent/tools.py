"""Python function tools: the JSON schema the model sees comes from the function's signature.

    @tool(description="Look up a company's credit score")
    def lookup_credit_score(company: Annotated[str, Field(description="legal name")]) -> dict: ...

Arguments are validated with pydantic before the call; sync functions run in a thread so they
never block the event loop; a per-tool timeout bounds each call. A tool may instead carry a raw
JSON schema (`parameters`, e.g. an MCP server's): the model sees it as is, and the arguments go
to the function unvalidated, since whoever wrote the schema checks them.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import importlib
import inspect
import json
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args, get_origin, overload

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from runrelay.errors import RunrelayError

ApprovalMode = Literal["always_require", "never_require"]

# The id of the tool call being executed, readable inside a tool (sync tools too: their thread
# gets a copy of the context). A tool with side effects can use it as an idempotency key, since
# a run resumed after a crash repeats a call that was in flight when the crash happened.
current_tool_call_id: ContextVar[str | None] = ContextVar("current_tool_call_id", default=None)
# The run the tool is called for, when whoever runs the loop sets it (the worker does).
current_run_id: ContextVar[str | None] = ContextVar("current_run_id", default=None)


class ToolError(RunrelayError):
    """A tool call failed; the message goes back to the model as the tool's result."""


class _ArgsBase(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    fn: Callable[..., Any]
    args_model: type[BaseModel]
    timeout_s: float | None = None
    approval_mode: ApprovalMode = "never_require"
    max_invocations: int | None = None
    # After this many failed calls the tool is not called again in the run.
    max_invocation_exceptions: int | None = None
    parameters: dict[str, Any] | None = None

    def schema(self) -> dict[str, Any]:
        """The OpenAI function-tool schema (built once per tool; a copy each call: decoded
        from its JSON, ~10 times faster than `copy.deepcopy`, when that gives it back equal)."""
        if self._schema_json is None:
            return copy.deepcopy(self._schema)
        copied: dict[str, Any] = orjson.loads(self._schema_json)
        return copied

    @functools.cached_property
    def _schema_json(self) -> bytes | None:
        try:
            encoded = orjson.dumps(self._schema)
        except orjson.JSONEncodeError:
            return None
        return encoded if orjson.loads(encoded) == self._schema else None  # tuples, dates...

    @functools.cached_property
    def _schema(self) -> dict[str, Any]:
        if self.parameters is not None:
            parameters = dict(self.parameters)
        else:
            parameters = self.args_model.model_json_schema()
        parameters.pop("title", None)
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": parameters,
            },
        }

    async def invoke(self, arguments: str | dict[str, Any]) -> Any:
        """Validate the model's arguments and call the function; ToolError on any failure."""
        try:
            raw = json.loads(arguments or "{}") if isinstance(arguments, str) else arguments
        except json.JSONDecodeError as exc:
            raise ToolError(f"arguments of {self.name} are not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise ToolError(f"arguments of {self.name} must be a JSON object")
        if self.parameters is not None:
            kwargs = raw
        else:
            try:
                args = self.args_model.model_validate(raw)
            except ValidationError as exc:
                raise ToolError(f"invalid arguments for {self.name}: {_brief(exc)}") from exc
            kwargs = {name: getattr(args, name) for name in type(args).model_fields}
        deadline = asyncio.timeout(self.timeout_s)
        try:
            async with deadline:
                if inspect.iscoroutinefunction(self.fn):
                    return await self.fn(**kwargs)
                return await asyncio.to_thread(self.fn, **kwargs)
        except TimeoutError as exc:
            if deadline.expired():
                raise ToolError(f"{self.name} timed out after {self.timeout_s:g} s") from exc
            raise ToolError(f"{self.name} failed: TimeoutError: {exc}") from exc
        except ToolError:
            raise
        except Exception as exc:  # the tool's own failure is reported to the model, not raised
            raise ToolError(f"{self.name} failed: {type(exc).__name__}: {exc}") from exc


def _brief(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors()
    )


def tool_from_function(
    fn: Callable[..., Any],
    *,
    name: str | None = None,
    description: str | None = None,
    approval_mode: ApprovalMode = "never_require",
    max_invocations: int | None = None,
    max_invocation_exceptions: int | None = None,
    timeout_s: float | None = None,
) -> Tool:
    for option, value in (
        ("max_invocations", max_invocations),
        ("max_invocation_exceptions", max_invocation_exceptions),
    ):
        if value is not None and value < 1:
            raise ValueError(f"tool {fn.__name__}: {option} must be at least 1 (got {value})")
    fields: dict[str, Any] = {}
    for param in inspect.signature(fn, eval_str=True).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"tool {fn.__name__}: *args and **kwargs have no JSON schema")
        annotation = Any if param.annotation is param.empty else _described(param.annotation)
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (annotation, default)
    tool_name = name or fn.__name__
    args_model = create_model(f"{tool_name}_arguments", __base__=_ArgsBase, **fields)
    doc = inspect.getdoc(fn) or ""
    return Tool(
        name=tool_name,
        description=description or doc.split("\n\n")[0],
        fn=fn,
        args_model=args_model,
        timeout_s=timeout_s,
        approval_mode=approval_mode,
        max_invocations=max_invocations,
        max_invocation_exceptions=max_invocation_exceptions,
    )


def _described(annotation: Any) -> Any:
    """`Annotated[str, "the city"]` (a bare string, as in the Agent Framework) describes the
    parameter like `Annotated[str, Field(description="the city")]`."""
    if get_origin(annotation) is not Annotated:
        return annotation
    base, *metadata = get_args(annotation)
    extras = [Field(description=m) if isinstance(m, str) else m for m in metadata]
    return Annotated[(base, *extras)]


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...
@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    approval_mode: ApprovalMode = "never_require",
    max_invocations: int | None = None,
    max_invocation_exceptions: int | None = None,
    timeout_s: float | None = None,
) -> Callable[[Callable[..., Any]], Tool]: ...
def tool(fn: Callable[..., Any] | None = None, /, **options: Any) -> Tool | Callable[..., Tool]:
    """Decorator turning a function into a Tool, bare (`@tool`) or with options (`@tool(...)`)."""
    if fn is not None:
        return tool_from_function(fn)
    return lambda f: tool_from_function(f, **options)


def import_tool(path: str) -> Tool:
    """Load `package.module:attribute`, a Tool or a plain function."""
    module_name, _, attribute = path.partition(":")
    if not attribute:
        raise ValueError(f"tool path {path!r} must look like 'package.module:function'")
    target = getattr(importlib.import_module(module_name), attribute)
    return target if isinstance(target, Tool) else tool_from_function(target)
