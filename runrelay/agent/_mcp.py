"""MCP servers an agent declares, and their tools offered to the model as runrelay `Tool`s.

    mcp_servers:
      - {name: calc, transport: stdio, command: python, args: [calc_server.py]}
      - {name: search, transport: streamable_http, url: "https://mcp.example.com/mcp",
         headers: {Authorization: "Bearer ${SEARCH_TOKEN}"}, tools: [web_search]}

`open_mcp_tools(specs)` connects to every server at once, lists its tools, and yields `Tool`s whose
schema is the server's `inputSchema` and whose call is the server's `tools/call`; leaving it closes
the sessions and stops the stdio subprocesses. The `mcp` package is imported only when a server is
opened, so the SDK does not need it.

Each server lives in a task of its own: the SDK's transports hold anyio task groups that must be
entered and left in one task, and a server dying mid-run must not cancel the run that uses it.

Errors:
    McpServerError   a server could not be started, reached or listed (names server and cause)
    McpToolConflict  two tools share a name (across servers, or with the agent's Python tools)
A tool call that fails (an `isError` result, or the server gone) is a `ToolError`, which goes back
to the model as the tool's result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import tempfile
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TextIO
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

from runrelay.agent.tools import ApprovalMode, Tool, ToolError
from runrelay.errors import RunrelayError

if TYPE_CHECKING:
    from mcp import Client
    from mcp_types import CallToolResult, ContentBlock
    from mcp_types import Tool as McpTool

__all__ = ["McpServerError", "McpServerSpec", "McpToolConflict", "open_mcp_tools"]

# How long closing the sessions may take before their tasks are cancelled.
_CLOSE_GRACE_S = 5.0

log = logging.getLogger(__name__)

# The rule agent names follow (runrelay.agent.config imports this module, so it cannot be shared).
SERVER_NAME_PATTERN = r"^[a-z0-9][a-z0-9\-_]*$"
_LIST_PAGES_MAX = 100
_STDERR_TAIL_CHARS = 500


class McpServerError(RunrelayError):
    """An MCP server could not be started, reached or listed; the message names it and the cause."""

    def __init__(self, spec: McpServerSpec, cause: str) -> None:
        verb = "started" if spec.transport == "stdio" else "reached"
        super().__init__(f"MCP server {spec.name!r} ({spec.target}) could not be {verb}: {cause}")
        self.server = spec.name
        self.transport = spec.transport
        self.cause = cause


class McpToolConflict(RunrelayError, ValueError):
    """Two tools an agent would offer the model have the same name."""


class McpServerSpec(BaseModel):
    """One MCP server of an agent (`mcp_servers:` in the agents config)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=SERVER_NAME_PATTERN)
    transport: Literal["stdio", "streamable_http"]
    # stdio: the command that starts the server; it inherits only HOME, PATH, USER and the like.
    command: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    # streamable_http
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    tools: list[str] | None = Field(None, description="offer only these tools (default: all)")
    approval_mode: ApprovalMode = "never_require"
    timeout_s: float | None = Field(60.0, gt=0, description="per tool call; null: no limit")
    connect_timeout_s: float = Field(10.0, gt=0, description="start, handshake and tool listing")

    @model_validator(mode="after")
    def _check_transport(self) -> McpServerSpec:
        if self.transport == "stdio":
            if not self.command:
                raise ValueError(f"MCP server {self.name!r}: transport stdio needs `command`")
            wrong = [key for key in ("url", "headers") if getattr(self, key)]
        else:
            if not self.url:
                raise ValueError(f"MCP server {self.name!r}: transport streamable_http needs `url`")
            if not self.url.startswith(("http://", "https://")):
                raise ValueError(
                    f"MCP server {self.name!r}: url must start with http:// or https:// "
                    f"(got {self.url!r})"
                )
            wrong = [key for key in ("command", "args", "env", "cwd") if getattr(self, key)]
        if wrong:
            raise ValueError(
                f"MCP server {self.name!r}: {', '.join(wrong)} do not apply to transport "
                f"{self.transport}"
            )
        return self

    @property
    def target(self) -> str:
        """What the server is, for messages: its command line or its URL."""
        if self.transport == "stdio":
            return f"stdio: {shlex.join([self.command or '', *self.args])}"
        # Without credentials or query: messages end up in run events.
        url = urlsplit(self.url or "")
        return f"streamable_http: {url.scheme}://{url.netloc.rpartition('@')[2]}{url.path}"


