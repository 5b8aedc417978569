"""Rough edges a new user hit (issue 14), in the SDK and the CLI: no key, a base URL without
a scheme, a server that is down, paging, thread ids, agents list, --version, exit statuses."""

from __future__ import annotations

import json

import httpx
import pytest
from click.testing import CliRunner, Result

from runrelay import Client, __version__
from runrelay.cli._main import main
from runrelay.errors import APIConnectionError, ValidationError
from runrelay.server.embedded_redis import free_port
from tests.conftest import TenantKey
from tests.sse import wait_finished


def invoke(*args: str, env: dict[str, str]) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


@pytest.fixture
def env(api: str, tenant: TenantKey) -> dict[str, str]:
    return {"RUNRELAY_API_KEY": tenant.key, "RUNRELAY_BASE_URL": api}


def test_client_without_a_key_fails_at_construction_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RUNRELAY_API_KEY", raising=False)
    with pytest.raises(ValidationError, match="RUNRELAY_API_KEY") as caught:
        Client()
    assert caught.value.param == "api_key"


def test_cli_without_a_key_names_the_variable_and_the_flag(api: str) -> None:
    result = invoke("runs", "list", env={"RUNRELAY_API_KEY": "", "RUNRELAY_BASE_URL": api})
    assert result.exit_code == 1
    assert "RUNRELAY_API_KEY" in result.output and "--api-key" in result.output


def test_a_base_url_without_scheme_is_accepted(env: dict[str, str], api: str) -> None:
    bare = api.removeprefix("http://")
    result = invoke("runs", "list", "--base-url", bare, env=env)
    assert result.exit_code == 0, result.output
    with Client(env["RUNRELAY_API_KEY"], base_url=bare) as client:
        assert client.base_url == api


def test_a_server_that_is_down_is_named_at_once(env: dict[str, str]) -> None:
    down = f"127.0.0.1:{free_port()}"
    with (
        Client(env["RUNRELAY_API_KEY"], base_url=down) as client,
        pytest.raises(APIConnectionError) as caught,
    ):
        list(client.runs.stream("slow-analyst", message="x"))
    message = str(caught.value)
    assert f"http://{down}" in message and "could not be resumed" not in message
    result = invoke("run", "slow-analyst", "x", "--base-url", down, env=env)
    assert result.exit_code == 1 and f"http://{down}" in result.output


def test_run_prints_the_thread_id(env: dict[str, str]) -> None:
    result = invoke(
        "run", "bank credit-analyst", "Assess ACME Corp", "--thread", "th-print", env=env
    )
    assert result.exit_code == 0, result.output
    assert "thread th-print" in result.output


def test_runs_list_pages_with_cursor_and_filters_by_thread(
    env: dict[str, str], client: httpx.Client
) -> None:
    ids = [
        client.post(
            "/v1/runs", json={"agent": "slow-analyst", "message": "x", "thread_id": t}
        ).json()["id"]
        for t in ("th-a", "th-b", "th-b")
    ]
    first = invoke("runs", "list", "--limit", "2", env=env)
    assert first.exit_code == 0, first.output
    assert ids[2] in first.output and ids[1] in first.output and ids[0] not in first.output
    hint = next(line for line in first.output.splitlines() if line.startswith("more:"))
    cursor = hint.split("--cursor ")[1].split()[0]
    second = invoke("runs", "list", "--limit", "2", "--cursor", cursor, env=env)
    assert ids[0] in second.output and "more:" not in second.output
    thread_b = invoke("runs", "list", "--thread", "th-b", "--json", env=env)
    assert [r["id"] for r in json.loads(thread_b.output)["data"]] == [ids[2], ids[1]]
    for run_id in ids:
        client.post(f"/v1/runs/{run_id}/cancel")


def test_agents_list_shows_shortcuts_and_tags(env: dict[str, str]) -> None:
    result = invoke("agents", "list", env=env)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("credit-risk-analyst"))
    assert "bank credit-analyst" in lines[at + 1] and "production→r" in lines[at + 1]


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_run_and_runs_events_agree_on_the_exit_status_of_a_cancelled_run(
    env: dict[str, str], client: httpx.Client
) -> None:
    run = client.post("/v1/runs", json={"agent": "slow-analyst", "message": "x"}).json()
    client.post(f"/v1/runs/{run['id']}/cancel")
    assert wait_finished(client, run["id"])["status"] == "cancelled"
    events = invoke("runs", "events", run["id"], env=env)
    assert events.exit_code == 3, events.output
    assert "■ cancelled" in events.output
    completed = client.post("/v1/runs", json={"agent": "bank credit-analyst", "message": "x"})
    wait_finished(client, completed.json()["id"])
    assert invoke("runs", "events", completed.json()["id"], env=env).exit_code == 0
