"""Run the Alembic migrations from code (tests, CLI) on an ``AsyncEngine``."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS = PROJECT_ROOT / "migrations"


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic config from ``[tool.alembic]``; a given connection is shared with env.py."""
    pyproject = PROJECT_ROOT / "pyproject.toml"
    config = Config(toml_file=pyproject) if pyproject.exists() else Config()
    # An installed package has no pyproject beside it: point at the scripts directly.
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


async def upgrade(engine: AsyncEngine, rev: str = "head") -> None:
    """Upgrade the database behind ``engine`` to ``rev``."""
    async with engine.begin() as conn:
        await conn.run_sync(lambda c: command.upgrade(alembic_config(c), rev))


async def downgrade(engine: AsyncEngine, rev: str) -> None:
    """Downgrade the database behind ``engine`` to ``rev`` (``"base"`` removes every table)."""
    async with engine.begin() as conn:
        await conn.run_sync(lambda c: command.downgrade(alembic_config(c), rev))


async def current(engine: AsyncEngine) -> str | None:
    """The revision the database is at, or None when it was never migrated."""
    from alembic.runtime.migration import MigrationContext

    async with engine.connect() as conn:
        return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())


def head() -> str:
    """The newest revision this code knows."""
    from alembic.script import ScriptDirectory

    found = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert found is not None
    return found


def known_revisions() -> set[str]:
    """Every revision in this code's migration history."""
    from alembic.script import ScriptDirectory

    return {s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


async def schema_problem(engine: AsyncEngine) -> str | None:
    """None when the database is at this code's newest revision; otherwise what is
    wrong, said for a person (never migrated, behind, or newer than the code)."""
    # Alembic announces its context at INFO: not news for a command that only checks.
    quiet = logging.getLogger("alembic.runtime.migration")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        at = await current(engine)
    finally:
        quiet.setLevel(level)
    newest = head()
    if at == newest:
        return None
    if at is None:
        return "has no schema (never migrated)"
    if at in known_revisions():
        return f"is at revision {at}, behind this code's {newest}"
    return f"is at revision {at}, which this code does not know (newest here: {newest})"
