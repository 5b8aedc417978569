"""`runrelay tenants create|update|show` and `runrelay keys create|list|revoke`, and limits set
from the command line taking effect at admission."""

from __future__ import annotations

import json
import secrets
import time

import httpx
from click.testing import CliRunner

from runrelay.cli._main import main as cli
from runrelay.server.settings import Settings
from runrelay.server.store import KEY_CACHE_S


def _env(settings: Settings) -> dict[str, str | None]:
    return {
        "REDIS_URL": settings.redis_url,
        "DATABASE_URL": settings.database_url,
        "RUNRELAY_DATABASE_SCHEMA": settings.database_schema,
        "RUNRELAY_REDIS_PREFIX": settings.redis_prefix,
    }


def test_tenant_limits_from_the_cli_apply_at_admission(settings: Settings, api: str) -> None:
    runner = CliRunner()
    env = _env(settings)
    name = f"cli-{secrets.token_hex(4)}"

    def run(*args: str) -> str:
        result = runner.invoke(cli, list(args), env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.stdout

    shown = json.loads(
        run(
            "tenants",
            "create",
            name,
            "--max-concurrent-runs",
            "1",
            "--token-budget",
            "50000",
            "--budget-period",
            "day",
        )
    )
    assert shown["limits"]["max_concurrent_runs"] == 1
    assert shown["limits"]["token_budget"] == 50000 and shown["limits"]["budget_period"] == "day"
    assert shown["limits"]["max_queued_runs"] == settings.default_max_queued_runs, "a default"
    assert shown["own_limits"] == {
        "max_concurrent_runs": 1,
        "token_budget": 50000,
        "budget_period": "day",
    }
    shown = json.loads(run("tenants", "update", name, "--max-queued-runs", "0"))
    assert shown["limits"]["max_queued_runs"] == 0 and shown["limits"]["max_concurrent_runs"] == 1
    assert json.loads(run("tenants", "show", name)) == shown
    again = runner.invoke(cli, ["tenants", "create", name], env=env)
    assert again.exit_code != 0 and "already exists" in again.output

    key = run("keys", "create", "--tenant", name).strip()
    listed = run("keys", "list", "--tenant", name)
    assert key[:12] + "..." in listed and key not in listed, "only the prefix is shown"
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=api, headers=headers, timeout=30) as http:
        body = {"agent": "slow-analyst", "message": "go"}
        assert http.post("/v1/runs", json=body).status_code == 202
        refused = http.post("/v1/runs", json=body)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "concurrency_limit"
        result = runner.invoke(cli, ["keys", "revoke", key[:12] + "..."], env=env)
        assert result.exit_code == 0, result.output
        # The API process trusts its answer about a key for KEY_CACHE_S.
        deadline = time.monotonic() + 10 * KEY_CACHE_S
        while http.get("/v1/usage").status_code != 401:
            assert time.monotonic() < deadline, "the revoked key is still accepted"
            time.sleep(0.05)
    listed = run("keys", "list", "--tenant", name)
    assert listed.splitlines()[1].split("\t")[-1] != "-", "the revocation time is listed"
