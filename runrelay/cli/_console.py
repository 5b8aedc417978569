"""Printing a run's events to a terminal as they arrive (`runrelay run`, `runrelay dev`)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import click


def print_events(
    events: Iterable[dict[str, Any]], *, json_lines: bool = False
) -> dict[str, Any] | None:
    """Print text as it streams, tool calls, errors, and a last line with the status, the usage
    and the run id; or, with `json_lines`, each event as one JSON line. Returns `done`."""
    done: dict[str, Any] | None = None
    for event in events:
        if json_lines:
            click.echo(json.dumps(event, ensure_ascii=False))
        else:
            _print_event(event)
        if event.get("type") == "done":
            done = event
    return done


def _print_event(event: dict[str, Any]) -> None:
    kind = event.get("type")
    if kind == "run_queued":
        thread = f" · thread {event['thread_id']}" if event.get("thread_id") else ""
        click.secho(f"  run {event['run_id']} queued{thread}", dim=True, err=True)
    elif kind == "output_text_delta":
        click.echo(event["delta"], nl=False)
    elif kind == "tool_call_result":
        outcome = event.get("result") if event.get("error") is None else event.get("error")
        click.secho(
            f"  ⚙ {event['name']}({json.dumps(event.get('arguments'))}) → {json.dumps(outcome)}",
            fg="cyan",
        )
    elif kind == "metadata" and isinstance(event.get("superseded"), dict):
        click.secho(
            "\n  ↻ the worker running this run stopped; it resumed from its last checkpoint, "
            "and the text since then is said again:",
            fg="yellow",
            err=True,
        )
    elif kind == "approval_required":
        click.secho(
            f"  ⏸ {event['name']}({json.dumps(event.get('arguments'))}) waits for approval: "
            f"runrelay runs approve {event['run_id']} {event['tool_call_id']} [--reject]",
            fg="yellow",
            err=True,
        )
    elif kind == "custom" and event.get("event") == "progress":
        data = event.get("data") or {}
        click.secho(f"  … {data.get('message', '')}", dim=True, err=True)
    elif kind == "error":
        click.secho(f"\n  ✗ {event.get('code')}: {event.get('message')}", fg="red")
    elif kind == "done":
        usage = event.get("usage") or {}
        click.secho(
            f"\n  ■ {event['status']} · {usage.get('prompt_tokens', 0)} prompt + "
            f"{usage.get('completion_tokens', 0)} completion = {usage.get('total_tokens', 0)} "
            f"tokens · run {event['run_id']}",
            bold=True,
        )
