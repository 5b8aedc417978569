"""The embedded loop: `Runrelay.from_config(...)` then `await bot.run(...)`, in this process.

Model calls go to the scripted provider or to the fake OpenAI-compatible server over real HTTP;
tools are the Python functions below, loaded through the config file like any agent's tools.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from runrelay import (
    ConfigError,
    MissingCredentialsError,
    ProviderError,
    ProviderUnreachableError,
    Runrelay,
    RunrelayError,
    RunTimeoutError,
    SessionError,
    ToolUse,
    ValidationError,
)
from runrelay.agent._mcp import McpServerError
from runrelay.agent.middleware import (
    AgentMiddleware,
    AgentRunContext,
    ChatContext,
    FunctionInvocationContext,
    Next,
    RunBlocked,
    agent_middleware,
    chat_middleware,
    function_middleware,
)
from runrelay.agent.providers.base import ProviderAuthError
from runrelay.embedded._run import NO_APPROVER
from runrelay.embedded._sessions import session_file_name
from runrelay.server.embedded_redis import free_port
from runrelay.server.settings import DEMO_AGENTS_CONFIG
from tests.fake_openai import FakeOpenAI, serve_fake_openai, text_answer, tool_call_answer
from tests.mcp_server import stdio_command

KEY = "sk-embedded"
CALLS: list[dict[str, Any]] = []  # what the tools below were called with, reset per test


def add_numbers(a: int, b: int) -> int:
    """Add two integers."""
    CALLS.append({"a": a, "b": b})
    return a + b


@pytest.fixture(autouse=True)
def _reset_calls() -> None:
    CALLS.clear()


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with serve_fake_openai(api_key=KEY) as fake:
        yield fake


def scripted_agent(**overrides: Any) -> dict[str, Any]:
    agent: dict[str, Any] = {
        "name": "adder",
        "instructions": "You add numbers with the tool.",
        "tools": ["tests.runrelay.test_embedded:add_numbers"],
        "script": {
            "turns": [
                {"tool_calls": [{"name": "add_numbers", "arguments": {"a": 2, "b": 3}}]},
                {"text": "The sum is 5.", "chunks": 3},
            ]
        },
    }
    return agent | overrides


def write_config(
    tmp_path: Path,
    *agents: dict[str, Any],
    providers: dict[str, Any] | None = None,
    name: str = "agents.yaml",
) -> Path:
    config = {
        "providers": providers or {"scripted": {"type": "scripted"}},
        "modules": [{"key": "math", "name": "Math", "agents": list(agents)}],
    }
    path = tmp_path / name
    path.write_text(json.dumps(config) if name.endswith(".json") else yaml.safe_dump(config))
    return path


def openai_config(tmp_path: Path, server: FakeOpenAI, **agent: Any) -> Path:
    providers = {
        "local": {
            "type": "openai",
            "base_url": server.base_url,
            "api_key": "${FAKE_KEY}",
            "timeout_s": 5,
            "max_retries": 0,
        }
    }
    spec = {"name": "chat", "provider": "local", "model": "fake-model", **agent}
    return write_config(tmp_path, spec, providers=providers)


def run(bot: Runrelay, message: str, **options: Any) -> Any:
    async def go() -> Any:
        async with bot:
            return await bot.run(message, **options)

    return asyncio.run(go())


def sent_messages(server: FakeOpenAI, index: int) -> list[tuple[str, Any]]:
    body = server.requests[index].body
    return [(m["role"], m.get("content")) for m in body["messages"]]


def test_a_scripted_run_calls_a_python_tool_and_reports_it(tmp_path: Path) -> None:
    bot = Runrelay.from_config(write_config(tmp_path, scripted_agent()), workspace=tmp_path / "w")

    result = run(bot, "What is 2 + 3?", session_key="sdk:sum")

    assert result.content == "The sum is 5."
    assert CALLS == [{"a": 2, "b": 3}]
    (used,) = result.tools_used
    assert used == ToolUse("add_numbers", {"a": 2, "b": 3}, 5, None, used.tool_call_id)
    assert [m["role"] for m in result.messages] == ["user", "assistant", "tool", "assistant"]
    assert result.messages[0] == {"role": "user", "content": "What is 2 + 3?"}
    assert result.usage.total_tokens > 0 and result.turns == 2
    assert (result.agent_id, result.model, result.session_key) == (
        "math.adder",
        "scripted",
        "sdk:sum",
    )


def test_on_event_sees_the_events_the_service_would_log(tmp_path: Path) -> None:
    bot = Runrelay.from_config(write_config(tmp_path, scripted_agent()), workspace=tmp_path)
    events: list[dict[str, Any]] = []

    async def collect(event: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        events.append(event)

    result = run(bot, "2 + 3?", on_event=collect)

    types = [e["type"] for e in events]
    assert types[0] == "agent_resolved" and types[-2:] == ["usage", "done"]
    assert {"tool_call_delta", "tool_call_result", "output_text_delta"} <= set(types)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert {e["run_id"] for e in events} == {result.run_id}
    deltas = "".join(e["delta"] for e in events if e["type"] == "output_text_delta")
    assert deltas == result.content
    (tool_result,) = [e for e in events if e["type"] == "tool_call_result"]
    assert (tool_result["name"], tool_result["result"]) == ("add_numbers", 5)
    assert events[-1]["status"] == "completed" and events[-1]["output"] == result.content


def test_a_session_sends_its_earlier_turns_and_other_sessions_do_not(
    tmp_path: Path, server: FakeOpenAI
) -> None:
    config = openai_config(tmp_path, server, instructions="Be brief.")
    env = {"FAKE_KEY": KEY}
    server.plan(text_answer("Hello Ada."), text_answer("You are Ada."), text_answer("Hi."))

    async def conversation() -> None:
        async with Runrelay.from_config(config, tmp_path / "ws", environ=env) as bot:
            await bot.run("My name is Ada.", session_key="user:ada")
            await bot.run("What is my name?", session_key="user:ada")
            await bot.run("Who am I?", session_key="user:bob")

    asyncio.run(conversation())

    assert sent_messages(server, 1) == [
        ("system", "Be brief."),
        ("user", "My name is Ada."),
        ("assistant", "Hello Ada."),
        ("user", "What is my name?"),
    ]
    assert sent_messages(server, 2) == [("system", "Be brief."), ("user", "Who am I?")]

    # A new Runrelay on the same workspace (a restarted process) continues the session.
    again = Runrelay.from_config(config, tmp_path / "ws", environ=env)
    run(again, "And again?", session_key="user:ada")
    assert [content for _, content in sent_messages(server, 3)] == [
        "Be brief.",
        "My name is Ada.",
        "Hello Ada.",
        "What is my name?",
        "You are Ada.",
        "And again?",
    ]
    assert len(list((tmp_path / "ws" / "sessions").iterdir())) == 2


def test_a_session_keeps_tool_calls_and_results_in_its_history(
    tmp_path: Path, server: FakeOpenAI
) -> None:
    config = openai_config(tmp_path, server, tools=["tests.runrelay.test_embedded:add_numbers"])
    server.plan(tool_call_answer([("add_numbers", {"a": 1, "b": 2})]), text_answer("3."))
    bot = Runrelay.from_config(config, tmp_path, environ={"FAKE_KEY": KEY})
    first = run(bot, "1 + 2?", session_key="s")

    bot = Runrelay.from_config(config, tmp_path, environ={"FAKE_KEY": KEY})
    run(bot, "And now?", session_key="s")

    assert server.requests[2].body["messages"][1:5] == first.messages


def test_runs_on_one_session_take_turns_and_none_is_lost(tmp_path: Path) -> None:
    agent = scripted_agent(tools=[], script={"delay_ms": 5, "turns": [{"text": "ok", "chunks": 4}]})
    bot = Runrelay.from_config(write_config(tmp_path, agent), workspace=tmp_path)

    async def together() -> list[Any]:
        async with bot:
            return await asyncio.gather(
                *(bot.run(f"message {n}", session_key="shared") for n in range(3)),
                bot.run("elsewhere", session_key="other"),
            )

    results = asyncio.run(together())

    # Each run on "shared" saw the turns of those before it (0, 2, then 4 messages of history),
    # and the history holds all three turns: none read the history while another was running.
    prompts = sorted(r.usage.prompt_tokens for r in results[:3])
    assert prompts[0] < prompts[1] < prompts[2]
    shared = json.loads((tmp_path / "sessions" / session_file_name("shared")).read_text())
    users = [m["content"] for m in shared["messages"] if m["role"] == "user"]
    assert sorted(users) == ["message 0", "message 1", "message 2"]
    assert len(shared["messages"]) == 6
    other = json.loads((tmp_path / "sessions" / session_file_name("other")).read_text())
    assert [m["content"] for m in other["messages"]] == ["elsewhere", "ok"]


def test_a_run_without_a_session_key_has_no_history_and_leaves_none(tmp_path: Path) -> None:
    bot = Runrelay.from_config(write_config(tmp_path, scripted_agent()), workspace=tmp_path / "w")

    run(bot, "2 + 3?")

    assert not (tmp_path / "w").exists()


def test_model_id_and_model_params_reach_the_model(tmp_path: Path, server: FakeOpenAI) -> None:
    bot = Runrelay.from_config(
        openai_config(tmp_path, server, temperature=0.2), tmp_path, environ={"FAKE_KEY": KEY}
    )

    result = run(bot, "hi", model_id="other-model", model_params={"max_tokens": 50, "seed": 7})

    body = server.requests[0].body
    assert (body["model"], body["temperature"], body["max_tokens"], body["seed"]) == (
        "other-model",
        0.2,
        50,
        7,
    )
    assert server.requests[0].headers["authorization"] == f"Bearer {KEY}"
    assert result.model == "other-model"


@pytest.mark.parametrize(
    ("message", "options", "match"),
    [
        ("   ", {}, "message must be a non-empty string"),
        ("hi", {"model_params": {"temperature": 3}}, r"model_params.temperature .*got 3"),
        ("hi", {"model_params": {"colour": "red"}}, "model_params.colour"),
        ("hi", {"session_key": ""}, "session_key must be a non-empty string"),
    ],
)
def test_bad_arguments_are_refused_before_anything_runs(
    tmp_path: Path, message: str, options: dict[str, Any], match: str
) -> None:
    bot = Runrelay.from_config(write_config(tmp_path, scripted_agent()), workspace=tmp_path / "w")

    with pytest.raises(ValidationError, match=match):
        run(bot, message, **options)
    assert CALLS == [] and not (tmp_path / "w").exists()


def test_a_failed_run_raises_the_provider_error_and_leaves_the_session_as_it_was(
    tmp_path: Path, server: FakeOpenAI
) -> None:
    config = openai_config(tmp_path, server)
    run(Runrelay.from_config(config, tmp_path, environ={"FAKE_KEY": KEY}), "one", session_key="s")
    events: list[dict[str, Any]] = []

    bot = Runrelay.from_config(config, tmp_path, environ={"FAKE_KEY": "sk-wrong"})
    with pytest.raises(ProviderAuthError, match="HTTP 401") as caught:
        run(bot, "two", session_key="s", on_event=events.append)

    assert isinstance(caught.value, RunrelayError) and isinstance(caught.value, ProviderError)
    assert [e["type"] for e in events][-2:] == ["error", "done"]
    assert events[-1]["status"] == "failed" and events[-1]["error"]["code"] == "provider_auth"
    session = next((tmp_path / "sessions").iterdir())
    assert [m["content"] for m in json.loads(session.read_text())["messages"]] == [
        "one",
        "Hello from the fake server.",
    ]


def test_a_run_past_the_agents_timeout_fails_with_run_timeout(tmp_path: Path) -> None:
    slow = {"delay_ms": 100, "turns": [{"text": "a slow answer in many parts", "chunks": 20}]}
    agent = scripted_agent(tools=[], timeout_s=0.3, script=slow)
    bot = Runrelay.from_config(write_config(tmp_path, agent), workspace=tmp_path)

    started = time.monotonic()
    with pytest.raises(RunTimeoutError, match=r"adder's timeout_s, 0.3 s") as caught:
        run(bot, "go")

    assert time.monotonic() - started < 2
    assert isinstance(caught.value, TimeoutError)


def test_a_closed_runrelay_refuses_to_run(tmp_path: Path) -> None:
    bot = Runrelay.from_config(write_config(tmp_path, scripted_agent()), workspace=tmp_path)
    run(bot, "2 + 3?")

    with pytest.raises(RunrelayError, match="closed"):
        asyncio.run(bot.run("again"))


# --- hooks (middleware) and approvals -------------------------------------------------------


@function_middleware
async def refuse_additions(context: FunctionInvocationContext, next: Next[Any]) -> None:
    if context.function.name == "add_numbers":
        context.result = "refused by policy: no arithmetic today"
        return  # the tool does not run
    await next(context)


class Observer(AgentMiddleware):
    """Sees each run of the agent from outside: what it started from and how it ended."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None, int, str]] = []

    async def process(self, context: AgentRunContext, next: Next[AgentRunContext]) -> None:
        started_with = len(context.messages)
        await next(context)
        result = context.result
        output = result if isinstance(result, str) or result is None else result.output
        self.seen.append((context.agent_name, context.thread_id, started_with, output or ""))


