"""An MCP server for the tests (the official SDK's `MCPServer`), run as a real subprocess:

    python tests/mcp_server.py stdio
    python tests/mcp_server.py http PORT      # streamable HTTP at http://127.0.0.1:PORT/mcp

`serve_mcp_http()` starts the HTTP one on a free port and waits until it answers. The script
imports nothing from the repository, so it runs with the bare environment a stdio server gets.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
TOOL_NAMES = {"add", "fail", "shout", "nap", "pid"}


def stdio_command() -> dict[str, Any]:
    """The stdio server as the `command` and `args` of an MCP server spec."""
    return {"command": sys.executable, "args": [str(SCRIPT), "stdio"]}


def _server() -> Any:
    import anyio
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    server = MCPServer("runrelay-tests")

    @server.tool()
    def add(a: float, b: float) -> float:
        """Add two numbers."""
        return a + b

    @server.tool()
    def fail(reason: str) -> str:
        """Fail, always, with the reason given."""
        raise ToolError(f"failed on purpose: {reason}")

    @server.tool(structured_output=False)
    def shout(text: str) -> str:
        """The text in capitals, as plain text content."""
        return text.upper()

    @server.tool()
    async def nap(seconds: float) -> str:
        """Sleep, then answer."""
        await anyio.sleep(seconds)
        return "rested"

    @server.tool()
    def pid() -> int:
        """The server's process id."""
        return os.getpid()

    return server


@contextmanager
def serve_mcp_http() -> Iterator[str]:
    """The streamable HTTP server in a subprocess; yields its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "http", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the MCP test server did not start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    if sys.argv[1:] == ["stdio"]:
        _server().run("stdio")
    else:
        _server().run("streamable-http", port=int(sys.argv[2]))
