"""Agent revisions and tags: publishing stores a revision only when a definition changed and
moves tags; runs by tag, by id and pinned to a revision run exactly that revision's definition."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from runrelay import AgentRunParams, Client, NotFoundError
from runrelay.agent.config import Registry, load_config
from runrelay.cli._main import main
from runrelay.server.revisions import AgentCatalog, PublishError
from runrelay.server.settings import Settings
from tests.conftest import TenantKey

CONFIG = """
modules:
  - key: {module}
    name: Revision Tests
    agents:
      - name: echo
        model: scripted-echo
        script:
          turns:
            - text: "{text}"
              chunks: 2
      - name: other
        tags: [{declared}]
"""


@pytest.fixture
def module() -> str:
    return f"rev{secrets.token_hex(4)}"


@pytest.fixture
def sdk(api: str, tenant: TenantKey) -> Iterator[Client]:
    with Client(tenant.key, base_url=api) as client:
        yield client


def _write(path: Path, module: str, text: str, declared: str = "declared-x") -> Path:
    path.write_text(CONFIG.format(module=module, text=text, declared=declared))
    return path


def _publish(settings: Settings, config: Path, *args: str) -> str:
    env = {
        "DATABASE_URL": settings.database_url,
        "RUNRELAY_DATABASE_SCHEMA": settings.database_schema or "",
    }
    result = CliRunner().invoke(main, ["agents", "publish", str(config), *args], env=env)
    assert result.exit_code == 0, result.output
    return result.output


def test_publish_moves_the_tag_and_runs_use_the_revision_they_resolved(
    sdk: Client, settings: Settings, tmp_path: Path, module: str
) -> None:
    tag = f"prod-{module}"
    agent_id = f"{module}.echo"
    out = _publish(
        settings,
        _write(tmp_path / "a.yaml", module, "first answer"),
        "--tag",
        tag,
        "--agent",
        "echo",
    )
    assert f"{agent_id}: revision 1 (new)" in out and f"tag {tag} → {agent_id} revision 1" in out

    first = sdk.agents.run(AgentRunParams(tag=tag, message="hi"))
    assert (first.output, first.agent_id, first.agent_revision, first.agent_tag) == (
        "first answer",
        agent_id,
        1,
        tag,
    )

    out = _publish(
        settings,
        _write(tmp_path / "a.yaml", module, "second answer"),
        "--tag",
        tag,
        "--agent",
        "echo",
    )
    assert (
        f"{agent_id}: revision 2 (new)" in out and f"{module}.other: revision 1 (unchanged)" in out
    )
    second = sdk.agents.run(AgentRunParams(tag=tag, message="hi"))
    assert (second.output, second.agent_revision) == ("second answer", 2)
    newest = sdk.agents.run(AgentRunParams(agent_id=agent_id, message="hi"))
    assert (newest.output, newest.agent_revision) == ("second answer", 2)

    pinned = sdk.agents.run(AgentRunParams(agent_id=agent_id, revision=1, message="hi"))
    assert (pinned.output, pinned.agent_revision) == ("first answer", 1), (
        "the worker runs the pinned revision's definition"
    )
    assert sdk.runs.get(pinned.run_id).agent.revision == 1
    with pytest.raises(NotFoundError) as error:
        sdk.agents.run(AgentRunParams(agent_id=agent_id, revision=3, message="hi"))
    assert error.value.code == "revision_not_found" and "revision 3" in str(error.value)

    info = sdk.runs._transport.http.get(f"/v1/agents/{agent_id}").json()
    assert info["revision"] == 2, "the registry shows the newest revision"

    again = _publish(settings, tmp_path / "a.yaml")
    assert f"{agent_id}: revision 2 (unchanged)" in again and "tag" not in again


def test_a_tag_goes_to_the_agent_that_declares_it(
    sdk: Client, settings: Settings, tmp_path: Path, module: str
) -> None:
    declared = f"d-{module}"
    _publish(settings, _write(tmp_path / "b.yaml", module, "x", declared), "--tag", declared)
    result = sdk.agents.run(AgentRunParams(tag=declared, message="hi"))
    assert result.agent_id == f"{module}.other"


def test_publish_refuses_a_tag_it_cannot_place(
    settings: Settings, store, tmp_path: Path, module: str
) -> None:
    config = load_config(_write(tmp_path / "c.yaml", module, "x"), {})
    catalog = AgentCatalog(store.engine, Registry(config))
    with pytest.raises(PublishError, match="name one with --agent"):
        catalog.publish(config, ["nobody-declares-this"])
    with pytest.raises(PublishError, match="must match"):
        catalog.publish(config, ["Bad Tag"], "echo")
    result = CliRunner().invoke(
        main,
        ["agents", "publish", str(tmp_path / "c.yaml"), "--tag", "zz"],
        env={
            "DATABASE_URL": settings.database_url,
            "RUNRELAY_DATABASE_SCHEMA": settings.database_schema or "",
        },
    )
    assert result.exit_code == 1 and "name one with --agent" in result.output


def test_file_agents_without_published_revisions_run_as_revision_one(sdk: Client) -> None:
    result = sdk.agents.run(AgentRunParams(agent_id="bank.slow-analyst", revision=1, message="hi"))
    assert result.agent_revision == 1 and result.status == "completed"
    with pytest.raises(NotFoundError):
        sdk.agents.run(AgentRunParams(agent_id="bank.slow-analyst", revision=2, message="hi"))
