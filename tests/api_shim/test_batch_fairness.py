"""Fair feeding: a big batch runs within its tenant's concurrency cap, and neither another
tenant's run nor the same tenant's interactive run waits behind it."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from runrelay.server.settings import Settings
from runrelay.server.store import Store
from runrelay.server.tenants import update_limits
from tests.api_shim.batch_helpers import publish_agents, submit, wait_for
from tests.conftest import TenantKey

CAP = 4
# Generous: a run starts as soon as a batch run of its tenant ends (0.5 s each) or at once.
START_BOUND_S = 15.0


def _start_delay_s(client: httpx.Client, body: dict[str, Any]) -> float:
    created = client.post("/v1/runs", json=body)
    assert created.status_code == 202, created.text
    run_id, posted = created.json()["id"], time.monotonic()
    while True:
        run = client.get(f"/v1/runs/{run_id}").json()
        if run["status"] != "queued":
            return time.monotonic() - posted
        assert time.monotonic() - posted < 120, "the run never started"
        time.sleep(0.05)


def test_a_2000_line_batch_stays_within_the_cap_and_starves_no_interactive_run(
    api: str,
    client: httpx.Client,
    store: Store,
    settings: Settings,
    tenant: TenantKey,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    module = publish_agents(store, settings, tmp_path_factory.mktemp("fair"), slow_ms=250)
    update_limits(store, tenant.tenant_id, max_concurrent_runs=CAP)
    lines = [{"custom_id": f"c-{i}", "message": "hi"} for i in range(2000)]
    batch = submit(client, lines, agent=f"{module}.slow").json()
    other = store.create_tenant(f"t-fair-{batch['id'][-6:]}")
    headers = {"Authorization": f"Bearer {store.create_api_key(other.id)}"}
    try:
        busy = wait_for(client, batch["id"], lambda b: b["request_counts"]["running"] >= CAP - 1)
        assert busy["request_counts"]["running"] <= CAP
        usage = client.get("/v1/usage").json()["runs"]
        assert usage["running"] <= CAP and usage["queued"] <= 1, usage

        quick = {"agent": f"{module}.quick", "message": "now please"}
        with httpx.Client(base_url=api, headers=headers, timeout=30) as stranger:
            assert _start_delay_s(stranger, quick) < START_BOUND_S
        assert _start_delay_s(client, quick) < START_BOUND_S

        after = client.get(f"/v1/batches/{batch['id']}").json()
        assert after["request_counts"]["running"] <= CAP
        assert after["request_counts"]["queued"] > 1000, "the batch is far from done"
    finally:
        client.post(f"/v1/batches/{batch['id']}/cancel")
        wait_for(client, batch["id"], lambda b: b["status"] == "cancelled")