def test_a_function_hook_blocks_a_tool_call_and_the_model_sees_the_refusal(
    tmp_path: Path, server: FakeOpenAI
) -> None:
    config = openai_config(tmp_path, server, tools=["tests.runrelay.test_embedded:add_numbers"])
    server.plan(tool_call_answer([("add_numbers", {"a": 1, "b": 2})]), text_answer("Sorry."))
    bot = Runrelay.from_config(config, tmp_path, environ={"FAKE_KEY": KEY})

    result = run(bot, "1 + 2?", hooks=[refuse_additions])

    assert CALLS == []
    tool_message = server.requests[1].body["messages"][-1]
    assert tool_message["role"] == "tool"
    assert json.loads(tool_message["content"]) == "refused by policy: no arithmetic today"
    assert result.tools_used[0].result == "refused by policy: no arithmetic today"
    assert result.content == "Sorry."


def test_an_agent_hook_observes_the_run_and_a_chat_hook_each_model_call(tmp_path: Path) -> None:
    bot = Runrelay.from_config(write_config(tmp_path, scripted_agent()), workspace=tmp_path)
    observer = Observer()
    models: list[tuple[int, str]] = []

    @chat_middleware
    async def count_calls(context: ChatContext, next: Next[ChatContext]) -> None:
        await next(context)
        models.append((context.turn, context.model))

    result = run(bot, "2 + 3?", session_key="s", hooks=[observer, count_calls])

    assert observer.seen == [("adder", "s", 2, "The sum is 5.")]
    assert models == [(1, "scripted"), (2, "scripted")]
    assert result.content == "The sum is 5."


