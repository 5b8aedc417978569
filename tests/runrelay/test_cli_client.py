"""The client commands of `runrelay` against the real shim: run, runs, shortcuts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner, Result

from runrelay.cli._main import main
from tests.conftest import TenantKey


@pytest.fixture
def cli(api: str, tenant: TenantKey):
    def invoke(*args: str) -> Result:
        return CliRunner().invoke(
            main, list(args), env={"RUNRELAY_API_KEY": tenant.key, "RUNRELAY_BASE_URL": api}
        )

    return invoke


def test_run_streams_text_tool_calls_usage_and_the_run_id(cli) -> None:
    result = cli("run", "bank credit-analyst", "Assess ACME Corp")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "The credit score and the financials point the same way." in out
    assert "⚙ lookup_credit_score" in out
    assert "■ completed" in out and "tokens" in out
    run_id = out.rsplit("run ", 1)[1].split()[0]
    assert run_id.startswith("run_")
    got = cli("runs", "get", run_id)
    assert json.loads(got.output)["status"] == "completed"


def test_run_json_prints_one_event_per_line(cli) -> None:
    result = cli("run", "credit-risk-analyst", "--input", '{"company": "ACME Corp"}', "--json")
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.output.splitlines()]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["type"] == "run_queued" and events[-1]["type"] == "done"


def test_run_of_an_unknown_agent_fails_with_the_servers_message(cli) -> None:
    result = cli("run", "bank credit-analyts", "hi")
    assert result.exit_code == 1
    assert "404 agent_not_found" in result.output and "bank credit-analyst" in result.output


def test_runs_list_get_and_events(cli) -> None:
    run_id = cli("run", "slow-analyst", "go", "--json").output.splitlines()[0]
    run_id = json.loads(run_id)["run_id"]
    listed = cli("runs", "list")
    assert listed.exit_code == 0 and run_id in listed.output and "completed" in listed.output
    assert json.loads(cli("runs", "list", "--json").output)["data"][0]["id"] == run_id
    events = cli("runs", "events", run_id, "--after", "40", "--json")
    seqs = [json.loads(line)["seq"] for line in events.output.splitlines()]
    assert seqs[0] == 41 and seqs == list(range(41, 41 + len(seqs)))
    pretty = cli("runs", "events", run_id)
    assert "■ completed" in pretty.output
    assert cli("runs", "get", "run_nope").exit_code == 1


def test_runs_cancel_reports_a_missing_run(cli) -> None:
    result = cli("runs", "cancel", "run_doesnotexist")
    assert result.exit_code == 1 and "404" in result.output


def test_shortcuts_list_and_resolve(cli) -> None:
    listed = cli("shortcuts", "list", "--module", "bank")
    assert listed.exit_code == 0 and "bank credit-analyst" in listed.output
    resolved = cli("shortcuts", "resolve", "bank", "credit-analyst")
    assert resolved.exit_code == 0
    assert "bank.credit-risk-analyst (Credit Risk Analyst)" in resolved.output
    typo = cli("shortcuts", "resolve", "bank credit-analyts")
    assert typo.exit_code == 1 and "Did you mean: bank credit-analyst" in typo.output


def test_the_installed_command_runs_an_agent(api: str, tenant: TenantKey) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "runrelay",
            "run",
            "--api-key",
            tenant.key,
            "--base-url",
            api,
            "credit-risk-analyst",
            "Assess ACME Corp",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "■ completed" in out.stdout and "queued" in out.stderr


def test_runs_approve_resumes_a_paused_run(cli, api: str, tenant: TenantKey) -> None:
    import httpx

    from tests.api_shim.test_approvals import PAYMENT, wait_status
    from tests.sse import wait_finished

    with httpx.Client(base_url=api, headers=tenant.headers) as http:
        run_id = http.post("/v1/runs", json=PAYMENT).json()["id"]
        paused = wait_status(http, run_id, "requires_action")
        call_id = paused["required_action"]["tool_calls"][0]["tool_call_id"]

        wrong = cli("runs", "approve", run_id, "call_nope")
        assert wrong.exit_code == 1 and "call_nope" in wrong.output
        rejected = cli("runs", "approve", run_id, call_id, "--reject", "--reason", "not today")
        assert rejected.exit_code == 0 and run_id in rejected.output

        assert wait_finished(http, run_id)["status"] == "completed"
