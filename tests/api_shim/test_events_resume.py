"""Resumable SSE (DESIGN §4): a client that drops and comes back with a cursor gets exactly the
events after it, whether the run is live, finished, or archived."""

from __future__ import annotations

import httpx
import pytest
import redis

from runrelay.server.keys import RedisKeys
from runrelay.server.settings import Settings
from tests.sse import assert_complete_log, read_events, wait_finished

ANALYST = {"agent": "bank credit-analyst", "input": {"company": "ACME Corp"}}


def test_streamed_run_is_one_gapless_log_ending_in_done(client: httpx.Client) -> None:
    with client.stream("POST", "/v1/runs/stream", json=ANALYST) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        assert response.headers["x-request-id"]
        run_id = response.headers["x-run-id"]
        assert response.headers["content-location"] == f"/v1/runs/{run_id}/events"
        body = response.read().decode()
    assert body.count("retry: ") == 1, "retry is sent once"
    events = read_events(client, "GET", f"/v1/runs/{run_id}/events")
    assert_complete_log(events)
    types = [e["type"] for e in events]
    assert types[:3] == ["run_queued", "run_started", "agent_resolved"]
    assert types.count("output_text_delta") >= 20
    assert "tool_call_delta" in types and "usage" in types
    assert types[-2:] == ["chat_completed", "done"]
    result = next(e for e in events if e["type"] == "tool_call_result")
    assert result["name"] == "lookup_credit_score" and result["result"]["company"] == "ACME Corp"
    done = events[-1]
    text = "".join(e["delta"] for e in events if e["type"] == "output_text_delta")
    assert done["status"] == "completed" and done["output"] == text
    assert done["usage"]["total_tokens"] > 0
    assert all(e["run_id"] == run_id for e in events)


@pytest.mark.parametrize("how", ["last-event-id", "after"])
def test_stream_dropped_mid_run_resumes_with_exactly_the_rest(
    client: httpx.Client, how: str
) -> None:
    first = read_events(client, "POST", "/v1/runs/stream", json=ANALYST, limit=6)
    run_id = first[0]["run_id"]
    cursor = first[-1]["seq"]
    assert client.get(f"/v1/runs/{run_id}").json()["status"] in ("queued", "running"), (
        "the drop happened mid-run"
    )
    if how == "after":
        rest = read_events(client, "GET", f"/v1/runs/{run_id}/events", params={"after": cursor})
    else:
        rest = read_events(
            client, "GET", f"/v1/runs/{run_id}/events", headers={"Last-Event-ID": str(cursor)}
        )
    assert rest[0]["seq"] == cursor + 1
    assert_complete_log(first + rest)
    assert rest[-1]["status"] == "completed", "a client disconnect never cancels the run"


def test_resume_after_the_run_ended_gets_exactly_the_rest(client: httpx.Client) -> None:
    run = client.post("/v1/runs", json=ANALYST).json()
    wait_finished(client, run["id"])
    everything = read_events(client, "GET", f"/v1/runs/{run['id']}/events")
    assert_complete_log(everything)
    rest = read_events(
        client, "GET", f"/v1/runs/{run['id']}/events", headers={"Last-Event-ID": "10"}
    )
    assert rest == everything[10:]


def test_replay_after_the_redis_stream_is_gone_comes_from_the_archive(
    client: httpx.Client, settings: Settings
) -> None:
    run = client.post("/v1/runs", json=ANALYST).json()
    wait_finished(client, run["id"])
    before = read_events(client, "GET", f"/v1/runs/{run['id']}/events")
    raw = redis.Redis.from_url(settings.redis_url)
    assert raw.delete(RedisKeys(settings.redis_prefix).events(run["id"])) == 1
    raw.close()
    assert read_events(client, "GET", f"/v1/runs/{run['id']}/events") == before
    tail = read_events(client, "GET", f"/v1/runs/{run['id']}/events", params={"after": 7})
    assert tail == before[7:]


def test_cursor_beyond_the_end_of_a_live_run_waits_for_new_events(client: httpx.Client) -> None:
    run = client.post("/v1/runs", json={"agent": "slow-analyst", "message": "go"}).json()
    events = read_events(
        client, "GET", f"/v1/runs/{run['id']}/events", params={"after": 8}, limit=3
    )
    assert [e["seq"] for e in events] == [9, 10, 11]


@pytest.mark.parametrize(
    ("params", "headers", "param"),
    [
        ({"after": "abc"}, {}, "after"),
        ({"after": "-3"}, {}, "after"),
        ({"after": "1.5"}, {}, "after"),
        ({}, {"Last-Event-ID": "evt-42"}, "Last-Event-ID"),
        ({}, {"Last-Event-ID": "-1"}, "Last-Event-ID"),
    ],
)
def test_bad_cursor_is_400_naming_it(
    client: httpx.Client, params: dict, headers: dict, param: str
) -> None:
    run = client.post("/v1/runs", json=ANALYST).json()
    response = client.get(f"/v1/runs/{run['id']}/events", params=params, headers=headers)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_cursor" and error["param"] == param
    assert param in error["message"]


def test_a_quiet_live_stream_gets_pings_and_its_request_id(client: httpx.Client) -> None:
    """A run waiting for approval sends nothing: its stream still gets `: ping` comments (the
    hub's ticker wakes the idle wait) and the response carries the caller's request id."""
    run = client.post(
        "/v1/runs", json={"agent": "bank payments", "message": "Pay ACME Supplies 1,250 EUR"}
    ).json()
    path = f"/v1/runs/{run['id']}/events"
    headers = {"X-Request-ID": "quiet-1"}
    with client.stream("GET", path, params={"after": 10_000}, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["x-request-id"] == "quiet-1"
        first = next(line for line in response.iter_lines() if line)
    assert first == ": ping"
