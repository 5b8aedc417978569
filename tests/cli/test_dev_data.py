"""The `runrelay dev` data dir (issue 14): admin commands beside `runrelay dev` use its database
(or say clearly what to do), and the demo key is kept across starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from runrelay.cli._dev_data import DEFAULT_DATA_DIR, demo_key, dev_database_url
from runrelay.cli._main import main as cli
from runrelay.server.engine import make_engine
from runrelay.server.migrate import upgrade
from runrelay.server.settings import Settings
from runrelay.server.store import Store
from runrelay.server.tenants import revoke_key

NO_DATABASE_URL = {"DATABASE_URL": None, "RUNRELAY_DATABASE_URL": None}


def _migrated_store(data_dir: Path) -> Store:
    data_dir.mkdir(parents=True, exist_ok=True)
    settings = Settings(database_url=dev_database_url(data_dir))
    upgrade(settings)
    return Store(make_engine(settings))


def test_keys_create_without_any_database_says_how_to_point_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["keys", "create", "--tenant", "x"], env=NO_DATABASE_URL)
    assert result.exit_code == 1
    assert "DATABASE_URL" in result.output and "runrelay dev" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "runrelay.db").exists(), "no stray database"


def test_keys_create_beside_runrelay_dev_uses_its_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = _migrated_store(tmp_path / DEFAULT_DATA_DIR)
    result = CliRunner().invoke(cli, ["keys", "create", "--tenant", "x"], env=NO_DATABASE_URL)
    assert result.exit_code == 0, result.output
    assert "runrelay dev's" in result.stderr
    found = store.authenticate(result.stdout.strip())
    assert found is not None and found.tenant_id == store.get_tenant("x").id  # type: ignore[union-attr]
    store.engine.dispose()


def test_an_unmigrated_database_is_named_with_the_fix(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    result = CliRunner().invoke(cli, ["keys", "create", "--tenant", "x"], env={"DATABASE_URL": url})
    assert result.exit_code == 1
    assert "runrelay migrate" in result.output and "Traceback" not in result.output


def test_the_demo_key_is_kept_across_starts_until_revoked(tmp_path: Path) -> None:
    store = _migrated_store(tmp_path)
    first = demo_key(store, tmp_path)
    assert demo_key(store, tmp_path) == first
    assert (tmp_path / "demo_api_key").stat().st_mode & 0o077 == 0, "readable by its owner only"
    revoke_key(store, first[:12])
    second = demo_key(store, tmp_path)
    assert second != first and store.authenticate(second) is not None
    store.engine.dispose()