ORDER: list[str] = []


@agent_middleware
async def from_the_config(context: AgentRunContext, next: Next[AgentRunContext]) -> None:
    ORDER.append("config")
    await next(context)


def test_the_agents_own_middleware_runs_too_and_outside_the_hooks(tmp_path: Path) -> None:
    agent = scripted_agent(middleware=["tests.runrelay.test_embedded:from_the_config"])
    bot = Runrelay.from_config(write_config(tmp_path, agent), workspace=tmp_path)
    ORDER.clear()

    @agent_middleware
    async def hook(context: AgentRunContext, next: Next[AgentRunContext]) -> None:
        ORDER.append("hook")
        await next(context)

    run(bot, "2 + 3?", hooks=[hook])

    assert ORDER == ["config", "hook"]


def test_a_hook_that_raises_run_blocked_fails_the_run(tmp_path: Path) -> None:
    bot = Runrelay.from_config(write_config(tmp_path, scripted_agent()), workspace=tmp_path)
    events: list[dict[str, Any]] = []

    @function_middleware
    async def stop(context: FunctionInvocationContext, next: Next[Any]) -> None:
        raise RunBlocked("arithmetic is forbidden")

    with pytest.raises(RunBlocked, match="arithmetic is forbidden"):
        run(bot, "2 + 3?", session_key="s", hooks=[stop], on_event=events.append)

    assert (events[-2]["code"], events[-2]["message"]) == ("blocked", "arithmetic is forbidden")
    assert events[-1]["status"] == "failed" and CALLS == []
    assert not (tmp_path / "sessions").exists()


