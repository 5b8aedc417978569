"""The agents config file and the registry that resolves names, ids, shortcuts and tags."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from runrelay.agent.config import AgentNotFound, ConfigError, Registry, load_config
from runrelay.server.settings import DEMO_AGENTS_CONFIG


def minimal(**agent: Any) -> dict[str, Any]:
    return {
        "modules": [{"key": "ops", "name": "Operations", "agents": [{"name": "triager", **agent}]}]
    }


def write(tmp_path: Path, config: Any, suffix: str = ".yaml") -> Path:
    path = tmp_path / f"agents{suffix}"
    path.write_text(json.dumps(config) if suffix == ".json" else yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def demo() -> Registry:
    return Registry.from_file(DEMO_AGENTS_CONFIG, {})


def test_demo_config_loads_with_defaults_when_the_environment_is_empty(demo: Registry) -> None:
    assert [a.name for a in demo.agents] == [
        "credit-risk-analyst",
        "slow-analyst",
        "openai-analyst",
        "payments-officer",
    ]
    openai = demo.config.providers["openai"]
    assert openai.base_url == "https://api.openai.com/v1"
    assert openai.api_key == ""
    assert (openai.timeout_s, openai.max_retries) == (60.0, 2)
    assert demo.resolve("openai-analyst").model == "gpt-4o-mini"


def test_interpolation_reads_the_mapping_passed_in() -> None:
    environ = {
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
        "OPENAI_API_KEY": "sk-x",
        "OPENAI_TIMEOUT_S": "2.5",
        "OPENAI_MODEL": "llama3",
    }

    registry = Registry.from_file(DEMO_AGENTS_CONFIG, environ)

    openai = registry.config.providers["openai"]
    assert (openai.base_url, openai.api_key, openai.timeout_s) == (
        "http://127.0.0.1:9/v1",
        "sk-x",
        2.5,
    )
    assert registry.resolve("openai-analyst").model == "llama3"


def test_interpolation_without_default_gives_empty_and_leaves_plain_text_alone(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        minimal(
            description="key=${MISSING}; cost $5 {not a ref}",
            instructions="Team ${TEAM:-core} of ${ORG}",
        ),
    )

    agent = load_config(path, {"ORG": "acme"}).modules[0].agents[0]

    assert agent.description == "key=; cost $5 {not a ref}"
    assert agent.instructions == "Team core of acme"


def test_default_applies_when_the_variable_is_set_but_empty(tmp_path: Path) -> None:
    """`OPENAI_BASE_URL=` in an env file must not turn the base URL into an empty string."""
    environ = {"OPENAI_BASE_URL": "", "OPENAI_TIMEOUT_S": ""}
    registry = Registry.from_file(DEMO_AGENTS_CONFIG, environ)

    openai = registry.config.providers["openai"]
    assert (openai.base_url, openai.timeout_s) == ("https://api.openai.com/v1", 60.0)


def test_json_config_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, minimal(model="${MODEL:-m}"), suffix=".json")

    config = load_config(path, {"MODEL": "gpt-x"})

    assert config.modules[0].agents[0].model == "gpt-x"
    assert list(config.providers) == ["scripted"]


def test_agents_learn_their_module(tmp_path: Path) -> None:
    agent = load_config(write(tmp_path, minimal()), {}).modules[0].agents[0]

    assert (agent.id, agent.module_key, agent.module_name) == ("ops.triager", "ops", "Operations")
    assert agent.title == "Triager"


def test_missing_file_is_a_config_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"

    with pytest.raises(ConfigError, match=r"cannot read agents config .*nope\.yaml"):
        load_config(path, {})


def test_malformed_yaml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "agents.yaml"
    path.write_text("modules: [\n  - key: ops\n")

    with pytest.raises(ConfigError, match="is not valid yaml"):
        load_config(path, {})


def test_malformed_json_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "agents.json"
    path.write_text('{"modules": [}')

    with pytest.raises(ConfigError, match="is not valid json"):
        load_config(path, {})


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (minimal(name="Credit Analyst"), "modules.0.agents.0.name"),
        (minimal(max_turns=0), "modules.0.agents.0.max_turns"),
        (minimal(temperature=3.5), "modules.0.agents.0.temperature"),
        (minimal(colour="blue"), "modules.0.agents.0.colour"),
        (minimal(script={"turns": [{"text": "x", "chunks": 0}]}), "script.turns.0.chunks"),
        ({"modules": [{"key": "ops", "agents": []}]}, "modules.0.name"),
        ({"agents": []}, "modules"),
        (None, "AgentsConfig"),
    ],
)
def test_invalid_config_is_a_config_error_naming_the_field(
    tmp_path: Path, config: Any, expected: str
) -> None:
    path = write(tmp_path, config)

    with pytest.raises(ConfigError) as caught:
        load_config(path, {})

    assert str(path) in str(caught.value)
    assert expected in str(caught.value)


def test_duplicate_agent_names_are_refused(tmp_path: Path) -> None:
    config = minimal()
    config["modules"].append({"key": "sec", "name": "Security", "agents": [{"name": "triager"}]})

    with pytest.raises(ConfigError, match="agent name 'triager' is used twice"):
        load_config(write(tmp_path, config), {})


def test_one_tag_on_two_agents_is_refused(tmp_path: Path) -> None:
    config = minimal(tags=["production"])
    config["modules"][0]["agents"].append({"name": "helper", "tags": ["production"]})

    with pytest.raises(ConfigError, match="tag 'production' is on both 'triager' and 'helper'"):
        load_config(write(tmp_path, config), {})


def test_unknown_provider_is_refused_with_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"provider 'anthropic'.*\(have: scripted\)"):
        load_config(write(tmp_path, minimal(provider="anthropic")), {})


def test_unknown_provider_type_is_refused(tmp_path: Path) -> None:
    config = {"providers": {"mine": {"type": "bedrock"}}, **minimal(provider="mine")}

    with pytest.raises(ConfigError, match=r"providers\.mine\.type"):
        load_config(write(tmp_path, config), {})


def test_one_shortcut_claimed_by_two_agents_of_a_module_is_refused(tmp_path: Path) -> None:
    config = minimal(shortcuts=["triage"])
    config["modules"][0]["agents"].append({"name": "helper", "shortcuts": ["triage"]})

    with pytest.raises(ConfigError, match="triage"):
        Registry.from_file(write(tmp_path, config), {})


@pytest.mark.parametrize(
    "ref",
    [
        "credit-risk-analyst",
        "bank.credit-risk-analyst",
        "bank credit-analyst",
        "bank credit-risk-analyst",
        "  bank \t credit-analyst\n",
    ],
)
def test_resolve_by_name_id_or_shortcut(demo: Registry, ref: str) -> None:
    assert demo.resolve(ref).id == "bank.credit-risk-analyst"


def test_shortcut_needs_its_module_key(demo: Registry) -> None:
    with pytest.raises(AgentNotFound):
        demo.resolve("credit-analyst")


def test_a_misspelt_name_suggests_close_matches(demo: Registry) -> None:
    with pytest.raises(AgentNotFound) as caught:
        demo.resolve("credit-risk-analist")

    assert caught.value.suggestions[0] == "credit-risk-analyst"
    assert caught.value.ref == "credit-risk-analist"
    assert "did you mean 'credit-risk-analyst'" in str(caught.value)


def test_a_misspelt_shortcut_suggests_shortcuts(demo: Registry) -> None:
    with pytest.raises(AgentNotFound) as caught:
        demo.resolve("bank credit-analist")

    assert "bank credit-analyst" in caught.value.suggestions
    assert all(" " in s for s in caught.value.suggestions)


def test_a_name_unlike_any_agent_suggests_nothing(demo: Registry) -> None:
    with pytest.raises(AgentNotFound) as caught:
        demo.resolve("zzzzzz")

    assert caught.value.suggestions == []
    assert str(caught.value) == "no agent named 'zzzzzz'"


def test_by_tag_finds_the_tagged_agent_and_lists_tags_when_missing(demo: Registry) -> None:
    assert demo.by_tag("production").name == "credit-risk-analyst"

    with pytest.raises(AgentNotFound) as caught:
        demo.by_tag("staging")

    assert caught.value.suggestions == ["tag:production"]


def test_provider_of_an_agent(demo: Registry) -> None:
    assert demo.provider(demo.resolve("bank slow")).type == "scripted"
    assert demo.provider(demo.resolve("openai-analyst")).type == "openai"


def test_mcp_servers_are_read_with_the_environment_interpolated(tmp_path: Path) -> None:
    servers = [
        {"name": "files", "transport": "stdio", "command": "mcp-files", "args": ["/data"]},
        {
            "name": "search",
            "transport": "streamable_http",
            "url": "${SEARCH_URL:-https://mcp.example.com/mcp}",
            "headers": {"Authorization": "Bearer ${SEARCH_TOKEN}"},
            "tools": ["web_search"],
            "approval_mode": "always_require",
        },
    ]
    agent = load_config(write(tmp_path, minimal(mcp_servers=servers)), {"SEARCH_TOKEN": "t0k"})
    files, search = agent.modules[0].agents[0].mcp_servers

    assert (files.transport, files.command, files.args) == ("stdio", "mcp-files", ["/data"])
    assert search.url == "https://mcp.example.com/mcp"
    assert search.headers == {"Authorization": "Bearer t0k"}
    assert (search.tools, search.approval_mode) == (["web_search"], "always_require")


@pytest.mark.parametrize(
    ("servers", "expected"),
    [
        ([{"name": "files", "transport": "stdio"}], "transport stdio needs `command`"),
        (
            [{"name": "x", "transport": "stdio", "command": "a"}] * 2,
            "MCP server name 'x' is used twice",
        ),
    ],
)
def test_invalid_mcp_servers_are_a_config_error(
    tmp_path: Path, servers: list[dict[str, Any]], expected: str
) -> None:
    with pytest.raises(ConfigError, match=r"modules\.0\.agents\.0\.mcp_servers") as caught:
        load_config(write(tmp_path, minimal(mcp_servers=servers)), {})

    assert expected in str(caught.value)
