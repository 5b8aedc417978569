"""`runrelay schedules`: create, list, get, pause, resume, trigger and delete cron schedules
through the SDK (`--api-key` / `RUNRELAY_API_KEY`, `--base-url` / `RUNRELAY_BASE_URL`).

Times are shown in each schedule's own time zone, with the UTC offset, so they read against its
cron. An API error is one line on stderr and exit status 1; a usage error exits 2.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click

from runrelay.cli._client_commands import client_options, json_object, sdk_client, to_json
from runrelay.types import ScheduleObject


def _when(moment: datetime | None, timezone: str) -> str:
    if moment is None:
        return "-"
    # Without a tz database on this machine (e.g. Windows without tzdata), UTC.
    with contextlib.suppress(ZoneInfoNotFoundError):
        moment = moment.astimezone(ZoneInfo(timezone))
    return moment.isoformat(sep=" ", timespec="seconds").replace("+00:00", "Z")


def _next_run(schedule: ScheduleObject) -> str:
    return "paused" if schedule.paused else _when(schedule.next_run_at, schedule.timezone)


def _summary(schedule: ScheduleObject) -> str:
    return f"{schedule.id}  {schedule.cron} ({schedule.timezone})  next run {_next_run(schedule)}"


@click.group()
def schedules() -> None:
    """Cron schedules that make runs (fired by `runrelay beat`)."""


@schedules.command("create")
@click.option(
    "--cron", required=True, help="'*/5 * * * *' (minute hour day month weekday) or @hourly, ..."
)
@click.option("--agent", required=True, help="agent name or shortcut")
@click.option("--message", default=None, help="the message each run gets")
@click.option("--input", "input_json", default=None, help="the input as a JSON object")
@click.option("--timezone", default=None, help="IANA time zone of the cron  [default: UTC]")
@click.option(
    "--overlap",
    type=click.Choice(["skip", "enqueue", "cancel_previous"]),
    default=None,
    help="while the last run is still active  [default: skip]",
)
@click.option(
    "--catch-up",
    type=click.Choice(["none", "latest"]),
    default=None,
    help="after downtime, fire the latest missed tick once  [default: none]",
)
@click.option("--paused", is_flag=True, default=None, help="create it paused")
@click.option("--webhook", default=None, help="URL that gets each run's lifecycle events")
@click.option("--start-at", default=None, help="first moment it may fire, ISO 8601 with offset")
@click.option("--end-at", default=None, help="last moment it may fire, ISO 8601 with offset")
@click.option("--metadata", "metadata_json", default=None, help="a JSON object each run carries")
@click.option("--thread", "thread_id", default=None, help="every run continues this thread")
@click.option("--json", "as_json", is_flag=True, help="print the schedule as JSON")
@client_options
def schedules_create(
    cron: str,
    agent: str,
    message: str | None,
    input_json: str | None,
    timezone: str | None,
    overlap: str | None,
    catch_up: str | None,
    paused: bool | None,
    webhook: str | None,
    start_at: str | None,
    end_at: str | None,
    metadata_json: str | None,
    thread_id: str | None,
    as_json: bool,
    api_key: str | None,
    base_url: str | None,
) -> None:
    """Create a schedule that runs AGENT on --message / --input at each --cron tick."""
    input_value = json_object(input_json, "--input")
    if message is None and input_value is None:
        raise click.UsageError("give --message or --input")
    with sdk_client(api_key, base_url) as client:
        created = client.schedules.create(
            agent,
            cron=cron,
            timezone=timezone,
            start_at=start_at,
            end_at=end_at,
            overlap=overlap,  # type: ignore[arg-type]  # click.Choice checked it
            catch_up=catch_up,  # type: ignore[arg-type]  # click.Choice checked it
            paused=paused,
            message=message,
            input=input_value,
            metadata=json_object(metadata_json, "--metadata"),
            thread_id=thread_id,
            webhook=webhook,
        )
    click.echo(to_json(created.model_dump(mode="json")) if as_json else _summary(created))


@schedules.command("list")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 100))
@click.option("--cursor", default=None, help="the next page, as the previous one printed it")
@click.option("--json", "as_json", is_flag=True)
@client_options
def schedules_list(
    limit: int, cursor: str | None, as_json: bool, api_key: str | None, base_url: str | None
) -> None:
    """Your tenant's schedules, newest first: id, cron, time zone, next run, last status."""
    with sdk_client(api_key, base_url) as client:
        page = client.schedules.list(limit=limit, cursor=cursor)
    if as_json:
        click.echo(to_json(page.model_dump(mode="json")))
        return
    if not page.data:
        click.echo("no schedules", err=True)
        return
    rows = [("ID", "CRON", "TIMEZONE", "NEXT RUN", "LAST STATUS")]
    rows += [(s.id, s.cron, s.timezone, _next_run(s), s.last_status or "-") for s in page.data]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if page.has_more:
        click.echo(f"more: runrelay schedules list --cursor {page.next_cursor}", err=True)


@schedules.command("get")
@click.argument("schedule_id")
@client_options
def schedules_get(schedule_id: str, api_key: str | None, base_url: str | None) -> None:
    """One schedule, as JSON (its run request, next and last run)."""
    with sdk_client(api_key, base_url) as client:
        click.echo(to_json(client.schedules.get(schedule_id).model_dump(mode="json")))


@schedules.command("pause")
@click.argument("schedule_id")
@client_options
def schedules_pause(schedule_id: str, api_key: str | None, base_url: str | None) -> None:
    """Stop firing until resumed."""
    with sdk_client(api_key, base_url) as client:
        paused = client.schedules.pause(schedule_id)
    click.echo(f"{paused.id}  paused")


@schedules.command("resume")
@click.argument("schedule_id")
@client_options
def schedules_resume(schedule_id: str, api_key: str | None, base_url: str | None) -> None:
    """Fire again from the next tick (ticks missed while paused do not fire)."""
    with sdk_client(api_key, base_url) as client:
        resumed = client.schedules.resume(schedule_id)
    click.echo(_summary(resumed))


@schedules.command("trigger")
@click.argument("schedule_id")
@client_options
def schedules_trigger(schedule_id: str, api_key: str | None, base_url: str | None) -> None:
    """Make one run now, outside the cron; prints the run id and status."""
    with sdk_client(api_key, base_url) as client:
        run = client.schedules.trigger(schedule_id)
    click.echo(f"{run.id}  {run.status}")
    click.echo(f"  follow it: runrelay runs events {run.id}", err=True)


@schedules.command("delete")
@click.argument("schedule_id")
@client_options
def schedules_delete(schedule_id: str, api_key: str | None, base_url: str | None) -> None:
    """Delete a schedule; the runs it made stay."""
    with sdk_client(api_key, base_url) as client:
        client.schedules.delete(schedule_id)
    click.echo(f"{schedule_id}  deleted")
