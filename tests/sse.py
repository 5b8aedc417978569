"""Reading a run's SSE stream in tests, the way a client would."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
from httpx_sse import connect_sse


def read_events(
    client: httpx.Client, method: str, url: str, *, limit: int | None = None, **kwargs: Any
) -> list[dict[str, Any]]:
    """Events of one SSE response, stopping (and dropping the connection) after `limit`."""
    events: list[dict[str, Any]] = []
    with connect_sse(client, method, url, **kwargs) as source:
        assert source.response.status_code == 200, source.response.read()
        for sse in source.iter_sse():
            if not sse.data:
                continue  # httpx-sse reports a `: ping` comment as an empty event
            event = json.loads(sse.data)
            assert sse.id == str(event["seq"]), "the SSE id is the event's seq"
            assert sse.event == event["type"], "the SSE event name is the event's type"
            events.append(event)
            if limit is not None and len(events) >= limit:
                break
    return events


def assert_complete_log(events: list[dict[str, Any]], *, first_seq: int = 1) -> None:
    """seq grows by exactly one, and the log ends with exactly one `done`."""
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(first_seq, first_seq + len(events))), f"gap or duplicate in {seqs}"
    assert [e["type"] for e in events].count("done") == 1
    assert events[-1]["type"] == "done"


def wait_finished(client: httpx.Client, run_id: str, timeout_s: float = 30) -> dict[str, Any]:
    """Poll the run until it reaches a final status; the run object."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run: dict[str, Any] = client.get(f"/v1/runs/{run_id}").json()
        if run["status"] in ("completed", "failed", "cancelled", "expired"):
            return run
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} did not finish in {timeout_s} s")
