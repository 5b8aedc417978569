"""The plans PostgreSQL makes for a run's start and ending find the run by its primary key,
whatever the table's statistics say. A new deployment's `runs` table is small and not yet
analyzed; a plan that scanned the whole table (or every run in the status it left) then kept
doing so as the table grew, until an analyze (seen in `bench/throughput.py`: a third of the starts
and endings read every row, half of them scanned `ix_runs_status`)."""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import event, text

from runrelay.server.engine import make_engine
from runrelay.server.migrate import upgrade
from runrelay.server.run_table import Ending, RunTable
from runrelay.server.settings import Settings
from runrelay.server.store import Store
from runrelay.types import RunStatus
from tests.runrelay.test_lifecycle import run_in


def test_a_run_s_start_and_ending_find_it_by_its_primary_key(postgres: Settings) -> None:
    schema = f"rr_plans_{secrets.token_hex(4)}"
    own = postgres.model_copy(update={"database_schema": schema})
    engine = make_engine(own)
    plans: list[str] = []

    def explain(_conn: Any, cursor: Any, statement: str, parameters: Any, *_rest: Any) -> None:
        if statement.lstrip().startswith("WITH locked"):  # a move: a start or an ending
            cursor.execute("EXPLAIN " + statement, parameters)
            plans.append("\n".join(line for (line,) in cursor.fetchall()))

    try:
        upgrade(own, engine)  # a new table, never analyzed
        store = Store(engine)
        tenant = store.create_tenant("plans")
        runs = [run_in(store, tenant.id, RunStatus.QUEUED) for _ in range(3)]
        event.listen(engine, "before_cursor_execute", explain)
        table = RunTable(engine)
        for run in runs:
            assert table.start(run.id, "token") is not None
            ending = Ending.by_worker("token")
            assert table.end(run.id, RunStatus.COMPLETED, ending=ending, log="") is not None
        assert len(plans) == 6, "three starts and three endings"
        scans = [plan for plan in plans if "Seq Scan on runs" in plan]
        assert not scans, f"{len(scans)} of 6 moves scan the whole table:\n{scans[0]}"
        # Nor every run in the status it leaves (with 2,000 running, 2,000 index entries).
        by_status = [plan for plan in plans if "ix_runs_status" in plan]
        assert not by_status, f"{len(by_status)} of 6 moves scan by status:\n{by_status[0]}"
    finally:
        event.remove(engine, "before_cursor_execute", explain)
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()
