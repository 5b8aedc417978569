"""Self-resuming streams: cut connections (a real TCP proxy in front of the real shim), a clean
end without `done`, keep-alives, and the bounded reconnect budget."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator

import httpx
import pytest

from runrelay import APIConnectionError, AsyncClient, Client, RateLimitError, StreamChunk
from runrelay.client._streaming import EventStream
from runrelay.client._transport import ClientOptions, Request
from tests.conftest import TenantKey
from tests.sse import assert_complete_log, read_events
from tests.tcp_proxy import TcpProxy, tcp_proxy

SLOW = {"message": "watch the stream"}


@pytest.fixture
def proxy(api: str) -> Iterator[TcpProxy]:
    with tcp_proxy(api) as proxy:
        yield proxy


def test_stream_cut_twice_mid_run_delivers_every_event_once_in_order(
    proxy: TcpProxy, tenant: TenantKey, client: httpx.Client
) -> None:
    events = []
    cuts = 0
    with Client(tenant.key, base_url=proxy.base_url) as sdk:
        stream = sdk.runs.stream("slow-analyst", **SLOW)
        for event in stream:
            events.append(event)
            if len(events) in (8, 25):
                cuts += proxy.cut()
    assert cuts == 2, "two live connections were cut mid-run"
    assert proxy.connections == 3, "one reconnect per cut"
    assert_complete_log(events)
    assert events[-1]["status"] == "completed"
    assert stream.last_event_id == str(events[-1]["seq"])
    assert events == read_events(client, "GET", f"/v1/runs/{stream.run_id}/events"), (
        "exactly the server's log"
    )
    resumed = [r for r in proxy.requests if r.startswith("GET")]
    assert len(resumed) == 2 and all(f"/v1/runs/{stream.run_id}/events" in r for r in resumed)


def test_async_faos_stream_cut_twice_loses_no_text(proxy: TcpProxy, tenant: TenantKey) -> None:
    async def collect() -> list[StreamChunk]:
        chunks: list[StreamChunk] = []
        async with AsyncClient(tenant.key, base_url=proxy.base_url) as sdk:
            async for chunk in sdk.agents.stream("slow-analyst", "watch the stream"):
                chunks.append(chunk)
                if chunk.type == "text" and sum(c.type == "text" for c in chunks) in (5, 30):
                    proxy.cut()
        return chunks

    chunks = asyncio.run(collect())
    ids = [int(c.id) for c in chunks if c.id]
    assert ids == sorted(set(ids))
    done = chunks[-1]
    assert done.type == "done" and done.data["status"] == "completed"
    assert "".join(c.data for c in chunks if c.type == "text") == done.data["output"]
    assert proxy.connections == 3


def test_create_whose_answer_is_lost_is_resent_and_streams_the_same_run(
    proxy: TcpProxy, tenant: TenantKey, client: httpx.Client
) -> None:
    proxy.drop_responses(1)
    with Client(tenant.key, base_url=proxy.base_url) as sdk:
        events = list(sdk.runs.stream("credit-risk-analyst", input={"company": "ACME Corp"}))
    assert_complete_log(events)
    assert [r.split()[1] for r in proxy.requests] == ["/v1/runs/stream", "/v1/runs/stream"]
    assert len(client.get("/v1/runs").json()["data"]) == 1, "the retry made no second run"


def _sse(*frames: str) -> bytes:
    return "".join(frames).encode()


def _event(seq: int, kind: str, **fields: object) -> str:
    import json

    data = json.dumps({"type": kind, "seq": seq, "run_id": "run_1", **fields})
    return f"id: {seq}\nevent: {kind}\ndata: {data}\n\n"


def _mock_stream(handler) -> EventStream[dict]:
    options = ClientOptions.build("rr_sk_x", "http://runrelay.test", 5.0, 0, None)
    http = httpx.Client(base_url=options.base_url, transport=httpx.MockTransport(handler))
    return EventStream(options, lambda e: e, run_id="run_1", max_reconnects=2, sync_http=http)


def test_clean_end_without_done_resumes_after_the_last_event_and_skips_pings() -> None:
    """A proxy that ends the response cleanly mid-run must not end the stream."""
    seen_cursors: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen_cursors.append(request.headers.get("last-event-id"))
        if len(seen_cursors) == 1:
            body = _sse(_event(1, "run_queued"), ": ping\n\n", _event(2, "run_started"))
        else:  # the server replays from the cursor; a duplicate is ignored anyway
            body = _sse(_event(2, "run_started"), _event(3, "done", status="completed"))
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    stream = _mock_stream(handler)
    assert [e["seq"] for e in stream] == [1, 2, 3]
    assert seen_cursors == [None, "2"]
    assert stream.last_event_id == "3"


def test_gives_up_after_bounded_attempts_without_progress_and_names_the_last_event() -> None:
    calls: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(time.monotonic())
        if len(calls) == 1:
            return httpx.Response(
                200,
                content=_sse(_event(1, "run_queued"), _event(2, "run_started")),
                headers={"content-type": "text/event-stream"},
            )
        raise httpx.ConnectError("refused", request=request)

    stream = _mock_stream(handler)
    received = []
    with pytest.raises(APIConnectionError) as error:
        for event in stream:
            received.append(event["seq"])
    assert received == [1, 2]
    assert error.value.last_event_id == "2" and "2 attempts" in str(error.value)
    assert len(calls) == 1 + 2, "the first connection, then the two allowed attempts"
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert all(gap >= 0.05 for gap in gaps), f"backoff between attempts: {gaps}"


def test_a_stream_error_status_is_raised_typed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": {"code": "run_not_found", "message": "no run"}})

    from runrelay import NotFoundError

    with pytest.raises(NotFoundError):
        list(_mock_stream(handler))


def test_request_carries_the_cursor_as_last_event_id() -> None:
    options = ClientOptions.build("rr_sk_x", "http://runrelay.test", 5.0, 0, None)
    assert Request("GET", "/x").kwargs(5.0)["timeout"] == 5.0
    stream: EventStream[dict] = EventStream(options, lambda e: e, run_id="run_9", after=41)
    assert stream.last_event_id == "41" and stream.run_id == "run_9"


def test_output_leaves_out_deltas_a_resumed_run_superseded() -> None:
    """After a worker crash the resumed run marks seqs 4-5 superseded and says them again."""

    def handler(request: httpx.Request) -> httpx.Response:
        body = _sse(
            _event(1, "run_queued"),
            _event(2, "run_started", attempt=1),
            _event(3, "output_text_delta", delta="Hello"),
            _event(4, "output_text_delta", delta=" wor"),
            _event(5, "output_text_delta", delta="ld, half"),
            _event(6, "run_started", attempt=2),
            _event(7, "metadata", superseded={"from_seq": 4, "to_seq": 6}, attempt=2),
            _event(8, "output_text_delta", delta=" world"),
            _event(9, "done", status="completed", output="Hello world"),
        )
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    stream = _mock_stream(handler)
    events = list(stream)
    assert [e["seq"] for e in events] == list(range(1, 10)), "every event is still delivered"
    assert stream.output == "Hello world" == events[-1]["output"]


def test_a_stream_refused_by_a_long_rate_limit_raises_it_at_once() -> None:
    """A token budget renewing in hours is not waited out: the caller gets the 429 itself."""
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        body = {
            "error": {
                "type": "rate_limit_error",
                "code": "token_budget_exhausted",
                "message": "budget used up",
                "param": None,
                "request_id": "req_1",
            }
        }
        return httpx.Response(429, json=body, headers={"Retry-After": "86400"})

    started = time.monotonic()
    with pytest.raises(RateLimitError) as refused:
        list(_mock_stream(handler))
    assert refused.value.code == "token_budget_exhausted"
    assert calls == 1 and time.monotonic() - started < 2
