"""`RecentRuns`: what the shim remembers of the runs it just created, for their streams."""

from __future__ import annotations

import time

from api_shim.state import RecentRuns
from runrelay.server.tables import Run


def run(run_id: str, tenant_id: str = "ten_a") -> Run:
    return Run(id=run_id, tenant_id=tenant_id, status="queued", agent_name="a", agent_id="a")


def test_a_recent_run_is_its_tenants_only_and_only_for_a_while() -> None:
    recent = RecentRuns(ttl_s=0.2)
    made = run("run_1")
    recent.add(made)

    assert recent.get("run_1", "ten_a") is made
    assert recent.get("run_1", "ten_b") is None, "another tenant reads the database (404)"
    assert recent.get("run_2", "ten_a") is None
    time.sleep(0.25)
    assert recent.get("run_1", "ten_a") is None


def test_it_keeps_at_most_max_runs_the_newest() -> None:
    recent = RecentRuns(ttl_s=60, max_runs=3)
    for n in range(5):
        recent.add(run(f"run_{n}"))

    assert [recent.get(f"run_{n}", "ten_a") is not None for n in range(5)] == [
        False,
        False,
        True,
        True,
        True,
    ]
