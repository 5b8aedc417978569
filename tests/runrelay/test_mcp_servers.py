"""MCP servers' tools: the spec, and `open_mcp_tools` against a real MCP server subprocess, over
stdio and over streamable HTTP."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pydantic import ValidationError

from runrelay.agent._mcp import McpServerError, McpServerSpec, McpToolConflict, open_mcp_tools
from runrelay.agent.tools import Tool, ToolError
from tests.mcp_server import TOOL_NAMES, serve_mcp_http, stdio_command

T = TypeVar("T")


@pytest.fixture(scope="module")
def mcp_url() -> Iterator[str]:
    with serve_mcp_http() as url:
        yield url


@pytest.fixture(params=["stdio", "streamable_http"])
def spec(request: pytest.FixtureRequest, mcp_url: str) -> McpServerSpec:
    if request.param == "stdio":
        return McpServerSpec(name="calc", transport="stdio", **stdio_command())
    return McpServerSpec(name="calc", transport="streamable_http", url=mcp_url)


def with_tools(
    specs: list[McpServerSpec],
    body: Callable[[dict[str, Tool]], Awaitable[T]],
    reserved: tuple[str, ...] = (),
) -> T:
    async def scenario() -> T:
        async with open_mcp_tools(specs, reserved=reserved) as tools:
            return await body({tool.name: tool for tool in tools})

    return asyncio.run(scenario())


def _pid_alive(pid: int) -> bool:
    """Whether the process exists at all: a zombie (exited, not reaped) still counts."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_tools_carry_the_servers_schema_and_the_specs_options(spec: McpServerSpec) -> None:
    spec = spec.model_copy(update={"approval_mode": "always_require", "timeout_s": 5})

    async def body(tools: dict[str, Tool]) -> dict[str, Tool]:
        return tools

    tools = with_tools([spec], body)

    assert set(tools) == TOOL_NAMES
    add = tools["add"].schema()["function"]
    assert add["description"] == "Add two numbers."
    assert add["parameters"]["type"] == "object"
    assert add["parameters"]["required"] == ["a", "b"]
    assert add["parameters"]["properties"]["a"]["type"] == "number"
    assert (tools["add"].approval_mode, tools["add"].timeout_s) == ("always_require", 5)


def test_calls_return_structured_content_as_json_and_text_as_a_string(
    spec: McpServerSpec,
) -> None:
    async def body(tools: dict[str, Tool]) -> tuple[Any, Any]:
        return await tools["add"].invoke('{"a": 2, "b": 3.5}'), await tools["shout"].invoke(
            {"text": "quiet"}
        )

    assert with_tools([spec], body) == ({"result": 5.5}, "QUIET")


def test_an_error_result_becomes_a_tool_error_with_the_servers_message(
    spec: McpServerSpec,
) -> None:
    async def body(tools: dict[str, Tool]) -> list[str]:
        messages = []
        for name, arguments in [("fail", {"reason": "no data"}), ("add", {"a": "x"})]:
            with pytest.raises(ToolError) as caught:
                await tools[name].invoke(arguments)
            messages.append(str(caught.value))
        return messages

    failed, invalid = with_tools([spec], body)

    assert failed.startswith("fail failed: ") and "failed on purpose: no data" in failed
    assert invalid.startswith("add failed:") and "b" in invalid, "the server checks the schema"


def test_a_slow_call_times_out_and_the_session_stays_usable(spec: McpServerSpec) -> None:
    spec = spec.model_copy(update={"timeout_s": 0.3})

    async def body(tools: dict[str, Tool]) -> Any:
        with pytest.raises(ToolError, match=r"nap timed out after 0\.3 s"):
            await tools["nap"].invoke({"seconds": 5})
        return await tools["add"].invoke({"a": 1, "b": 1})

    started = time.monotonic()
    assert with_tools([spec], body) == {"result": 2}
    assert time.monotonic() - started < 10


def test_the_allowlist_offers_only_the_tools_named(spec: McpServerSpec) -> None:
    spec = spec.model_copy(update={"tools": ["add", "shout"]})

    async def body(tools: dict[str, Tool]) -> set[str]:
        return set(tools)

    assert with_tools([spec], body) == {"add", "shout"}


def test_an_allowlisted_tool_the_server_lacks_is_a_clear_error(spec: McpServerSpec) -> None:
    spec = spec.model_copy(update={"tools": ["add", "multiply"]})

    with pytest.raises(McpServerError) as caught:
        with_tools([spec], lambda tools: asyncio.sleep(0))

    message = str(caught.value)
    assert "'calc'" in message and "no tool named 'multiply'" in message and "add" in message


