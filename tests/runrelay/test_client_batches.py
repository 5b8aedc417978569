"""`client.batches` (sync and async) and `runrelay batch` against the real shim and worker."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from runrelay import AsyncClient, Client, UnprocessableEntityError
from runrelay.batch_types import BatchObject, BatchResult, BatchStatus
from runrelay.cli._main import main
from runrelay.server.settings import Settings
from runrelay.server.store import Store
from tests.api_shim.batch_helpers import publish_agents
from tests.conftest import TenantKey


@pytest.fixture(scope="module")
def module(store: Store, settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> str:
    return publish_agents(store, settings, tmp_path_factory.mktemp("sdk"), slow_ms=200)


def test_create_from_an_iterable_wait_with_progress_and_typed_results(
    api: str, tenant: TenantKey, module: str
) -> None:
    seen: list[BatchObject] = []
    with Client(api_key=tenant.key, base_url=api) as client:
        lines = ({"custom_id": f"c{i}", "message": "hi"} for i in range(50))
        batch = client.batches.create(lines, agent=f"{module}.quick", metadata={"k": "v"})
        assert batch.request_counts.total == 50 and batch.metadata == {"k": "v"}
        final = client.batches.wait(batch.id, progress=seen.append, poll_s=0.2)
        assert final.status is BatchStatus.COMPLETED
        assert seen[-1].status is BatchStatus.COMPLETED
        results = list(client.batches.results(batch.id))
        assert all(isinstance(r, BatchResult) for r in results)
        assert sorted(r.custom_id for r in results) == sorted(f"c{i}" for i in range(50))
        assert list(client.batches.errors(batch.id)) == []
        assert [b.id for b in client.batches.list(limit=1).data] == [batch.id]


def test_bad_lines_raise_a_422_whose_body_names_them(
    api: str, tenant: TenantKey, module: str
) -> None:
    with Client(api_key=tenant.key, base_url=api) as client:
        lines = [{"custom_id": "a", "message": "hi"}, {"custom_id": "a", "message": "again"}]
        with pytest.raises(UnprocessableEntityError) as refused:
            client.batches.create(lines, agent=f"{module}.quick")
    body = refused.value.body
    assert isinstance(body, dict)
    assert body["error"]["errors"][0]["line"] == 2


def test_the_async_client_takes_an_async_iterable_and_cancels(
    api: str, tenant: TenantKey, module: str
) -> None:
    async def lines() -> AsyncIterator[dict[str, str]]:
        for i in range(200):
            yield {"custom_id": f"c{i}", "message": "hi"}

    async def scenario() -> None:
        async with AsyncClient(api_key=tenant.key, base_url=api) as client:
            batch = await client.batches.create(lines(), agent=f"{module}.slow")
            assert batch.request_counts.total == 200
            await client.batches.cancel(batch.id)
            final = await client.batches.wait(batch.id, poll_s=0.2, timeout_s=60)
            assert final.status is BatchStatus.CANCELLED
            errors = [e async for e in client.batches.errors(batch.id)]
            results = [r async for r in client.batches.results(batch.id)]
            assert len(errors) + len(results) == 200

    asyncio.run(scenario())


def test_cli_submit_waits_with_a_progress_bar_and_writes_results(
    api: str, tenant: TenantKey, module: str, tmp_path: Path
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(
        "".join(json.dumps({"custom_id": f"c{i}", "message": "hi"}) + "\n" for i in range(20))
    )
    out = tmp_path / "out.jsonl"
    env = {"RUNRELAY_API_KEY": tenant.key, "RUNRELAY_BASE_URL": api}
    runner = CliRunner()
    result = runner.invoke(
        main,
        ["batch", "submit", str(source), "--agent", f"{module}.quick", "--wait", "-o", str(out)],
        env=env,
    )
    assert result.exit_code == 0, result.output
    batch_id = result.stdout.splitlines()[0]
    assert "20/20" in result.stderr and "ETA" in result.stderr
    assert "completed: 20 completed, 0 failed" in result.stderr
    assert sorted(json.loads(line)["custom_id"] for line in out.read_text().splitlines()) == sorted(
        f"c{i}" for i in range(20)
    )
    status = runner.invoke(main, ["batch", "status", batch_id], env=env)
    assert status.exit_code == 0 and "completed" in status.output
    listed = runner.invoke(main, ["batch", "results", batch_id], env=env)
    assert len(listed.stdout.splitlines()) == 20
    cancel = runner.invoke(main, ["batch", "cancel", batch_id], env=env)
    assert cancel.exit_code == 1 and "already completed" in cancel.output
