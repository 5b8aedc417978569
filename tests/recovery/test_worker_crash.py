"""A worker that dies mid-run (SIGKILL) or is stopped (SIGTERM) does not lose the run: another
worker resumes it from its last checkpoint, the client's stream stays complete and gapless, and
no finished tool call runs again."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from typing import Any

import httpx
from httpx_sse import connect_sse

from runrelay import Client
from tests.recovery.conftest import GRACE_S, LEASE_TTL_S, Deployment
from tests.sse import assert_complete_log
from worker.app import hand_back_reserve_s

TOOLED = {"agent": "tooled-slow", "message": "go"}
SLOW = {"agent": "slow-analyst", "message": "go"}


def stream_and_act(
    client: httpx.Client, body: dict[str, Any], act_after: str, act: Any
) -> list[dict[str, Any]]:
    """Stream a new run; call `act(events)` once, when the first `act_after` event arrives."""
    events: list[dict[str, Any]] = []
    acted = False
    with connect_sse(client, "POST", "/v1/runs/stream", json=body) as source:
        assert source.response.status_code == 200
        for sse in source.iter_sse():
            if not sse.data:
                continue
            event = json.loads(sse.data)
            assert sse.id == str(event["seq"])
            events.append(event)
            if not acted and event["type"] == act_after:
                act(events)
                acted = True
    return events


def worker_pid(events: list[dict[str, Any]]) -> int:
    started = [e for e in events if e["type"] == "run_started"][-1]
    return int(started["worker"].rpartition(":")[2])


def visible_output(events: list[dict[str, Any]]) -> str:
    """The text a client shows once it leaves superseded deltas out."""
    hidden: set[int] = set()
    for e in events:
        if e["type"] == "metadata" and "superseded" in e:
            hidden.update(range(e["superseded"]["from_seq"], e["superseded"]["to_seq"] + 1))
    return "".join(
        e["delta"] for e in events if e["type"] == "output_text_delta" and e["seq"] not in hidden
    )


def test_sigkilled_worker_mid_run_is_resumed_by_another_with_a_gapless_stream_and_tools_run_once(
    deployment: Deployment, rec_client: httpx.Client
) -> None:
    deployment.ensure_workers(2)
    killed: dict[str, float] = {}

    def kill_worker(events: list[dict[str, Any]]) -> None:
        deployment.worker_with_pid(worker_pid(events)).send_signal(signal.SIGKILL)
        killed["at"] = time.time()

    # Killed after both tool turns, while the final text streams.
    events = stream_and_act(rec_client, TOOLED, "output_text_delta", kill_worker)

    assert_complete_log(events)
    done = events[-1]
    assert done["status"] == "completed", done
    starts = [e for e in events if e["type"] == "run_started"]
    assert [s["attempt"] for s in starts] == [1, 2]
    assert starts[0]["worker"] != starts[1]["worker"]
    recovery_s = starts[1]["ts"] - killed["at"]
    assert recovery_s < LEASE_TTL_S + 10, f"took {recovery_s:.1f} s to resume"
    markers = [e for e in events if e["type"] == "metadata"]
    assert len(markers) == 1
    superseded = markers[0]["superseded"]
    assert superseded["to_seq"] == starts[1]["seq"] - 1
    assert all(
        e["type"] == "output_text_delta"
        for e in events[superseded["from_seq"] - 1 : superseded["to_seq"]]
    ), "only the text streamed after the last checkpoint is superseded"
    assert visible_output(events) == done["output"]
    results = [e for e in events if e["type"] == "tool_call_result"]
    assert len(results) == 3 and all(r["seq"] < superseded["from_seq"] for r in results)
    executions = deployment.tool_executions(done["run_id"])
    assert sorted(executions) == sorted(r["tool_call_id"] for r in results)
    assert set(executions.values()) == {1}, f"a tool call ran twice: {executions}"
    replay = [json.loads(line) for line in _replay(rec_client, done["run_id"])]
    assert replay == events, "the archived log is the one the client saw"
    key = rec_client.headers["authorization"].removeprefix("Bearer ")
    with Client(api_key=key, base_url=str(rec_client.base_url)) as sdk:
        stream = sdk.runs.events(done["run_id"])
        assert list(stream) == events
        assert stream.output == done["output"], "the SDK leaves superseded deltas out"


def _replay(client: httpx.Client, run_id: str) -> list[str]:
    lines = []
    with connect_sse(client, "GET", f"/v1/runs/{run_id}/events") as source:
        lines = [sse.data for sse in source.iter_sse() if sse.data]
    return lines


def test_sigterm_lets_the_run_go_on_then_hands_it_back_within_the_grace_period(
    deployment: Deployment, rec_client: httpx.Client
) -> None:
    deployment.ensure_workers(2)
    stopped: dict[str, Any] = {}

    def watch_exit(proc: subprocess.Popen[bytes]) -> None:
        stopped["exit_code"] = proc.wait(timeout=30)
        stopped["exited"] = time.time()

    def terminate_worker(events: list[dict[str, Any]]) -> None:
        proc = deployment.worker_with_pid(worker_pid(events))
        proc.send_signal(signal.SIGTERM)
        stopped.update(at=time.time())
        stopped["watch"] = threading.Thread(target=watch_exit, args=(proc,), daemon=True)
        stopped["watch"].start()

    events = stream_and_act(rec_client, SLOW, "output_text_delta", terminate_worker)

    assert_complete_log(events)
    assert events[-1]["status"] == "completed"
    starts = [e for e in events if e["type"] == "run_started"]
    assert [s["attempt"] for s in starts] == [1, 2], "the run was handed to another worker"
    assert starts[0]["worker"] != starts[1]["worker"]
    first_attempt = [e for e in events if starts[0]["seq"] < e["seq"] < starts[1]["seq"]]
    # One run held: the hand-back begins `hand_back_reserve_s(1)` before the grace period ends,
    # so that the process is gone within it.
    handed_back_after = first_attempt[-1]["ts"] - stopped["at"]
    assert handed_back_after >= GRACE_S - hand_back_reserve_s(1) - 0.3, (
        "the run went on during the grace period"
    )
    assert handed_back_after <= GRACE_S - hand_back_reserve_s(1) + 0.5, (
        "the hand-back began early enough for the worker to exit within the grace period"
    )
    assert starts[1]["ts"] - stopped["at"] < GRACE_S + 5, "handed back, not left to the sweeper"
    # Only a hand-back counts a resume (the sweeper's re-enqueue after a lapsed lease does not).
    run = deployment.store.get_run(events[-1]["run_id"])
    assert run is not None and run.resumes == 1, "the hand-back was recorded"
    stopped["watch"].join(timeout=30)
    assert stopped.get("exit_code") == 0, "the worker exited cleanly"
    # A second of slack for this machine's load; the hand-back left it 1.5 s.
    assert stopped["exited"] - stopped["at"] < GRACE_S + 1.0, "it exited within the grace period"
    marker = next(e for e in events if e["type"] == "metadata")
    assert marker["superseded"]["to_seq"] == starts[1]["seq"] - 1
    assert visible_output(events) == events[-1]["output"]
