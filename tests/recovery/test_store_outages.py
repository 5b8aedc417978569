"""Outages of the stores, against a deployment of the test's own: Redis killed (SIGKILL) and
started again empty mid-run, twice. The worker rides it out, every accepted run completes, no
request gets a 500 (a 503 with Retry-After while Redis is away), and every log stays one
sequence, for a client reading from the start and for one that held a seq across the outage."""

from __future__ import annotations

import http.client
import shutil
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.environment import unavailable
from tests.recovery.conftest import HEADER_READ_TIMEOUT_S, Deployment, deployed
from tests.recovery.outage import (
    RedisServer,
    assert_one_sequence,
    follow,
    postgres_server,
    redis_server,
)
from tests.recovery.test_worker_crash import visible_output

TOOLED = {"agent": "tooled-slow", "message": "go"}
SLOW = {"agent": "slow-analyst", "message": "go"}


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[RedisServer, Deployment]]:
    with redis_server(tmp_path) as server, deployed(server.url, tmp_path) as deployment:
        yield server, deployment


def test_redis_killed_and_restarted_empty_twice_mid_run_loses_nothing(
    own_redis: tuple[RedisServer, Deployment],
) -> None:
    server, deployment = own_redis
    worker = deployment.start_worker()
    tenant = deployment.new_tenant()
    statuses: list[int] = []
    accepted: list[str] = []
    with httpx.Client(base_url=deployment.base_url, headers=tenant.headers, timeout=30) as http:

        def create(body: dict[str, str]) -> None:
            try:
                response = http.post("/v1/runs", json=body)
            except httpx.HTTPError:
                return
            statuses.append(response.status_code)
            if response.status_code == 503:
                assert "retry-after" in response.headers
            if response.status_code in (200, 201, 202):
                accepted.append(response.json()["id"])

        for n in range(6):
            create(TOOLED if n % 2 else SLOW)
        held = accepted[0]
        with ThreadPoolExecutor(1) as pool:
            follower = pool.submit(follow, http, held)
            time.sleep(1.5)  # mid-run: streaming text, tool calls done or under way
            for _ in range(2):
                server.kill()
                create(SLOW)  # while Redis is away
                time.sleep(2)
                server.start()
                time.sleep(1)
                create(TOOLED)  # just after it came back, empty
                time.sleep(3)
            held_events = follower.result()

        assert worker.poll() is None, "the worker exited"
        assert 500 not in statuses and all(s < 500 or s == 503 for s in statuses), statuses
        assert len(accepted) >= 6
        # The client that held a seq across both outages shows the run's text exactly once:
        # no other attempt's events were spliced onto what it had.
        assert_one_sequence(held_events)
        assert visible_output(held_events) == http.get(f"/v1/runs/{held}").json()["output"]
        for run_id in accepted:
            events = follow(http, run_id)
            assert_one_sequence(events)
            assert events[-1]["status"] == "completed", events[-1]
            assert visible_output(events) == http.get(f"/v1/runs/{run_id}").json()["output"]
        assert worker.poll() is None, "the worker exited"


def steps_run(deployment: Deployment, run_id: str) -> list[str]:
    """The steps `record_step` really executed for `run_id`, in order (one per execution)."""
    if not deployment.tool_log.exists():
        return []
    lines = (line.split(" ") for line in deployment.tool_log.read_text().splitlines())
    return [step for rid, _call_id, step in lines if rid == run_id]


def test_runs_resumed_after_redis_lost_their_data_call_no_finished_tool_again(
    own_redis: tuple[RedisServer, Deployment],
) -> None:
    server, deployment = own_redis
    worker = deployment.start_worker()
    tenant = deployment.new_tenant()
    with httpx.Client(base_url=deployment.base_url, headers=tenant.headers, timeout=30) as http:
        run_ids = [http.post("/v1/runs", json=TOOLED).json()["id"] for _ in range(3)]
        toolless = http.post("/v1/runs", json=SLOW).json()["id"]
        deadline = time.monotonic() + 60
        while any(len(steps_run(deployment, r)) < 3 for r in run_ids):  # all tools ran
            assert time.monotonic() < deadline, [steps_run(deployment, r) for r in run_ids]
            time.sleep(0.05)
        with ThreadPoolExecutor(1) as pool:
            follower = pool.submit(follow, http, run_ids[0])
            time.sleep(0.3)  # the final text streams
            server.kill()
            server.start()  # empty: logs, checkpoints, leases and queued tasks are gone
            held_events = follower.result()

        assert_one_sequence(held_events)
        assert visible_output(held_events) == http.get(f"/v1/runs/{run_ids[0]}").json()["output"]
        for run_id in run_ids:
            events = follow(http, run_id)
            assert_one_sequence(events)
            assert events[-1]["status"] == "completed", events[-1]
            assert http.get(f"/v1/runs/{run_id}").json()["attempts"] >= 2, "it was resumed"
            assert sorted(steps_run(deployment, run_id)) == ["one", "three", "two"]
        assert follow(http, toolless)[-1]["status"] == "completed"
        # Only tool results are kept in the database: a run without tools never writes there.
        assert deployment.store.checkpoint(toolless) is None
        assert all(deployment.store.checkpoint(r) is not None for r in run_ids)
        assert worker.poll() is None, "the worker exited"


