"""The `runrelay` command: run the service's processes and administer tenants and keys; the
client commands (`run`, `runs`, `shortcuts`, `agents`) are in `runrelay.cli._client_commands`,
`schedules` in `runrelay.cli._schedules`.

Server commands import the server side lazily, so the command exists with the SDK alone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from runrelay import __version__
from runrelay.cli import _client_commands as cli_client
from runrelay.cli._batches import batch
from runrelay.cli._schedules import schedules

if TYPE_CHECKING:
    from runrelay.server.settings import Settings
    from runrelay.server.store import Store


def _log_level() -> str:
    """The level given to `runrelay --log-level`, for the servers that set up logging again."""
    return str(click.get_current_context().find_root().params.get("log_level") or "INFO").upper()


def _settings() -> Settings:
    from runrelay.server.settings import Settings

    return Settings()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="runrelay")
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
        # Alembic narrates every plugin it loads, and httpx (httpx2 for MCP) every request, at
        # INFO: noise in a terminal; the commands say what matters themselves.
        for noisy in ("alembic", "httpx", "httpx2"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


@main.command()
def migrate() -> None:
    """Create or upgrade the database schema (Alembic)."""
    from runrelay.server.migrate import upgrade

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
    with _store() as store:
        key = store.create_api_key(store.ensure_tenant(tenant).id, is_platform=platform)
    click.echo(key)


@keys.command("list")
@click.option("--tenant", required=True, help="tenant name or id")
def keys_list(tenant: str) -> None:
    """List a tenant's keys: id, prefix, kind, created, last used, revoked (never the key)."""
    from runrelay.server.tenants import list_keys

    with _store() as store:
        found = store.get_tenant(tenant)
        if found is None:
            raise click.ClickException(f"no tenant {tenant!r}")
        rows = list_keys(store, found.id)
    click.echo("id\tprefix\tkind\tcreated_at\tlast_used_at\trevoked_at")
    for row in rows:
        kind = "platform" if row.is_platform else "tenant"
        times = [_when(row.created_at), _when(row.last_used_at), _when(row.revoked_at)]
        click.echo("\t".join([row.id, row.prefix + "...", kind, *times]))


@keys.command("revoke")
@click.argument("key")
def keys_revoke(key: str) -> None:
    """Revoke a key, given its id or its prefix (as `keys list` shows it); takes effect at once."""
    from runrelay.server.tenants import KeyNotFound, revoke_key

    try:
        with _store() as store:
            row = revoke_key(store, key.removesuffix("..."))
    except KeyNotFound as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"revoked {row.id} ({row.prefix}...)", err=True)


