"""A worker SIGKILLed mid-batch loses no line: the runs it held are resumed elsewhere and every
`custom_id` ends in the results or the errors exactly once."""

from __future__ import annotations

import signal

import httpx

from tests.api_shim.batch_helpers import counts_add_up, ended, rows, submit, wait_for
from tests.recovery.conftest import Deployment


def test_sigkilled_worker_mid_batch_loses_no_line(
    deployment: Deployment, rec_client: httpx.Client
) -> None:
    deployment.ensure_workers(1)
    lines = [{"custom_id": f"line-{i}", "message": "go"} for i in range(25)]
    created = submit(rec_client, lines, agent="slow-analyst")
    assert created.status_code == 202, created.text
    batch = created.json()
    wait_for(
        rec_client,
        batch["id"],
        lambda b: b["request_counts"]["completed"] >= 1 and b["request_counts"]["running"] >= 3,
    )
    for proc in deployment.running_workers():  # every run in flight dies with its worker
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=20)
    deployment.start_worker()

    final = wait_for(rec_client, batch["id"], ended, on_poll=counts_add_up, timeout_s=240)
    assert final["status"] == "completed", final
    results, errors = rows(rec_client, final["results_url"]), rows(rec_client, final["errors_url"])
    every = [r["custom_id"] for r in results] + [e["custom_id"] for e in errors]
    assert sorted(every) == sorted(line["custom_id"] for line in lines)
    assert final["request_counts"]["completed"] == len(results) == 25
    resumed = [
        r for r in results if rec_client.get(f"/v1/runs/{r['run_id']}").json()["attempts"] > 1
    ]
    assert resumed, "some runs were in flight on the killed worker"