def test_a_body_trickled_slower_than_the_read_timeout_is_408(deployment: Deployment) -> None:
    tenant = deployment.new_tenant()
    with socket.create_connection(("127.0.0.1", deployment.port), timeout=60) as sock:
        sock.sendall(
            b"POST /v1/runs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: {tenant.headers['Authorization']}\r\n".encode()
            + b"Content-Length: 100\r\n\r\n"
            + b'{"agent": '
        )
        answer = b""
        while b"\r\n\r\n" not in answer:  # the client sends nothing more
            chunk = sock.recv(4096)
            assert chunk, "connection closed without an answer"
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]


@pytest.mark.parametrize("trickle", [True, False], ids=["trickled", "silent"])
def test_a_connection_whose_headers_are_not_in_within_the_read_timeout_is_closed(
    deployment: Deployment, trickle: bool
) -> None:
    """Headers trickled one byte every 0.3 s (408, then closed), or a connection that sends
    nothing at all (closed); for up to 30 s (15 times the 2 s timeout)."""
    answer, closed = b"", False
    with socket.create_connection(("127.0.0.1", deployment.port), timeout=60) as sock:
        if trickle:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        sock.settimeout(0.3)
        deadline = time.monotonic() + 30
        while not answer and time.monotonic() < deadline:
            try:
                if trickle:
                    sock.sendall(b"a")
                chunk = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:  # closed while we were sending: read what it answered
                closed = True
                break
            if not chunk:
                closed = True
                break
            answer = chunk
        assert answer or closed, "the connection was still open after 30 s"
        sock.settimeout(10)
        while chunk := sock.recv(4096):  # then it closes the connection
            answer += chunk
    if not trickle:  # nothing asked, nothing answered: an idle client reads no stray 408
        assert answer == b""
        return
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"code": "request_timeout"' in answer
    assert b"RUNRELAY_HEADER_READ_TIMEOUT_S" in answer


def test_keep_alive_connection_serves_requests_after_idling_longer_than_the_header_timeout(
    deployment: Deployment,
) -> None:
    """Idle between requests is uvicorn's keep-alive timeout (5 s), not the header timeout."""
    conn = http.client.HTTPConnection("127.0.0.1", deployment.port, timeout=30)
    try:
        statuses, sockets = [], []
        for pause_s in (HEADER_READ_TIMEOUT_S + 1, 0):
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
            sockets.append(conn.sock)
            time.sleep(pause_s)
        assert statuses == [200, 200]
        assert sockets[0] is sockets[1], "the same connection served both"
    finally:
        conn.close()


def test_database_stopped_mid_run_answers_503_then_recovers_and_loses_no_run(
    redis_url: str, tmp_path: Path
) -> None:
    if shutil.which("initdb") is None:  # the test stops a PostgreSQL cluster of its own
        unavailable("PostgreSQL's initdb is not on PATH")
    with postgres_server() as pg, deployed(redis_url, tmp_path, pg.url) as deployment:
        worker = deployment.start_worker()
        tenant = deployment.new_tenant()
        with httpx.Client(base_url=deployment.base_url, headers=tenant.headers, timeout=30) as http:
            accepted = [http.post("/v1/runs", json=TOOLED if n % 2 else SLOW) for n in range(6)]
            assert all(r.status_code in (200, 201, 202) for r in accepted)
            run_ids = [r.json()["id"] for r in accepted]
            time.sleep(1.5)  # mid-run
            pg.stop()
            during = [
                http.post("/v1/runs", json=SLOW),
                http.get(f"/v1/runs/{run_ids[0]}"),
                http.get(f"/v1/runs/{run_ids[1]}/events", headers={"Last-Event-ID": "3"}),
            ]
            time.sleep(8)
            during.append(http.get(f"/v1/runs/{run_ids[2]}"))
            pg.start()

            assert [r.status_code for r in during] == [503] * 4, [r.text for r in during]
            assert all(r.headers.get("retry-after") for r in during)
            for run_id in run_ids:
                events = follow(http, run_id)
                assert_one_sequence(events)
                assert events[-1]["status"] == "completed", events[-1]
            assert worker.poll() is None, "the worker exited"
