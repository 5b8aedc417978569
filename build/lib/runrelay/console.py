"""Printing a run's event stream to a terminal as it arrives."""

from __future__ import annotations

import json
from typing import Any

import click
import httpx
from httpx_sse import connect_sse


def print_stream(http: httpx.Client, key: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """Create a run with POST /v1/runs/stream and print it; returns the `done` event."""
    headers = {"Authorization": f"Bearer {key}"}
    with connect_sse(http, "POST", "/v1/runs/stream", json=body, headers=headers) as source:
        if source.response.status_code != 200:
            source.response.read()
            click.secho(f"error {source.response.status_code}: {source.response.text}", fg="red")
            return None
        for sse in source.iter_sse():
            if not sse.data:
                continue  # httpx-sse reports a `: ping` keep-alive as an empty event
            event: dict[str, Any] = json.loads(sse.data)
            kind = event["type"]
            if kind == "run_queued":
                click.secho(f"  run {event['run_id']} queued", dim=True)
            elif kind == "output_text_delta":
                click.echo(event["delta"], nl=False)
            elif kind == "tool_call_result":
                click.secho(
                    f"  ⚙ {event['name']}({json.dumps(event['arguments'])}) → "
                    f"{json.dumps(event.get('result') or event.get('error'))}",
                    fg="cyan",
                )
            elif kind == "error":
                click.secho(f"\n  ✗ {event['code']}: {event['message']}", fg="red")
            elif kind == "done":
                usage = event.get("usage") or {}
                click.secho(
                    f"\n  ■ {event['status']} · {usage.get('total_tokens', 0)} tokens · "
                    f"run {event['run_id']}",
                    bold=True,
                )
                return event
    return None
