"""Migration 0009 moves archived logs from a row per event to a row per run, losing nothing."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from runrelay.server.engine import make_engine
from runrelay.server.migrate import upgrade
from runrelay.server.settings import Settings
from runrelay.server.store import Store


def test_logs_archived_before_0009_replay_the_same_after_it(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'old.db'}")
    engine = make_engine(settings)
    upgrade(settings, engine, revision="0008_seq_reserved")
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO tenants (id, name, created_at) VALUES ('t', 't', '2026-01-01')")
        )
        for run_id in ("run_a", "run_b"):
            conn.execute(
                text(
                    "INSERT INTO runs (id, tenant_id, status, agent_name, agent_id, agent_revision,"
                    " created_at, attempts, waited_s, resumes, seq_reserved) VALUES"
                    " (:id, 't', 'completed', 'a', 'a', 1, '2026-01-01', 1, 0, 0, 0)"
                ),
                {"id": run_id},
            )
        for seq in (3, 1, 2):  # stored out of order; a message with a newline in it
            data = f'{{"seq":{seq},"type":"output_text_delta","delta":"line\\nnext"}}'
            conn.execute(
                text("INSERT INTO run_events VALUES ('run_a', :seq, 'output_text_delta', :data)"),
                {"seq": seq, "data": data},
            )

    upgrade(settings, engine)

    store = Store(engine)
    assert store.archived_events("run_a") == [
        f'{{"seq":{seq},"type":"output_text_delta","delta":"line\\nnext"}}' for seq in (1, 2, 3)
    ]
    assert store.archived_events("run_a", after=2) == [
        '{"seq":3,"type":"output_text_delta","delta":"line\\nnext"}'
    ]
    assert store.archived_events("run_b") == []
    engine.dispose()