def test_something_that_is_not_middleware_is_refused_as_a_hook(tmp_path: Path) -> None:
    bot = Runrelay.from_config(write_config(tmp_path, scripted_agent()), workspace=tmp_path)

    async def unmarked(context: Any, next: Any) -> None:
        await next(context)

    with pytest.raises(ValidationError, match=r"hooks\[0\]: .* is not a middleware"):
        run(bot, "2 + 3?", hooks=[unmarked])
    assert CALLS == []


def payments(tmp_path: Path) -> Runrelay:
    return Runrelay.from_config(DEMO_AGENTS_CONFIG, tmp_path, agent="bank payments", environ={})


def test_a_tool_that_needs_approval_runs_once_the_host_approves(tmp_path: Path) -> None:
    asked: list[dict[str, Any]] = []

    async def approve(call: dict[str, Any]) -> bool:
        asked.append(call)
        return True

    result = run(payments(tmp_path), "Pay ACME Supplies 1250 EUR", approve=approve)

    assert [call["name"] for call in asked] == ["send_payment"]
    assert asked[0]["arguments"]["payee"] == "ACME Supplies"
    payment = next(t for t in result.tools_used if t.name == "send_payment")
    assert payment.approved is True and payment.result["status"] == "sent"


def test_a_tool_that_needs_approval_is_rejected_without_an_approver(tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []
    result = run(payments(tmp_path), "Pay ACME Supplies", on_event=events.append)

    payment = next(t for t in result.tools_used if t.name == "send_payment")
    assert payment.approved is False and payment.result is None
    assert payment.error == f"the call was rejected by the approver: {NO_APPROVER}"
    assert "approval_required" in [e["type"] for e in events]
    refused = run(payments(tmp_path), "Pay ACME Supplies", approve=lambda call: False)
    (payment,) = [t for t in refused.tools_used if t.name == "send_payment"]
    assert (payment.approved, payment.error) == (False, "the call was rejected by the approver")


def test_the_agents_mcp_servers_offer_their_tools_to_the_run(tmp_path: Path) -> None:
    calc = {"name": "calc", "transport": "stdio", **stdio_command()}
    agent = scripted_agent(
        mcp_servers=[calc],
        script={
            "turns": [
                {"tool_calls": [{"name": "add", "arguments": {"a": 2, "b": 3}}]},
                {"text": "Five."},
            ]
        },
    )
    bot = Runrelay.from_config(write_config(tmp_path, agent), workspace=tmp_path)

    result = run(bot, "2 + 3 on the calculator?")

    (used,) = result.tools_used
    assert (used.name, used.arguments, used.error) == ("add", {"a": 2, "b": 3}, None)
    assert used.result == {"result": 5.0}  # the server's structured content
    assert result.content == "Five." and CALLS == []


def test_an_mcp_server_that_cannot_start_fails_the_run_naming_it(tmp_path: Path) -> None:
    broken = {"name": "files", "transport": "stdio", "command": "no-such-mcp-server"}
    bot = Runrelay.from_config(
        write_config(tmp_path, scripted_agent(mcp_servers=[broken])), workspace=tmp_path
    )
    events: list[dict[str, Any]] = []

    with pytest.raises(McpServerError, match=r"MCP server 'files' .* could not be started"):
        run(bot, "2 + 3?", session_key="s", on_event=events.append)

    assert events[-2]["code"] == "mcp_unavailable" and events[-1]["status"] == "failed"
    assert CALLS == [] and not (tmp_path / "sessions").exists()


# --- choosing the agent, and config errors --------------------------------------------------


def test_the_demo_config_serves_its_scripted_agents_without_any_credentials(
    tmp_path: Path,
) -> None:
    bot = Runrelay.from_config(
        DEMO_AGENTS_CONFIG, tmp_path, agent="bank credit-analyst", environ={}
    )

    result = run(bot, "Assess ACME Corp")

    assert bot.agent.name == "credit-risk-analyst"
    assert [t.name for t in result.tools_used] == ["lookup_credit_score"]
    assert result.content.startswith("The credit score and the financials")


def test_several_agents_and_no_choice_is_an_error_listing_them(tmp_path: Path) -> None:
    config = write_config(tmp_path, scripted_agent(), scripted_agent(name="helper"))

    with pytest.raises(ConfigError, match=r"defines 2 agents; .*agent=NAME\): adder, helper"):
        Runrelay.from_config(config, tmp_path)
    assert Runrelay.from_config(config, tmp_path, agent="helper").agent.name == "helper"
    assert Runrelay.from_config(config, tmp_path, agent="math.adder").agent.name == "adder"


def test_an_unknown_agent_is_an_error_with_suggestions(tmp_path: Path) -> None:
    config = write_config(tmp_path, scripted_agent(), scripted_agent(name="helper"))

    with pytest.raises(ConfigError, match=r"no agent named 'adr'; did you mean 'adder'"):
        Runrelay.from_config(config, tmp_path, agent="adr")


def test_config_errors_name_the_file_and_the_field(tmp_path: Path) -> None:
    bad_value = write_config(tmp_path, scripted_agent(temperature=3.5))
    with pytest.raises(ConfigError, match=r"agents\.yaml(.|\n)*modules\.0\.agents\.0\.temperature"):
        Runrelay.from_config(bad_value, tmp_path)

    bad_tool = write_config(tmp_path, scripted_agent(tools=["tests.nowhere:add"]), name="t.json")
    with pytest.raises(
        ConfigError, match=r"t\.json: modules\.0\.agents\.0\.tools\.0: .*tests.nowhere"
    ):
        Runrelay.from_config(bad_tool, tmp_path)

    with pytest.raises(ConfigError, match=r"cannot read agents config .*missing\.yaml"):
        Runrelay.from_config(tmp_path / "missing.yaml", tmp_path)


# --- provider checks ------------------------------------------------------------------------


def test_a_hosted_provider_without_a_key_fails_at_once_naming_the_variable(
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    with pytest.raises(MissingCredentialsError) as caught:
        Runrelay.from_config(DEMO_AGENTS_CONFIG, tmp_path, agent="openai-analyst", environ={})

    message = str(caught.value)
    assert "api.openai.com" in message and "agents.yaml" in message
    assert "set the environment variable OPENAI_API_KEY" in message
    assert "providers.openai.api_key reads '${OPENAI_API_KEY:-}'" in message
    assert caught.value.env_var == "OPENAI_API_KEY" and isinstance(caught.value, ConfigError)
    assert time.monotonic() - started < 5
    # With the key in the environment, the same agent loads.
    Runrelay.from_config(
        DEMO_AGENTS_CONFIG, tmp_path, agent="openai-analyst", environ={"OPENAI_API_KEY": "sk-x"}
    )


def test_a_hosted_provider_with_no_api_key_field_names_the_field_to_add(tmp_path: Path) -> None:
    providers = {"router": {"type": "openai", "base_url": "https://openrouter.ai/api/v1"}}
    config = write_config(tmp_path, {"name": "a", "provider": "router"}, providers=providers)

    with pytest.raises(
        MissingCredentialsError,
        match=r"set providers\.router\.api_key, e\.g\. "
        r"`api_key: \$\{OPENROUTER_API_KEY\}`",
    ):
        Runrelay.from_config(config, tmp_path)


def test_an_openai_provider_without_base_url_names_the_field(tmp_path: Path) -> None:
    providers = {"llm": {"type": "openai", "api_key": "sk-x"}}
    config = write_config(tmp_path, {"name": "a", "provider": "llm"}, providers=providers)

    with pytest.raises(ConfigError, match=r"agents\.yaml: providers\.llm\.base_url is not set"):
        Runrelay.from_config(config, tmp_path)


def test_an_unreachable_local_provider_fails_the_first_run_quickly_naming_the_url(
    tmp_path: Path,
) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    providers = {"ollama": {"type": "openai", "base_url": url}}
    config = write_config(tmp_path, {"name": "a", "provider": "ollama"}, providers=providers)
    bot = Runrelay.from_config(config, tmp_path)  # no key needed for a local server

    started = time.monotonic()
    with pytest.raises(ProviderUnreachableError) as caught:
        run(bot, "hi", session_key="s")

    assert time.monotonic() - started < 5
    assert caught.value.url == url
    assert f"cannot reach the local provider 'ollama' at {url}" in str(caught.value)
    assert "providers.ollama.base_url" in str(caught.value)
    assert not (tmp_path / "sessions").exists()


def test_a_local_provider_that_accepts_but_never_answers_fails_within_five_seconds(
    tmp_path: Path,
) -> None:
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        providers = {"vllm": {"type": "openai", "base_url": url}}
        config = write_config(tmp_path, {"name": "a", "provider": "vllm"}, providers=providers)

        started = time.monotonic()
        with pytest.raises(ProviderUnreachableError, match="did not answer within 3 s"):
            run(Runrelay.from_config(config, tmp_path), "hi")
        assert time.monotonic() - started < 5


def test_the_embedded_loop_imports_nothing_of_the_server(tmp_path: Path) -> None:
    # A JSON config (no PyYAML either), and a tool module that imports nothing of the tests.
    score = {"name": "lookup_credit_score", "arguments": {"company": "ACME"}}
    agent = scripted_agent(
        tools=["runrelay.demo.tools:lookup_credit_score"],
        script={"turns": [{"tool_calls": [score]}, {"text": "The sum is 5."}]},
    )
    config = write_config(tmp_path, agent, name="agents.json")
    code = (
        "import asyncio, json, sys\n"
        "from runrelay.embedded._runtime import Runrelay\n"
        f"bot = Runrelay.from_config({str(config)!r}, {str(tmp_path)!r})\n"
        "async def main():\n"
        "    async with bot:\n"
        "        return await bot.run('2 + 3?', session_key='k')\n"
        "result = asyncio.run(main())\n"
        "server = ('redis', 'celery', 'kombu', 'sqlmodel', 'sqlalchemy', 'fastapi', 'starlette',"
        " 'uvicorn', 'alembic', 'yaml', 'pydantic_settings', 'api_shim', 'worker', 'mcp')\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in server)\n"
        "print(json.dumps({'content': result.content, 'server': loaded}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path.cwd()
    )
    assert json.loads(done.stdout) == {"content": "The sum is 5.", "server": []}


def test_an_approver_that_fails_still_ends_the_event_log_with_done(tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []

    def broken(call: dict[str, Any]) -> bool:
        raise RuntimeError("approval service down")

    with pytest.raises(RuntimeError, match="approval service down"):
        run(payments(tmp_path), "Pay ACME", approve=broken, on_event=events.append)

    assert [e["type"] for e in events][-2:] == ["error", "done"]
    assert events[-1]["status"] == "failed"
    assert "approval service down" in events[-2]["message"]


def test_an_approver_must_answer_true_or_false(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="must return True or False"):
        run(payments(tmp_path), "Pay ACME", approve=lambda call: "yes")


def test_unreadable_config_and_session_files_get_the_sdks_errors(tmp_path: Path) -> None:
    latin1 = tmp_path / "agents.json"
    latin1.write_bytes('{"modules": [], "x": "caf\xe9"}'.encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        Runrelay.from_config(latin1, tmp_path)

    bot = payments(tmp_path)
    session = tmp_path / "sessions" / session_file_name("s1")
    session.parent.mkdir(parents=True, exist_ok=True)
    session.write_bytes(b"\xff\xfe not json")
    with pytest.raises(SessionError):
        run(bot, "Pay ACME", session_key="s1")


def test_time_waiting_for_the_approver_does_not_count_against_the_timeout(
    tmp_path: Path,
) -> None:
    config = yaml.safe_load(DEMO_AGENTS_CONFIG.read_text())
    for module in config["modules"]:
        for agent in module["agents"]:
            if agent["name"] == "payments-officer":
                agent["timeout_s"] = 1.0
    path = tmp_path / "agents.json"
    path.write_text(json.dumps(config))
    bot = Runrelay.from_config(path, tmp_path, agent="bank payments", environ={})

    async def slow_person(call: dict[str, Any]) -> bool:
        await asyncio.sleep(1.5)
        return True

    result = run(bot, "Pay ACME", approve=slow_person)

    payment = next(t for t in result.tools_used if t.name == "send_payment")
    assert payment.result["status"] == "sent"
