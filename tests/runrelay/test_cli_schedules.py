"""`runrelay schedules` against the real shim and worker: create, list (next run times in each
schedule's time zone, last status), get, pause, resume, trigger, delete, and the errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo

import httpx
import pytest
from click.testing import CliRunner, Result

from runrelay.cli._main import main
from tests.conftest import TenantKey
from tests.sse import wait_finished

Cli = Callable[..., Result]


@pytest.fixture
def cli(api: str, tenant: TenantKey) -> Cli:
    def invoke(*args: str) -> Result:
        return CliRunner().invoke(
            main, list(args), env={"RUNRELAY_API_KEY": tenant.key, "RUNRELAY_BASE_URL": api}
        )

    return invoke


def create(cli: Cli, *args: str) -> dict:
    result = cli("schedules", "create", "--agent", "credit-risk-analyst", *args, "--json")
    assert result.exit_code == 0, result.output
    schedule: dict = json.loads(result.stdout)
    return schedule


def shown(moment: str, timezone: str) -> str:
    """How the CLI shows a time: in the schedule's zone, with its offset."""
    local = datetime.fromisoformat(moment).astimezone(ZoneInfo(timezone))
    return local.isoformat(sep=" ", timespec="seconds")


def test_create_then_list_shows_each_next_run_in_its_time_zone(cli: Cli) -> None:
    result = cli(
        "schedules",
        "create",
        "--cron",
        "*/5 * * * *",
        "--agent",
        "credit-risk-analyst",
        "--message",
        "Assess ACME Corp",
        "--timezone",
        "Europe/Berlin",
    )
    assert result.exit_code == 0, result.output
    schedule_id = result.stdout.split()[0]
    assert schedule_id.startswith("sch_") and "*/5 * * * * (Europe/Berlin)" in result.stdout
    berlin = json.loads(cli("schedules", "get", schedule_id).stdout)
    assert berlin["run"] == {"agent": "credit-risk-analyst", "message": "Assess ACME Corp"}
    tokyo = create(cli, "--cron", "@daily", "--timezone", "Asia/Tokyo", "--message", "daily")

    listed = cli("schedules", "list")
    assert listed.exit_code == 0, listed.output
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["ID", "CRON", "TIMEZONE", "NEXT", "RUN", "LAST", "STATUS"]
    assert [row.split()[0] for row in rows] == [tokyo["id"], schedule_id]  # newest first
    berlin_next = shown(berlin["next_run_at"], "Europe/Berlin")
    assert berlin_next[-6:] in ("+01:00", "+02:00") and berlin_next[-9:-6] == ":00"
    assert int(berlin_next[-11:-9]) % 5 == 0  # */5: on a minute divisible by 5
    assert f"Europe/Berlin  {berlin_next}  -" in rows[1]
    assert "@daily" in rows[0] and shown(tokyo["next_run_at"], "Asia/Tokyo") in rows[0]
    assert " 00:00:00+09:00" in rows[0]

    page = cli("schedules", "list", "--limit", "1")
    assert len(page.stdout.splitlines()) == 2
    assert f"--cursor {tokyo['id']}" in page.stderr
    rest = cli("schedules", "list", "--limit", "1", "--cursor", tokyo["id"])
    assert rest.stdout.splitlines()[1].startswith(schedule_id)


def test_create_takes_every_timing_option(cli: Cli) -> None:
    schedule = create(
        cli,
        "--cron",
        "0 9 * * 1-5",
        "--message",
        "weekday report",
        "--input",
        '{"company": "ACME Corp"}',
        "--timezone",
        "America/New_York",
        "--overlap",
        "enqueue",
        "--catch-up",
        "latest",
        "--paused",
        "--webhook",
        "https://example.com/hooks",
        "--start-at",
        "2030-01-01T00:00:00Z",
        "--end-at",
        "2031-01-01T00:00:00+01:00",
        "--metadata",
        '{"team": "risk"}',
    )
    assert schedule["overlap"] == "enqueue" and schedule["catch_up"] == "latest"
    assert schedule["paused"] is True and schedule["next_run_at"] is None
    assert schedule["start_at"] == "2030-01-01T00:00:00Z"
    assert schedule["end_at"] == "2030-12-31T23:00:00Z"
    assert schedule["run"]["webhook"] == {"url": "https://example.com/hooks"}
    assert schedule["run"]["input"] == {"company": "ACME Corp"}
    assert schedule["run"]["metadata"] == {"team": "risk"}


