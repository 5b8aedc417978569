"""One worker process holds many runs at once on its shared event loop."""

from __future__ import annotations

import asyncio
import json

import httpx
from httpx_sse import aconnect_sse

from runrelay.server.store import Store
from runrelay.server.tenants import update_limits
from tests.conftest import TenantKey
from tests.sse import assert_complete_log

RUNS = 50


def test_50_concurrent_streamed_runs_complete_with_correct_logs(
    api: str, tenant: TenantKey, store: Store
) -> None:
    # Above the default concurrency cap, runs would wait in the tenant's queue instead.
    update_limits(store, tenant.tenant_id, max_concurrent_runs=RUNS)

    async def stream_one(http: httpx.AsyncClient, n: int) -> list[dict]:
        body = {"agent": "bank credit-analyst", "input": {"company": f"Company {n}"}}
        events = []
        async with aconnect_sse(http, "POST", "/v1/runs/stream", json=body) as source:
            assert source.response.status_code == 200
            async for sse in source.aiter_sse():
                if not sse.data:
                    continue  # a keep-alive comment
                events.append(json.loads(sse.data))
        return events

    async def scenario() -> list[list[dict]]:
        limits = httpx.Limits(max_connections=RUNS * 2)
        async with httpx.AsyncClient(
            base_url=api, headers=tenant.headers, timeout=120, limits=limits
        ) as http:
            return await asyncio.gather(*(stream_one(http, n) for n in range(RUNS)))

    logs = asyncio.run(scenario())
    assert len({log[0]["run_id"] for log in logs}) == RUNS
    for log in logs:
        assert_complete_log(log)
        assert log[-1]["status"] == "completed"
        assert sum(e["type"] == "output_text_delta" for e in log) == 24
        assert sum(e["type"] == "tool_call_result" for e in log) == 1
    # The runs overlapped: each takes ~0.7 s of scripted latency, so 50 one after the other would
    # take 35 s; started/done timestamps show how many were in flight together.
    spans = [
        (next(e["ts"] for e in log if e["type"] == "run_started"), log[-1]["ts"]) for log in logs
    ]
    peak = max(sum(1 for s, d in spans if s <= t < d) for t, _ in spans)
    assert peak >= 25, f"only {peak} runs were in flight at once"
