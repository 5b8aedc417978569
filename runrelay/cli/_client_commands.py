"""The client commands of `runrelay`: `run`, `runs`, `shortcuts`, `agents list` and
`agents publish`.

They talk to the API through the SDK (`--api-key` / `RUNRELAY_API_KEY`, `--base-url` /
`RUNRELAY_BASE_URL`), except `agents publish`, which writes revisions to the database
(`DATABASE_URL`) and needs the server extra.

Exit statuses, the same for every command (the README's table):
0 done (for `run` and `runs events`: the run completed); 1 the command failed (the API refused
or could not be reached, no API key, nothing found); 2 bad usage; 3 the run ended without
completing (failed, cancelled or expired).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from runrelay.cli._console import print_events
from runrelay.client._client import Client
from runrelay.errors import APIError, ValidationError

F = TypeVar("F", bound=Callable[..., Any])
EXIT_RUN_NOT_COMPLETED = 3


def _exit_for(done: dict[str, Any] | None) -> None:
    """`run` and `runs events` exit 0 only when the run completed (see the module docstring)."""
    if done is None or done.get("status") != "completed":
        raise SystemExit(EXIT_RUN_NOT_COMPLETED)


def client_options(command: F) -> F:
    command = click.option(
        "--base-url", default=None, help="API URL; default RUNRELAY_BASE_URL or 127.0.0.1:8000"
    )(command)
    command = click.option("--api-key", default=None, help="default RUNRELAY_API_KEY")(command)
    return command


@contextmanager
def sdk_client(api_key: str | None, base_url: str | None) -> Iterator[Client]:
    """The SDK client; SDK errors become one-line CLI errors (exit status 1)."""
    try:
        with Client(api_key, base_url=base_url) as client:
            yield client
    except (APIError, ValidationError) as exc:
        raise click.ClickException(str(exc)) from exc


def to_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def json_object(text: str | None, name: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint=name) from exc
    if not isinstance(value, dict):
        raise click.BadParameter("must be a JSON object", param_hint=name)
    return value


@click.command()
@click.argument("agent")
@click.argument("message", required=False)
@click.option(
    "--input", "input_json", help='the input as a JSON object, e.g. \'{"company": "ACME"}\''
)
@click.option("--thread", "thread_id", help="continue this thread")
@click.option("--json", "json_lines", is_flag=True, help="print every event as one JSON line")
@client_options
def run(
    agent: str,
    message: str | None,
    input_json: str | None,
    thread_id: str | None,
    json_lines: bool,
    api_key: str | None,
    base_url: str | None,
) -> None:
    """Run AGENT (a name or a shortcut such as "bank credit-analyst") on MESSAGE and stream it.

    Prints the run and thread ids, the text as it arrives and each tool call, then the status,
    the token usage and the run id. Exits 3 if the run ended without completing.
    """
    input_value = json_object(input_json, "--input")
    if message is None and input_value is None:
        raise click.UsageError("give a MESSAGE or --input")
    with sdk_client(api_key, base_url) as client:
        stream = client.runs.stream(agent, message=message, input=input_value, thread_id=thread_id)
        done = print_events(stream, json_lines=json_lines)
    _exit_for(done)


@click.group()
def runs() -> None:
    """Runs: list, get, events, cancel."""


@runs.command("list")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 100))
@click.option("--status", default=None, help="queued, running, completed, failed, ...")
@click.option("--agent", default=None, help="agent name")
@click.option("--thread", "thread_id", default=None, help="only this thread's runs")
@click.option("--cursor", default=None, help="the next page: the cursor the last page printed")
@click.option("--json", "as_json", is_flag=True)
@client_options
def runs_list(
    limit: int,
    status: str | None,
    agent: str | None,
    thread_id: str | None,
    cursor: str | None,
    as_json: bool,
    api_key: str | None,
    base_url: str | None,
) -> None:
    """The newest runs of your tenant, a page at a time (newest first)."""
    with sdk_client(api_key, base_url) as client:
        page = client.runs.list(
            limit=limit, status=status, agent=agent, thread_id=thread_id, cursor=cursor
        )
    if as_json:
        click.echo(to_json(page.model_dump(mode="json")))
        return
    for item in page.data:
        tokens = item.usage.total_tokens if item.usage else 0
        click.echo(
            f"{item.id}  {item.status:<10} {item.agent.name:<24} "
            f"{item.created_at:%Y-%m-%d %H:%M:%S}  {tokens} tokens  {item.thread_id or ''}"
        )
    if page.has_more and page.next_cursor:
        click.secho(
            f"more: runrelay runs list --cursor {page.next_cursor} (same filters)",
            dim=True,
            err=True,
        )


@runs.command("get")
@click.argument("run_id")
@client_options
def runs_get(run_id: str, api_key: str | None, base_url: str | None) -> None:
    """One run, as JSON."""
    with sdk_client(api_key, base_url) as client:
        click.echo(to_json(client.runs.get(run_id).model_dump(mode="json")))


@runs.command("events")
@click.argument("run_id")
@click.option("--after", default=None, help="only events after this event id (seq)")
@click.option("--json", "json_lines", is_flag=True, help="print every event as one JSON line")
@client_options
def runs_events(
    run_id: str, after: str | None, json_lines: bool, api_key: str | None, base_url: str | None
) -> None:
    """Replay a run's events, and follow it until it ends. Exits 3 if the run ended without
    completing, as `runrelay run` does."""
    with sdk_client(api_key, base_url) as client:
        done = print_events(client.runs.events(run_id, last_event_id=after), json_lines=json_lines)
    if after is None or done is not None:
        _exit_for(done)


@runs.command("cancel")
@click.argument("run_id")
@client_options
def runs_cancel(run_id: str, api_key: str | None, base_url: str | None) -> None:
    """Cancel a queued or running run."""
    with sdk_client(api_key, base_url) as client:
        cancelled = client.runs.cancel(run_id)
    click.echo(f"{cancelled.id}  {cancelled.status}")


@runs.command("approve")
@click.argument("run_id")
@click.argument("call_id")
@click.option("--reject", is_flag=True, help="reject the call instead")
@click.option("--reason", default=None, help="told to the model when the call is rejected")
@client_options
def runs_approve(
    run_id: str,
    call_id: str,
    reject: bool,
    reason: str | None,
    api_key: str | None,
    base_url: str | None,
) -> None:
    """Approve (or --reject) a tool call a run paused for (`requires_action`)."""
    with sdk_client(api_key, base_url) as client:
        run = client.runs.decide(run_id, call_id, approved=not reject, reason=reason)
    click.echo(f"{run.id}  {run.status}")


@click.group()
def shortcuts() -> None:
    """Shortcut commands: list, resolve."""


@shortcuts.command("list")
@click.option("--module", default=None, help="only this module's, e.g. bank")
@client_options
def shortcuts_list(module: str | None, api_key: str | None, base_url: str | None) -> None:
    """The shortcuts the registry offers."""
    with sdk_client(api_key, base_url) as client:
        found = client.shortcuts.list(module=module)
    width = max((len(s.pattern) for s in found), default=0)
    for item in found:
        click.echo(f"{item.pattern:<{width}}  {item.type:<7} {item.description}")


@shortcuts.command("resolve")
@click.argument("command", nargs=-1, required=True)
@client_options
def shortcuts_resolve(command: tuple[str, ...], api_key: str | None, base_url: str | None) -> None:
    """What COMMAND (e.g. bank credit-analyst) leads to; exits 1 if nothing, with suggestions."""
    with sdk_client(api_key, base_url) as client:
        resolution = client.shortcuts.resolve(" ".join(command))
    if resolution.resolved:
        click.echo(f"{' '.join(command)} → {resolution.agent_id} ({resolution.agent_name})")
        click.echo(f"  module: {resolution.module_key} ({resolution.module_name})")
        click.echo(f"  capabilities: {', '.join(resolution.capabilities) or '-'}")
        if resolution.task_template:
            click.echo(f"  task template: {resolution.task_template}")
        return
    click.echo(f"{' '.join(command)!r} leads to no agent.", err=True)
    if resolution.suggestions:
        click.echo(f"Did you mean: {', '.join(resolution.suggestions)}?", err=True)
    raise SystemExit(1)


@click.group()
def agents() -> None:
    """Agent revisions and tags."""


@agents.command("list")
@client_options
def agents_list(api_key: str | None, base_url: str | None) -> None:
    """The agents you can run: name, shortcuts, tags (tag → revision) and description."""
    with sdk_client(api_key, base_url) as client:
        found = client.agents.list()
    width = max((len(a.name) for a in found), default=0)
    for agent in found:
        tags = ", ".join(f"{tag}→r{rev}" for tag, rev in sorted(agent.tags.items()))
        click.echo(f"{agent.name:<{width}}  r{agent.revision}  {agent.description}")
        click.secho(
            f"{'':<{width}}  shortcuts: {', '.join(agent.shortcuts) or '-'}"
            f"  tags: {tags or '-'}",
            dim=True,
        )


@agents.command("publish")
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tag", "tags", multiple=True, help="move this tag to the new revision (repeatable)")
@click.option("--agent", default=None, help="the agent the tags move to, if the file has several")
def agents_publish(config: Path, tags: tuple[str, ...], agent: str | None) -> None:
    """Store a new revision of every agent in CONFIG whose definition changed, then move each
    --tag to its agent's newest revision. Writes to the database (DATABASE_URL)."""
    import os

    from runrelay.agent.config import ConfigError, Registry, load_config
    from runrelay.server.engine import make_engine
    from runrelay.server.revisions import AgentCatalog, PublishError
    from runrelay.server.settings import Settings

    settings = Settings()
    try:
        parsed = load_config(config, os.environ)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    engine = make_engine(settings)
    try:
        report = AgentCatalog(engine, Registry(parsed)).publish(parsed, tags, agent)
    except PublishError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        engine.dispose()
    for agent_id, (revision, created) in report.revisions.items():
        click.echo(f"{agent_id}: revision {revision} ({'new' if created else 'unchanged'})")
    for tag, (agent_id, revision) in report.tags.items():
        click.echo(f"tag {tag} → {agent_id} revision {revision}")


COMMANDS = [run, runs, shortcuts, agents]


def register(group: click.Group) -> None:
    for command in COMMANDS:
        group.add_command(command)
