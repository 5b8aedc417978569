"""The `runrelay dev` data dir (`.runrelay/` by default): what lives there and who else uses it.

`runrelay dev` keeps its SQLite database and its demo API key there. The admin commands
(`keys`, `tenants`) run beside a `runrelay dev` use that database when DATABASE_URL is not set,
and say so; with neither, they refuse with the fix instead of creating a stray `./runrelay.db`.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from runrelay.server.settings import Settings
from runrelay.server.store import Store

DEFAULT_DATA_DIR = Path(".runrelay")
DEMO_TENANT = "demo"
_DATABASE_FILE = "runrelay.db"
_DEMO_KEY_FILE = "demo_api_key"


def dev_database_url(data_dir: Path) -> str:
    return f"sqlite:///{(data_dir / _DATABASE_FILE).resolve()}"


def admin_settings(settings: Settings, data_dir: Path = DEFAULT_DATA_DIR) -> Settings:
    """The settings of an admin command: DATABASE_URL when set, else the database of the
    `runrelay dev` whose data dir is here, else a plain `runrelay migrate`'s `./runrelay.db`."""
    if "database_url" in settings.model_fields_set:
        return settings
    dev_db = data_dir / _DATABASE_FILE
    if dev_db.exists():
        click.echo(f"database: runrelay dev's {dev_db} (set DATABASE_URL for another)", err=True)
        return settings.model_copy(update={"database_url": dev_database_url(data_dir)})
    if Path(_DATABASE_FILE).exists():
        return settings
    raise click.ClickException(
        f"no database: DATABASE_URL is not set and there is no `runrelay dev` data dir here "
        f"({dev_db}). Run this beside `runrelay dev` (in the folder it was started from), or "
        "set DATABASE_URL to the service's database (after `runrelay migrate`)."
    )


def demo_key(store: Store, data_dir: Path) -> str:
    """The demo tenant's API key: the one this data dir kept, while it still works; else a new
    one, kept for the next start (readable by its owner only)."""
    path = data_dir / _DEMO_KEY_FILE
    if path.exists():
        kept = path.read_text().strip()
        found = store.authenticate(kept)
        if found is not None and found.tenant_id == store.ensure_tenant(DEMO_TENANT).id:
            return kept
    key = store.create_api_key(store.ensure_tenant(DEMO_TENANT).id)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key
