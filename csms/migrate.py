"""Schema migrations (Alembic), applied by ``csms serve`` and ``csms migrate``."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    """An Alembic config pointing at our migrations and ``database_url``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


async def upgrade(database_url: str, revision: str = "head") -> None:
    """Apply migrations up to ``revision``. Alembic's env runs its own event loop, so it runs
    in a worker thread and never blocks the server's loop."""
    await asyncio.to_thread(command.upgrade, alembic_config(database_url), revision)
