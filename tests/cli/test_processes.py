"""The service as separate processes, configured by REDIS_URL and DATABASE_URL, the way the
Procfile and docker-compose.yml run it; and `runrelay dev` on embedded defaults."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import redis
import yaml
from click.testing import CliRunner

from runrelay.cli._main import main as cli
from runrelay.server.embedded_redis import free_port
from tests.sse import assert_complete_log, read_events

ROOT = Path(__file__).resolve().parents[2]


def _runrelay(*args: str) -> list[str]:
    return [sys.executable, "-m", "runrelay", *args]


@pytest.fixture
def process_env(
    redis_url: str, database: tuple[str, str | None], tmp_path: Path
) -> Iterator[dict[str, str]]:
    """Environment for separate processes: their own key prefix, schema or SQLite file."""
    database_url, schema = database
    prefix = f"rrproc:{secrets.token_hex(4)}:"
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "RUNRELAY_REDIS_PREFIX": prefix,
        "DATABASE_URL": database_url if schema else f"sqlite:///{tmp_path / 'proc.db'}",
    }
    if schema:
        env["RUNRELAY_DATABASE_SCHEMA"] = f"{schema}_proc"
    yield env
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)
    client.close()
    if schema:
        from sqlalchemy import create_engine, text

        from runrelay.server.settings import Settings

        engine = create_engine(Settings(database_url=database_url).database_url)
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}_proc" CASCADE'))
        engine.dispose()


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def test_separate_processes_serve_a_run_end_to_end(
    process_env: dict[str, str], tmp_path: Path
) -> None:
    migrate = subprocess.run(_runrelay("migrate"), env=process_env, capture_output=True, timeout=60)
    assert migrate.returncode == 0, migrate.stderr
    created = subprocess.run(
        _runrelay("keys", "create", "--tenant", "acme"),
        env=process_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert re.fullmatch(r"rr_sk_[A-Za-z0-9_\-]{20,}", key), "stdout is only the new key"

    port = free_port()
    logs = tmp_path / "logs"
    logs.mkdir()
    with (logs / "api.log").open("wb") as api_log, (logs / "worker.log").open("wb") as worker_log:
        api = subprocess.Popen(
            _runrelay("api", "--host", "127.0.0.1", "--port", str(port)),
            env=process_env,
            stdout=api_log,
            stderr=subprocess.STDOUT,
        )
        worker = subprocess.Popen(
            _runrelay("worker", "--concurrency", "8"),
            env=process_env,
            stdout=worker_log,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        with httpx.Client(
            base_url=base, timeout=60, headers={"Authorization": f"Bearer {key}"}
        ) as http:
            events = read_events(
                http,
                "POST",
                "/v1/runs/stream",
                json={"agent": "bank credit-analyst", "message": "hi"},
            )
        assert_complete_log(events)
        assert events[-1]["status"] == "completed"
    finally:
        assert _stop(worker) == 0, (logs / "worker.log").read_text()[-3000:]
        # uvicorn shuts down gracefully, then re-raises the SIGTERM it handled.
        assert _stop(api) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in (logs / "api.log").read_text()
    # At the default level (INFO) the worker logs one line as the run ends, naming it; Celery's
    # two lines per task (naming only a task UUID) are left to DEBUG.
    worker_lines = (logs / "worker.log").read_text()
    run_id = events[-1]["run_id"]
    assert re.search(rf"run={run_id} tenant=\S+ ended completed in \d+ ms \(attempt 1,",
                     worker_lines)
    assert "runrelay.execute_run[" not in worker_lines


def test_dev_streams_a_demo_run_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    port = free_port()
    proc = subprocess.Popen(
        _runrelay("dev", "--port", str(port), "--data-dir", str(tmp_path / "dev")),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    children: list[psutil.Process] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            output.append(line)
            if "Serving until Ctrl-C" in line:
                break
        text = "".join(output)
        assert "Serving until Ctrl-C" in text, text
        assert f"http://127.0.0.1:{port}" in text
        key = re.search(r"demo API key \(tenant 'demo'\): (rr_sk_\S+)", text)
        assert key, text
        assert "lookup_credit_score" in text and "completed" in text, "the demo run streamed"
        redis_port = int(re.search(r"redis:\s+embedded redis://127.0.0.1:(\d+)/0", text).group(1))
        assert redis.Redis(port=redis_port).ping(), "the embedded Redis answers"
        children = psutil.Process(proc.pid).children(recursive=True)
        assert any("worker" in " ".join(c.cmdline()) for c in children)
        response = httpx.get(
            f"http://127.0.0.1:{port}/v1/agents",
            headers={"Authorization": f"Bearer {key.group(1)}"},
        )
        assert response.status_code == 200, "the printed key works"
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, rest
        assert "runrelay dev stopped." in rest
        time.sleep(0.5)
        assert [
            c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE
        ] == [], "no worker process is left behind"
        with pytest.raises(redis.ConnectionError):
            redis.Redis(port=redis_port, socket_connect_timeout=2).ping()
    finally:
        if proc.poll() is None:
            proc.kill()
        for child in children:
            if child.is_running():
                child.kill()


def test_procfile_and_compose_use_commands_the_cli_has() -> None:
    commands = [
        line.split(":", 1)[1].split()
        for line in (ROOT / "Procfile").read_text().splitlines()
        if line.strip()
    ]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert {"redis", "postgres", "api", "worker", "flower"} <= set(compose["services"])
    commands += [
        svc["command"]
        for svc in compose["services"].values()
        if svc.get("command", [None])[0] == "runrelay"
    ]
    assert len(commands) >= 8
    runner = CliRunner()
    for command in commands:
        assert command[0] == "runrelay"
        args = [a for a in command[1:] if not a.startswith("$")]
        # Options must exist: `--help` after them parses them without running anything.
        options = [a for a in args if a.startswith("--")]
        result = runner.invoke(
            cli,
            [
                *[
                    a
                    for a in args
                    if not a.startswith("--") and not a[0].isdigit() and a not in ("0.0.0.0",)
                ][:2],
                "--help",
            ],
        )
        assert result.exit_code == 0, (command, result.output)
        for option in options:
            assert option in result.output, (command, option)


def test_the_log_level_reaches_the_worker_and_the_api_servers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Celery and uvicorn set up logging again from their own level: `runrelay --log-level
    WARNING worker` must not log Celery's line per task received and done, nor `api` uvicorn's
    line per request."""
    import celery
    import uvicorn

    seen: dict[str, object] = {}
    monkeypatch.setattr(celery.Celery, "worker_main", lambda self, argv: seen.update(argv=argv))
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: seen.update(uvicorn=kw))
    runner = CliRunner()
    for level, celery_flag, uvicorn_level in [
        ("WARNING", "--loglevel=WARNING", "warning"),
        ("info", "--loglevel=INFO", "info"),
    ]:
        result = runner.invoke(cli, ["--log-level", level, "worker", "--concurrency", "1"])
        assert result.exit_code == 0, result.output
        assert celery_flag in seen["argv"]  # type: ignore[operator]
        result = runner.invoke(cli, ["--log-level", level, "api"])
        assert result.exit_code == 0, result.output
        assert seen["uvicorn"]["log_level"] == uvicorn_level  # type: ignore[index]
        assert seen["uvicorn"]["access_log"] is True  # type: ignore[index]
    # The line per request alone can be left out, at any level.
    result = runner.invoke(cli, ["api", "--no-access-log"])
    assert result.exit_code == 0, result.output
    assert seen["uvicorn"]["access_log"] is False  # type: ignore[index]