@contextlib.asynccontextmanager
async def open_mcp_tools(
    specs: Sequence[McpServerSpec], *, reserved: Collection[str] = ()
) -> AsyncIterator[list[Tool]]:
    """Connect to the servers (concurrently, each within its `connect_timeout_s`) and yield their
    tools; `reserved` are names already taken, e.g. by the agent's Python tools."""
    if not specs:
        yield []
        return
    servers = [_Server(spec) for spec in specs]
    try:
        for server in servers:
            server.task = asyncio.create_task(server.serve(), name=f"mcp:{server.spec.name}")
        outcomes = await asyncio.gather(*(s.ready for s in servers), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        yield _merge(servers, reserved)
    finally:
        for server in servers:
            server.stop.set()
            if server.task is not None and not server.connected:
                server.task.cancel()
        tasks = [s.task for s in servers if s.task]
        if tasks:
            # A server that never answers the session's closing request must not hold the run.
            _, late = await asyncio.wait(tasks, timeout=_CLOSE_GRACE_S)
            for task in late:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def _merge(servers: list[_Server], reserved: Collection[str]) -> list[Tool]:
    owners = dict.fromkeys(reserved, "one of the agent's Python tools")
    tools: list[Tool] = []
    for server in servers:
        for listed in server.ready.result():
            owner = f"MCP server {server.spec.name!r}"
            if listed.name in owners:
                raise McpToolConflict(
                    f"tool {listed.name!r} of {owner} has the same name as {owners[listed.name]}; "
                    f"leave one of them out (an MCP server's `tools:` lists the tools it offers)"
                )
            owners[listed.name] = f"a tool of {owner}"
            tools.append(server.tool(listed))
    return tools


@dataclass(eq=False)
class _Server:
    """One server's session, held open by `serve` (a task of its own) until `stop` is set."""

    spec: McpServerSpec
    ready: asyncio.Future[list[McpTool]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    client: Client | None = None
    connected: bool = False

    async def serve(self) -> None:
        try:
            with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as stderr:
                try:
                    await self._hold(stderr)
                finally:
                    if log.isEnabledFor(logging.DEBUG) and (tail := _tail(stderr)):
                        log.debug("MCP server %r wrote to stderr: %s", self.spec.name, tail)
        except McpServerError as exc:
            _settle(self.ready, exc)
        except Exception as exc:  # a session that broke after it was ready: calls will say so
            if not _settle(self.ready, McpServerError(self.spec, _describe(exc))):
                log.warning("MCP server %r: session ended: %s", self.spec.name, _describe(exc))

    async def _hold(self, stderr: TextIO) -> None:
        deadline = asyncio.timeout(self.spec.connect_timeout_s)
        async with contextlib.AsyncExitStack() as stack:
            try:
                async with deadline:
                    client = await stack.enter_async_context(_connect(self.spec, stderr))
                    listed = _allowed(self.spec, await _list_tools(client))
            except McpServerError:
                raise
            except Exception as exc:
                if deadline.expired():
                    cause = f"no answer within connect_timeout_s={self.spec.connect_timeout_s:g} s"
                else:
                    cause = _describe(exc)
                if tail := _tail(stderr):
                    cause += f"; its stderr ends with: {tail}"
                raise McpServerError(self.spec, cause) from exc
            self.client, self.connected = client, True
            _settle(self.ready, listed)
            await self.stop.wait()

    def tool(self, listed: McpTool) -> Tool:
        async def call(**arguments: Any) -> Any:
            return await self.call(listed.name, arguments)

        return Tool(
            name=listed.name,
            description=listed.description or listed.title or "",
            fn=call,
            args_model=BaseModel,  # unused: the server's own schema is the tool's `parameters`
            parameters=listed.input_schema,
            timeout_s=self.spec.timeout_s,
            approval_mode=self.spec.approval_mode,
        )

    async def call(self, name: str, arguments: dict[str, Any]) -> Any:
        if self.client is None or self.stop.is_set():
            raise ToolError(f"{name}: the session with MCP server {self.spec.name!r} is closed")
        try:
            result = await self.client.call_tool(name, arguments)
        except Exception as exc:
            raise ToolError(
                f"{name}: MCP server {self.spec.name!r} failed: {_describe(exc)}"
            ) from exc
        return _result(name, result)


@contextlib.asynccontextmanager
async def _connect(spec: McpServerSpec, stderr: TextIO) -> AsyncIterator[Client]:
    try:
        import httpx2
        from mcp import Client, StdioServerParameters, stdio_client
        from mcp.client.streamable_http import streamable_http_client
        from mcp_types import Implementation
    except ImportError as exc:
        raise McpServerError(
            spec, "the mcp package is not installed (pip install 'runrelay[mcp]')"
        ) from exc
    from runrelay import __version__

    info = Implementation(name="runrelay", version=__version__)
    if spec.transport == "stdio":
        assert spec.command is not None  # the spec's validator saw to it
        params = StdioServerParameters(
            command=spec.command, args=spec.args, env=spec.env or None, cwd=spec.cwd
        )
        async with Client(stdio_client(params, errlog=stderr), client_info=info) as client:
            yield client
        return
    assert spec.url is not None
    # No read timeout: a call's own `timeout_s` bounds it, and the event stream may idle.
    timeout = httpx2.Timeout(spec.connect_timeout_s, read=None)
    async with (
        httpx2.AsyncClient(headers=spec.headers, timeout=timeout) as http,
        Client(streamable_http_client(spec.url, http_client=http), client_info=info) as client,
    ):
        yield client


async def _list_tools(client: Client) -> list[McpTool]:
    tools: list[McpTool] = []
    cursor: str | None = None
    for _ in range(_LIST_PAGES_MAX):
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if cursor is None:
            return tools
    raise RuntimeError(f"its tool list did not end after {_LIST_PAGES_MAX} pages")


def _allowed(spec: McpServerSpec, tools: list[McpTool]) -> list[McpTool]:
    if spec.tools is None:
        return tools
    offered = {tool.name for tool in tools}
    missing = [name for name in spec.tools if name not in offered]
    if missing:
        raise McpServerError(
            spec,
            f"it offers no tool named {', '.join(map(repr, missing))} (it has: "
            f"{', '.join(sorted(offered)) or 'none'}); fix the server's `tools:`",
        )
    return [tool for tool in tools if tool.name in spec.tools]


def _result(name: str, result: CallToolResult) -> Any:
    """Structured content as it is (JSON); otherwise the content as text."""
    if result.is_error:
        raise ToolError(f"{name} failed: {_text(result.content) or 'the server gave no reason'}")
    if result.structured_content is not None:
        return result.structured_content
    return _text(result.content)


def _text(blocks: Sequence[ContentBlock]) -> str:
    from mcp_types import EmbeddedResource, ResourceLink, TextContent, TextResourceContents

    parts: list[str] = []
    for block in blocks:
        if isinstance(block, TextContent):
            parts.append(block.text)
        elif isinstance(block, EmbeddedResource) and isinstance(
            block.resource, TextResourceContents
        ):
            parts.append(block.resource.text)
        elif isinstance(block, ResourceLink):
            parts.append(f"[resource {block.uri}]")
        else:  # images, audio, binary resources: a chat model's tool message holds text only
            parts.append(f"[{block.type} content, not shown]")
    return "\n".join(parts)


def _settle(future: asyncio.Future[list[McpTool]], outcome: list[McpTool] | Exception) -> bool:
    """Resolve `future` unless it is already done (or was cancelled); whether it was resolved."""
    if future.done():
        return False
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
    return True


def _describe(exc: BaseException) -> str:
    """The innermost first cause, as `Type: message` (the SDK wraps errors in task groups)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    message = str(exc).strip()
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _tail(stderr: TextIO) -> str:
    stderr.seek(0)
    return " ".join(stderr.read()[-_STDERR_TAIL_CHARS:].split())
