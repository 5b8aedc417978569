"""Helpers of the outage tests: a redis-server of the test's own (killed with SIGKILL and started
again empty on the same port), and the checks of a log that crossed an outage."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import redis
from httpx_sse import connect_sse

from runrelay.server.embedded_redis import free_port

_START_TIMEOUT_S = 30.0


class RedisServer:
    """A redis-server without persistence: every restart starts empty."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        with (self.tmp / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.tmp),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            with contextlib.suppress(redis.RedisError):
                if redis.Redis(port=self.port, socket_timeout=1).ping():
                    return
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)


@contextlib.contextmanager
def redis_server(tmp: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp)
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.kill()


def follow(client: httpx.Client, run_id: str, deadline_s: float = 180) -> list[dict[str, Any]]:
    """A client that reads the run's events to `done`, reconnecting with `Last-Event-ID` after
    a dropped stream or a 503, as an EventSource does."""
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        headers = {"Last-Event-ID": str(events[-1]["seq"])} if events else {}
        try:
            with connect_sse(client, "GET", f"/v1/runs/{run_id}/events", headers=headers) as src:
                if src.response.status_code == 503:
                    assert "retry-after" in src.response.headers
                    time.sleep(0.5)
                    continue
                assert src.response.status_code == 200, src.response.read()
                for sse in src.iter_sse():
                    if time.monotonic() > deadline:  # pings keep a stuck stream open
                        break
                    if sse.data:
                        events.append(json.loads(sse.data))
                        if events[-1]["type"] == "done":
                            return events
        except httpx.HTTPError:
            time.sleep(0.5)
    raise AssertionError(f"run {run_id}: no done in {deadline_s} s; read {events[-3:]}")


def assert_one_sequence(events: list[dict[str, Any]]) -> None:
    """Seqs grow; a jump (or a start above 1) is covered by a `superseded` marker that follows
    it, so a reader knows what it will never see; one `done`, last."""
    superseded = [e["superseded"] for e in events if e["type"] == "metadata" and "superseded" in e]
    previous = 0
    for event in events:
        seq = event["seq"]
        assert seq > previous, f"seq {seq} after {previous}"
        if seq != previous + 1:
            assert any(
                s["from_seq"] <= previous + 1 and s["to_seq"] >= seq - 1 for s in superseded
            ), f"gap {previous + 1}..{seq - 1} not marked superseded"
        previous = seq
    assert [e["type"] for e in events].count("done") == 1
    assert events[-1]["type"] == "done"


class PostgresServer:
    """A PostgreSQL cluster of the test's own (initdb in a temp dir), stopped and started at
    will. PostgreSQL refuses to run as root, so as root it runs as the `postgres` user."""

    def __init__(self) -> None:
        self.port = free_port()
        # Not under pytest's tmp dirs: those are private to root, and the server may not be.
        self.data = Path(tempfile.mkdtemp(prefix="runrelay-pg-")) / "pgdata"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *args], check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        self.data.mkdir(parents=True)
        if os.geteuid() == 0:
            shutil.chown(self.data, "postgres")
            shutil.chown(self.data.parent, "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data} -c fsync=off"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-w",
            "-l",
            str(self.data / "server.log"),
            "start",
        )

    def stop(self) -> None:
        """As if the server went away: `immediate` drops every connection at once."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.init()
        server.start()
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            server.stop()
        shutil.rmtree(server.data.parent, ignore_errors=True)