def test_several_servers_connect_and_same_named_tools_conflict(mcp_url: str) -> None:
    stdio = McpServerSpec(name="local", transport="stdio", tools=["add"], **stdio_command())
    http = McpServerSpec(name="remote", transport="streamable_http", url=mcp_url, tools=["shout"])

    async def body(tools: dict[str, Tool]) -> set[str]:
        return set(tools)

    assert with_tools([stdio, http], body) == {"add", "shout"}

    with pytest.raises(McpToolConflict, match=r"'add' of MCP server 'remote'.*MCP server 'local'"):
        with_tools([stdio, http.model_copy(update={"tools": ["add"]})], body)
    with pytest.raises(McpToolConflict, match="agent's Python tools"):
        with_tools([stdio], body, reserved=("add",))


def test_closing_ends_the_stdio_server_process() -> None:
    spec = McpServerSpec(name="calc", transport="stdio", **stdio_command())

    async def body(tools: dict[str, Tool]) -> int:
        pid = (await tools["pid"].invoke({}))["result"]
        assert _pid_alive(pid)
        return int(pid)

    pid = with_tools([spec], body)

    assert not _pid_alive(pid), "the server process is gone and reaped (no zombie)"


def test_a_server_that_dies_mid_run_turns_calls_into_tool_errors() -> None:
    spec = McpServerSpec(name="calc", transport="stdio", **stdio_command())

    async def body(tools: dict[str, Tool]) -> str:
        os.kill((await tools["pid"].invoke({}))["result"], 9)
        await asyncio.sleep(0.2)
        with pytest.raises(ToolError) as caught:
            await tools["add"].invoke({"a": 1, "b": 2})
        return str(caught.value)

    assert "MCP server 'calc' failed" in with_tools([spec], body)


def _refused(spec: McpServerSpec, within_s: float = 8) -> str:
    started = time.monotonic()
    with pytest.raises(McpServerError) as caught:
        with_tools([spec], lambda tools: asyncio.sleep(0))
    assert time.monotonic() - started < within_s, "a bad server never hangs the caller"
    assert caught.value.server == spec.name and caught.value.transport == spec.transport
    return str(caught.value)


def test_an_unreachable_url_is_a_clear_error() -> None:
    message = _refused(
        McpServerSpec(name="search", transport="streamable_http", url="http://127.0.0.1:9/mcp")
    )

    assert message.startswith(
        "MCP server 'search' (streamable_http: http://127.0.0.1:9/mcp) could not be reached: "
    )
    assert "ConnectError" in message


def test_a_command_that_does_not_exist_is_a_clear_error() -> None:
    message = _refused(
        McpServerSpec(name="files", transport="stdio", command="no-such-mcp-server", args=["-v"])
    )

    assert message.startswith(
        "MCP server 'files' (stdio: no-such-mcp-server -v) could not be started: "
    )
    assert "No such file" in message


def test_a_server_that_exits_at_start_shows_its_stderr() -> None:
    crash = "import sys; sys.exit('config file /etc/calc.toml is missing')"
    message = _refused(
        McpServerSpec(name="calc", transport="stdio", command=sys.executable, args=["-c", crash])
    )

    assert "could not be started" in message and "/etc/calc.toml is missing" in message


def test_a_server_that_never_answers_is_given_up_and_stopped(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    mute = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(60)"
    spec = McpServerSpec(
        name="mute",
        transport="stdio",
        command=sys.executable,
        args=["-c", mute, str(pid_file)],
        connect_timeout_s=2,
    )

    message = _refused(spec)

    assert "no answer within connect_timeout_s=2 s" in message
    assert not _pid_alive(int(pid_file.read_text())), "the silent server was stopped"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"transport": "stdio"}, "transport stdio needs `command`"),
        ({"transport": "streamable_http"}, "transport streamable_http needs `url`"),
        (
            {"transport": "streamable_http", "url": "127.0.0.1:8000/mcp"},
            "url must start with http:// or https:// (got '127.0.0.1:8000/mcp')",
        ),
        (
            {"transport": "stdio", "command": "calc", "url": "http://x/mcp"},
            "url do not apply to transport stdio",
        ),
        (
            {"transport": "streamable_http", "url": "http://x/mcp", "command": "calc"},
            "command do not apply to transport streamable_http",
        ),
        ({"transport": "sse", "url": "http://x/mcp"}, "transport"),
        ({"transport": "stdio", "command": "calc", "port": 3}, "port"),
        ({"transport": "stdio", "command": "calc", "timeout_s": 0}, "timeout_s"),
    ],
)
def test_the_spec_names_the_field_and_the_rule(fields: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValidationError) as caught:
        McpServerSpec.model_validate({"name": "calc", **fields})

    assert expected in str(caught.value)


def test_server_names_follow_the_agent_name_rule() -> None:
    with pytest.raises(ValidationError, match="name"):
        McpServerSpec(name="Calc Server", transport="stdio", command="calc")


def test_no_servers_means_no_tools_and_no_mcp_import() -> None:
    """Agents without MCP servers must not need the mcp package at all."""
    code = (
        "import asyncio, sys\n"
        "from runrelay.agent._mcp import open_mcp_tools\n"
        "async def main():\n"
        "    async with open_mcp_tools([]) as tools:\n"
        "        assert tools == []\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mcp', 'mcp_types')))\n"
    )

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