def _limit_options(command: Callable[..., None]) -> Callable[..., None]:
    options = [
        click.option(
            "--max-concurrent-runs",
            type=click.IntRange(min=1),
            help="runs in progress at once (above it they wait in the tenant's queue)",
        ),
        click.option(
            "--max-queued-runs",
            type=click.IntRange(min=0),
            help="runs waiting in the tenant's queue (0: refuse above the cap)",
        ),
        click.option(
            "--requests-per-minute",
            type=click.IntRange(min=1),
            help="run creations a minute (a burst of one minute's worth)",
        ),
        click.option("--token-budget", type=click.IntRange(min=1), help="tokens per budget period"),
        click.option("--budget-period", type=click.Choice(["day", "month"])),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@main.group()
def tenants() -> None:
    """Tenants and their quotas (limits not set take the RUNRELAY_DEFAULT_* settings)."""


@tenants.command("create")
@click.argument("name")
@_limit_options
def tenants_create(name: str, **limits: int | str | None) -> None:
    """Create a tenant, optionally with limits of its own."""
    from runrelay.server.store import AlreadyExists
    from runrelay.server.tenants import update_limits

    with _store() as store:
        try:
            tenant = store.create_tenant(name)
        except AlreadyExists as exc:
            raise click.ClickException(f"{exc}; change it with `runrelay tenants update`") from exc
        update_limits(store, tenant.id, **limits)
        _show(store, name)


@tenants.command("update")
@click.argument("name")
@_limit_options
def tenants_update(name: str, **limits: int | str | None) -> None:
    """Change a tenant's limits (those not given stay as they are)."""
    from runrelay.server.tenants import TenantNotFound, update_limits

    with _store() as store:
        try:
            update_limits(store, name, **limits)
        except TenantNotFound as exc:
            raise click.ClickException(str(exc)) from exc
        _show(store, name)


@tenants.command("show")
@click.argument("name")
def tenants_show(name: str) -> None:
    """Print a tenant and the limits in force for it (JSON)."""
    with _store() as store:
        _show(store, name)


def _show(store: Store, name: str) -> None:
    from runrelay.server.tenants import LIMIT_FIELDS, TenantLimits

    tenant = store.get_tenant(name)
    if tenant is None:
        raise click.ClickException(f"no tenant {name!r}")
    own = {field: getattr(tenant, field) for field in LIMIT_FIELDS}
    shown = {
        "id": tenant.id,
        "name": tenant.name,
        "limits": TenantLimits.of(tenant, _settings()).as_dict(),
        "own_limits": {k: v for k, v in own.items() if v is not None},
    }
    click.echo(json.dumps(shown, indent=2))


@contextlib.contextmanager
def _store() -> Iterator[Store]:
    """The database of the admin commands (see `runrelay.cli._dev_data.admin_settings`)."""
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from runrelay.cli._dev_data import admin_settings
    from runrelay.server.engine import make_engine
    from runrelay.server.store import Store

    settings = admin_settings(_settings())
    store = Store(make_engine(settings))
    try:
        yield store
    except (OperationalError, ProgrammingError) as exc:
        if "no such table" not in str(exc) and "does not exist" not in str(exc):
            raise
        raise click.ClickException(
            f"the database {_redact(settings.database_url)} has no runrelay tables: run "
            "`runrelay migrate` with the same DATABASE_URL first"
        ) from exc
    finally:
        store.engine.dispose()


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment else "-"


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int, help="uvicorn processes")
@click.option(
    "--backlog",
    default=2048,
    show_default=True,
    type=int,
    help="connections waiting to be accepted (capped by the kernel's net.core.somaxconn)",
)
@click.option(
    "--limit-concurrency",
    default=None,
    type=int,
    help="connections (open SSE streams included) past which new requests get a 503; keep it "
    "below the file-descriptor limit (ulimit -n)",
)
@click.option(
    "--access-log/--no-access-log",
    default=True,
    show_default=True,
    help="uvicorn's line per request at INFO (leave it out where a proxy logs requests)",
)
def api(
    host: str,
    port: int,
    workers: int,
    backlog: int,
    limit_concurrency: int | None,
    access_log: bool,
) -> None:
    """Serve the HTTP API."""
    import uvicorn

    from api_shim.serving import http_protocol

    uvicorn.run(
        "api_shim.asgi:app",
        host=host,
        port=port,
        workers=workers,
        backlog=backlog,
        limit_concurrency=limit_concurrency,
        proxy_headers=True,
        access_log=access_log,
        log_level=_log_level().lower(),  # `runrelay --log-level`, for uvicorn's lines too
        http=http_protocol(_settings().header_read_timeout_s),
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
        f"--concurrency={concurrency or settings.worker_concurrency}",
        f"--queues={settings.task_queue},{settings.control_queue}",
        f"--loglevel={_log_level()}",  # `runrelay --log-level`: Celery sets it up again
        "--without-gossip",
        "--without-mingle",
    ]
    if hostname:
        argv.append(f"--hostname={hostname}")
    app.worker_main(argv)


@main.command()
def beat() -> None:
    """Run the clock of schedules and webhook retries (Celery beat with celery-redbeat). Run
    two for failover: the second waits on a Redis lock and takes over when the first stops."""
    from worker.beat import run_beat

    run_beat(_settings())


@tenants.command("webhook-secret")
@click.argument("name")
def tenants_webhook_secret(name: str) -> None:
    """Create the tenant's webhook signing secret, or rotate it (the previous one keeps signing
    too for RUNRELAY_WEBHOOK_SECRET_ROTATION_GRACE_S); prints the new `whsec_...` secret."""
    from runrelay.server.webhooks import rotate_secret

    settings = _settings()
    with _store() as store:
        tenant = store.get_tenant(name)
        if tenant is None:
            raise click.ClickException(f"no tenant {name!r}")
        row = rotate_secret(
            store.engine, tenant.id, grace_s=settings.webhook_secret_rotation_grace_s
        )
    click.echo(row.secret)
    if row.previous:
        click.echo(
            f"rotated: the previous secret also signs until {_when(row.previous_until)}", err=True
        )


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
    from runrelay.cli._dev import run_dev

    run_dev(host=host, port=port, data_dir=data_dir, demo=not no_demo)


cli_client.register(main)
main.add_command(batch)
main.add_command(schedules)


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return scheme + sep + rest
