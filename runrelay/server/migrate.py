"""Apply the Alembic migrations shipped inside the package (`runrelay migrate`)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, text

from runrelay.server.engine import make_engine
from runrelay.server.settings import Settings

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def upgrade(settings: Settings, engine: Engine | None = None, revision: str = "head") -> None:
    owned = engine is None
    engine = engine or make_engine(settings)
    if settings.database_schema and engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{settings.database_schema}"'))
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        if owned:
            engine.dispose()
