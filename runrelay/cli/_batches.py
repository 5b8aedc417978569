"""`runrelay batch`: submit a JSONL file as a batch and follow it with a live progress bar;
`status`, `results`, `errors` and `cancel` of a batch. Through the SDK, like the other client
commands (`--api-key` / `RUNRELAY_API_KEY`, `--base-url` / `RUNRELAY_BASE_URL`)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click
from pydantic import BaseModel

from runrelay.batch_types import BatchObject
from runrelay.cli._client_commands import (
    EXIT_RUN_NOT_COMPLETED,
    client_options,
    json_object,
    sdk_client,
)
from runrelay.client._resources.batches import ProgressLine


def _summary(batch: BatchObject) -> str:
    counts = batch.request_counts
    return (
        f"{batch.id} {batch.status.value}: {counts.completed} completed, {counts.failed} failed, "
        f"{counts.cancelled} cancelled, {counts.expired} expired of {counts.total}; "
        f"{batch.usage.total_tokens} tokens"
    )


def _write_rows(rows: Iterable[BaseModel], output: Path | None) -> int:
    """Rows as JSONL to `output` (or stdout); returns how many."""
    count = 0
    target = output.open("w", encoding="utf-8") if output else None
    try:
        for row in rows:
            (target or sys.stdout).write(row.model_dump_json() + "\n")
            count += 1
    finally:
        if target is not None:
            target.close()
    return count


@click.group()
def batch() -> None:
    """Batches: many runs from one JSONL file, with results and errors files."""


@batch.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--agent", help="the agent of lines that name none (name, shortcut or id)")
@click.option("--completion-window", default=None, help="e.g. 24h (the default), 30m, 7d")
@click.option("--skip-invalid", is_flag=True, help="run the valid lines; report the others")
@click.option("--metadata", "metadata_json", help="a JSON object given to every run")
@click.option("--model-params", "params_json", help="e.g. '{\"temperature\": 0}'")
@click.option("--wait", is_flag=True, help="follow the batch with a progress bar until it ends")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="with --wait: write the results here (JSONL), and the errors beside it (.errors.jsonl)",
)
@client_options
def submit(
    file: Path,
    agent: str | None,
    completion_window: str | None,
    skip_invalid: bool,
    metadata_json: str | None,
    params_json: str | None,
    wait: bool,
    output: Path | None,
    api_key: str | None,
    base_url: str | None,
) -> None:
    """Submit FILE (JSONL: one run request with a `custom_id` per line) as a batch.

    Prints the batch id. With --wait, draws the progress (done/total, rate, ETA, failures),
    then the summary; exits 3 unless every line completed."""
    options: dict[str, Any] = {
        "agent": agent,
        "completion_window": completion_window,
        "on_invalid": "skip" if skip_invalid else None,
        "metadata": json_object(metadata_json, "--metadata"),
        "model_params": json_object(params_json, "--model-params"),
    }
    with sdk_client(api_key, base_url) as client:
        created = client.batches.create(file, **options)
        click.echo(created.id)
        for error in created.validation_errors:
            click.echo(f"skipped {error.message}", err=True)
        if not wait:
            return
        final = client.batches.wait(created.id, progress=ProgressLine(sys.stderr))
        if output is not None:
            _write_rows(client.batches.results(final.id), output)
            errors_path = output.with_suffix(".errors.jsonl")
            if _write_rows(client.batches.errors(final.id), errors_path):
                click.echo(f"errors: {errors_path}", err=True)
        click.echo(_summary(final), err=True)
    if final.request_counts.completed != final.request_counts.total:
        sys.exit(EXIT_RUN_NOT_COMPLETED)


@batch.command()
@click.argument("batch_id")
@click.option("--json", "as_json", is_flag=True, help="print the whole batch object")
@client_options
def status(batch_id: str, as_json: bool, api_key: str | None, base_url: str | None) -> None:
    """Show where batch BATCH_ID stands."""
    with sdk_client(api_key, base_url) as client:
        found = client.batches.get(batch_id)
    if as_json:
        click.echo(json.dumps(found.model_dump(mode="json"), indent=2))
    else:
        click.echo(_summary(found))


@batch.command()
@click.argument("batch_id")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path))
@client_options
def results(batch_id: str, output: Path | None, api_key: str | None, base_url: str | None) -> None:
    """Write the completed lines of BATCH_ID (so far) as JSONL, to stdout or --output."""
    with sdk_client(api_key, base_url) as client:
        _write_rows(client.batches.results(batch_id), output)


@batch.command()
@click.argument("batch_id")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path))
@client_options
def errors(batch_id: str, output: Path | None, api_key: str | None, base_url: str | None) -> None:
    """Write the failed, cancelled and expired lines of BATCH_ID as JSONL."""
    with sdk_client(api_key, base_url) as client:
        _write_rows(client.batches.errors(batch_id), output)


@batch.command()
@click.argument("batch_id")
@client_options
def cancel(batch_id: str, api_key: str | None, base_url: str | None) -> None:
    """Cancel BATCH_ID: lines not started never start, running ones are cancelled."""
    with sdk_client(api_key, base_url) as client:
        click.echo(_summary(client.batches.cancel(batch_id)))
