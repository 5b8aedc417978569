"""The `runrelay` command: run the service's processes and administer tenants and keys; the
client commands (`run`, `runs`, `shortcuts`, `agents`) are in `runrelay.cli_client`.

Server commands import the server side lazily, so the command exists with the SDK alone.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from runrelay import cli_client

if TYPE_CHECKING:
    from runrelay.settings import Settings


def _settings() -> Settings:
    from runrelay.settings import Settings

    return Settings()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
def main(log_level: str) -> None:
    """runrelay: run LLM agents at scale.

    Configured by REDIS_URL, DATABASE_URL and RUNRELAY_* environment variables.
    """
    logging.basicConfig(
        level=log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if log_level.upper() != "DEBUG":
        # Alembic narrates every plugin it loads at INFO; `migrate` says what matters itself.
        logging.getLogger("alembic").setLevel(logging.WARNING)


@main.command()
def migrate() -> None:
    """Create or upgrade the database schema (Alembic)."""
    from runrelay.migrate import upgrade

    settings = _settings()
    upgrade(settings)
    click.echo(f"database is at the latest schema ({_redact(settings.database_url)})", err=True)


@main.group()
def keys() -> None:
    """API keys."""


@keys.command("create")
@click.option("--tenant", required=True, help="tenant name; created if new")
@click.option("--platform", is_flag=True, help="a platform key may act for any tenant")
def keys_create(tenant: str, platform: bool) -> None:
    """Create an API key and print it (only the key, on stdout)."""
    from runrelay.store import Store, make_engine

    store = Store(make_engine(_settings()))
    key = store.create_api_key(store.ensure_tenant(tenant).id, is_platform=platform)
    click.echo(key)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int, help="uvicorn processes")
def api(host: str, port: int, workers: int) -> None:
    """Serve the HTTP API."""
    import uvicorn

    uvicorn.run(
        "api_shim.asgi:app",
        host=host,
        port=port,
        workers=workers,
        proxy_headers=True,
        log_level="info",
    )


@main.command()
@click.option(
    "--concurrency",
    default=None,
    type=int,
    help="runs held at once by this process (threads); default RUNRELAY_WORKER_CONCURRENCY",
)
@click.option("--hostname", default=None, help="Celery node name")
def worker(concurrency: int | None, hostname: str | None) -> None:
    """Run a Celery worker (threads pool, one shared asyncio loop per process)."""
    from worker.app import create_app

    settings = _settings()
    app = create_app(settings)
    argv = [
        "worker",
        "--pool=threads",
        f"--concurrency={concurrency or settings.worker_concurrency}",
        f"--queues={settings.task_queue}",
        "--loglevel=INFO",
        "--without-gossip",
        "--without-mingle",
    ]
    if hostname:
        argv.append(f"--hostname={hostname}")
    app.worker_main(argv)


@main.command()
@click.option("--port", default=5555, show_default=True, type=int)
@click.option("--address", default="127.0.0.1", show_default=True)
def flower(port: int, address: str) -> None:
    """Serve Flower, Celery's web view of the workers and their tasks."""
    from worker.app import create_app

    create_app(_settings()).start(argv=["flower", f"--port={port}", f"--address={address}"])


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option(
    "--data-dir",
    default=".runrelay",
    show_default=True,
    type=click.Path(path_type=Path),
    help="where the embedded Redis and SQLite keep their files",
)
@click.option("--no-demo", is_flag=True, help="do not stream a demo run at start-up")
def dev(host: str, port: int, data_dir: Path, no_demo: bool) -> None:
    """Everything on one machine: embedded Redis and SQLite unless REDIS_URL / DATABASE_URL are
    set, migrations, the API and one worker. Ctrl-C stops it all."""
    from runrelay.dev import run_dev

    run_dev(host=host, port=port, data_dir=data_dir, demo=not no_demo)


cli_client.register(main)


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return scheme + sep + rest