def test_pause_resume_trigger_and_delete(cli: Cli, client: httpx.Client) -> None:
    schedule = create(cli, "--cron", "0 9 * * *", "--message", "Assess ACME Corp")
    sid = schedule["id"]

    paused = cli("schedules", "pause", sid)
    assert paused.exit_code == 0 and paused.stdout.strip() == f"{sid}  paused"
    assert cli("schedules", "list").stdout.splitlines()[1].split()[-2:] == ["paused", "-"]
    resumed = cli("schedules", "resume", sid)
    assert resumed.exit_code == 0
    assert shown(schedule["next_run_at"], "UTC").replace("+00:00", "Z") in resumed.stdout

    triggered = cli("schedules", "trigger", sid)
    assert triggered.exit_code == 0, triggered.output
    run_id, status = triggered.stdout.split()
    assert run_id.startswith("run_") and status in ("queued", "running")
    assert f"runrelay runs events {run_id}" in triggered.stderr
    run = wait_finished(client, run_id)
    assert run["schedule_id"] == sid and run["status"] == "completed"
    assert cli("schedules", "list").stdout.splitlines()[1].split()[-1] == "completed"

    deleted = cli("schedules", "delete", sid)
    assert deleted.exit_code == 0 and deleted.stdout.strip() == f"{sid}  deleted"
    gone = cli("schedules", "get", sid)
    assert gone.exit_code == 1 and "404 schedule_not_found" in gone.stderr
    assert cli("schedules", "list").stderr.strip() == "no schedules"


def test_a_bad_cron_is_a_clear_error_naming_the_field(cli: Cli) -> None:
    result = cli(
        "schedules", "create", "--cron", "61 * * * *", "--agent", "credit-risk-analyst",
        "--message", "hi",
    )  # fmt: skip
    assert result.exit_code == 1
    assert "422 validation_error: cron '61 * * * *' is not valid" in result.stderr
    assert "out of range" in result.stderr
    zone = cli(
        "schedules", "create", "--cron", "@hourly", "--timezone", "Mars/Olympus",
        "--agent", "credit-risk-analyst", "--message", "hi",
    )  # fmt: skip
    assert zone.exit_code == 1 and "timezone must be an IANA time zone" in zone.stderr
    fields = cli("schedules", "create", "--cron", "* * *", "--agent", "x", "--message", "hi")
    assert fields.exit_code == 1 and "cron must have 5 fields" in fields.stderr
    assert cli("schedules", "list").stderr.strip() == "no schedules"


def test_usage_errors_and_unknown_ids(cli: Cli) -> None:
    no_input = cli("schedules", "create", "--cron", "@daily", "--agent", "credit-risk-analyst")
    assert no_input.exit_code == 2 and "give --message or --input" in no_input.output
    overlap = cli(
        "schedules", "create", "--cron", "@daily", "--agent", "credit-risk-analyst",
        "--message", "hi", "--overlap", "sometimes",
    )  # fmt: skip
    assert overlap.exit_code == 2 and "--overlap" in overlap.output
    for action in ("pause", "resume", "trigger", "delete", "get"):
        missing = cli("schedules", action, "sch_doesnotexist")
        assert missing.exit_code == 1, action
        assert "404 schedule_not_found" in missing.stderr, action


def test_trigger_while_the_last_run_is_active_exits_1(cli: Cli, client: httpx.Client) -> None:
    slow = cli("schedules", "create", "--cron", "@daily", "--agent", "slow-analyst",
               "--message", "slowly", "--json")  # fmt: skip
    sid = json.loads(slow.stdout)["id"]
    first = cli("schedules", "trigger", sid)
    assert first.exit_code == 0, first.output
    second = cli("schedules", "trigger", sid)
    assert second.exit_code == 1 and "409 trigger_skipped" in second.stderr
    assert first.stdout.split()[0] in second.stderr
    client.post(f"/v1/runs/{first.stdout.split()[0]}/cancel")
