"""Agents with MCP servers, end to end: the shim, a real worker, and a real MCP server subprocess
(stdio, or streamable HTTP). The model calls the server's tools like any other; a server that
cannot be reached fails the run with `mcp_unavailable`, quickly."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from runrelay.agent.config import AgentsConfig, Registry
from runrelay.server.revisions import AgentCatalog
from runrelay.server.store import Store
from tests.fake_openai import FakeOpenAI, text_answer, tool_call_answer
from tests.mcp_server import serve_mcp_http, stdio_command
from tests.sse import assert_complete_log, read_events, wait_finished

SCRIPT = {
    "turns": [
        {
            "tool_calls": [
                {"name": "add", "arguments": {"a": 2, "b": 3}},
                {"name": "fail", "arguments": {"reason": "no data"}},
                {"name": "pid"},
            ]
        },
        {"text": "2 + 3 = 5", "chunks": 2},
    ]
}


@pytest.fixture(scope="module")
def mcp_url() -> Iterator[str]:
    with serve_mcp_http() as url:
        yield url


def _publish(store: Store, servers: list[dict[str, Any]], **agent: Any) -> str:
    """Store an agent using `servers` as a revision, as `runrelay agents publish` does; its id."""
    module = f"mcp{secrets.token_hex(4)}"
    config = AgentsConfig.model_validate(
        {
            "providers": {"scripted": {"type": "scripted"}, "openai": {"type": "openai"}},
            "modules": [
                {
                    "key": module,
                    "name": "MCP tests",
                    "agents": [{"name": "calculator", "mcp_servers": servers, **agent}],
                }
            ],
        }
    )
    AgentCatalog(store.engine, Registry(config)).publish(config)
    return f"{module}.calculator"


def _run(client: httpx.Client, agent_id: str, **body: Any) -> list[dict[str, Any]]:
    events = read_events(
        client, "POST", "/v1/runs/stream", json={"agent_id": agent_id, "message": "2 + 3?", **body}
    )
    assert_complete_log(events)
    return events


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("transport", ["stdio", "streamable_http"])
def test_the_model_calls_mcp_tools_and_gets_their_results(
    client: httpx.Client, store: Store, mcp_url: str, transport: str
) -> None:
    if transport == "stdio":
        server = {"name": "calc", "transport": "stdio", **stdio_command()}
    else:
        server = {"name": "calc", "transport": "streamable_http", "url": mcp_url}
    agent_id = _publish(store, [server], script=SCRIPT)

    events = _run(client, agent_id)

    results = {e["name"]: e for e in events if e["type"] == "tool_call_result"}
    assert results["add"]["arguments"] == {"a": 2, "b": 3}
    assert results["add"]["result"] == {"result": 5.0} and "error" not in results["add"]
    assert "failed on purpose: no data" in results["fail"]["error"], "isError goes to the model"
    done = events[-1]
    assert (done["status"], done["output"]) == ("completed", "2 + 3 = 5")
    if transport == "stdio":
        assert not _alive(results["pid"]["result"]["result"]), "the run stopped its server"


def test_the_model_is_offered_the_servers_schema(
    client: httpx.Client, store: Store, fake_openai: FakeOpenAI
) -> None:
    model = f"m-{secrets.token_hex(4)}"
    server = {"name": "calc", "transport": "stdio", "tools": ["add"], **stdio_command()}
    agent_id = _publish(
        store,
        [server],
        provider="openai",
        model=model,
        tools=["runrelay.demo.tools:get_financials"],
    )
    fake_openai.plan(
        tool_call_answer([("add", {"a": 1.5, "b": 1})], model=model),
        text_answer("It is 2.5.", model=model),
    )

    events = _run(client, agent_id)

    assert events[-1]["output"] == "It is 2.5."
    sent = [r.body for r in fake_openai.requests if r.body.get("model") == model]
    offered = {t["function"]["name"]: t["function"] for t in sent[0]["tools"]}
    assert set(offered) == {"add", "get_financials"}, "Python and MCP tools side by side"
    assert offered["add"]["description"] == "Add two numbers."
    assert offered["add"]["parameters"]["required"] == ["a", "b"]
    assert sent[1]["messages"][-1] == {
        "role": "tool",
        "tool_call_id": sent[1]["messages"][-2]["tool_calls"][0]["id"],
        "content": '{"result": 2.5}',
    }


def test_an_mcp_tool_needing_approval_runs_once_approved(
    client: httpx.Client, store: Store
) -> None:
    """The run pauses with no server held; the attempt that resumes it starts the server again."""
    server = {"name": "calc", "transport": "stdio", "approval_mode": "always_require"}
    script = {
        "turns": [
            {"tool_calls": [{"name": "add", "arguments": {"a": 2, "b": 3}}]},
            {"text": "2 + 3 = 5"},
        ]
    }
    agent_id = _publish(store, [{**server, **stdio_command()}], script=script)
    run_id = client.post("/v1/runs", json={"agent_id": agent_id, "message": "2 + 3?"}).json()["id"]

    deadline = time.monotonic() + 20
    while (run := client.get(f"/v1/runs/{run_id}").json())["status"] != "requires_action":
        assert time.monotonic() < deadline, f"the run is {run['status']}, not paused"
        time.sleep(0.05)
    [call] = run["required_action"]["tool_calls"]
    assert (call["name"], call["arguments"]) == ("add", {"a": 2, "b": 3})
    decided = client.post(
        f"/v1/runs/{run_id}/approvals", json={"call_id": call["tool_call_id"], "approved": True}
    )
    assert decided.status_code == 200, decided.text

    assert wait_finished(client, run_id)["status"] == "completed"
    events = read_events(client, "GET", f"/v1/runs/{run_id}/events")
    [result] = [e for e in events if e["type"] == "tool_call_result"]
    assert (result["result"], result["approved"]) == ({"result": 5.0}, True)


def test_an_unreachable_server_fails_the_run_with_mcp_unavailable(
    client: httpx.Client, store: Store
) -> None:
    server = {"name": "search", "transport": "streamable_http", "url": "http://127.0.0.1:9/mcp"}
    agent_id = _publish(store, [server], script=SCRIPT)

    started = time.monotonic()
    events = _run(client, agent_id)

    assert time.monotonic() - started < 15, "an unreachable server never hangs the run"
    error = next(e for e in events if e["type"] == "error")
    assert error["code"] == "mcp_unavailable"
    assert "MCP server 'search'" in error["message"] and "127.0.0.1:9" in error["message"]
    assert not [e for e in events if e["type"] in ("tool_call_result", "output_text_delta")]
    run = client.get(f"/v1/runs/{events[-1]['run_id']}").json()
    assert run["status"] == "failed" and run["error"]["code"] == "mcp_unavailable"


def test_an_mcp_tool_named_like_a_python_tool_fails_the_run_clearly(
    client: httpx.Client, store: Store
) -> None:
    server = {"name": "calc", "transport": "stdio", "tools": ["add"], **stdio_command()}
    agent_id = _publish(store, [server], tools=["tests.worker.test_mcp_runs:add"], script=SCRIPT)

    events = _run(client, agent_id)

    error = next(e for e in events if e["type"] == "error")
    assert error["code"] == "mcp_tool_conflict" and "'add'" in error["message"]
    assert events[-1]["status"] == "failed"


def add(a: int, b: int) -> int:
    """A Python tool whose name an MCP server's tool also has."""
    return a + b
