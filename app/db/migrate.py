"""Run the Alembic migrations from code (tests, CLI) on an ``AsyncEngine``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, column, delete, func, inspect, select, table, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from app.domain import DomainError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
#: Inside the package in an installed wheel; ``migrations/`` at the top of a checkout.
MIGRATIONS = next(
    (
        path
        for path in (
            Path(__file__).resolve().parents[1] / "migrations",
            PROJECT_ROOT / "migrations",
        )
        if (path / "env.py").is_file()
    ),
    PROJECT_ROOT / "migrations",
)

#: The project's own Alembic version table, so that a database whose other tables
#: belong to an application with Alembic history of its own (``alembic_version``) can
#: hold this project's tables too, each history kept apart.
VERSION_TABLE: Final = "agent_sleepwake_alembic_version"
#: Where releases before the version table had a name of its own kept their revision.
LEGACY_VERSION_TABLE: Final = "alembic_version"
_legacy = table(LEGACY_VERSION_TABLE, column("version_num"))
#: A table only this project creates: evidence that a legacy row is this project's.
_OWN_TABLE: Final = "agent_sessions"


class SchemaConflict(DomainError):
    """The database holds tables with this project's names that this project did not
    create (another application's): migrating would mix the two, so nothing is done."""


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

    def read(connection: Connection) -> str | None:
        own = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        found = own.get_current_revision()
        return found if found is not None else _legacy_revision(connection)

    async with engine.connect() as conn:
        return await conn.run_sync(read)


def _legacy_revision(connection: Connection) -> str | None:
    """This project's revision in the shared ``alembic_version`` table, where releases
    before :data:`VERSION_TABLE` kept it; None when there is none or it is not ours (a
    revision id this history knows, and this project's tables beside it)."""
    found = inspect(connection)
    if not (found.has_table(LEGACY_VERSION_TABLE) and found.has_table(_OWN_TABLE)):
        return None
    ours = set(connection.scalars(select(_legacy.c.version_num))) & known_revisions()
    return ours.pop() if len(ours) == 1 else None


def prepare(
    connection: Connection, context: MigrationContext, metadata: MetaData, script: ScriptDirectory
) -> None:
    """Before migrating: adopt a legacy revision, or refuse a database whose tables of
    this project's names are another application's.

    A deployment made before :data:`VERSION_TABLE` existed has its revision in
    ``alembic_version``: it moves into the project's own table (the legacy table goes
    when nothing else is left in it), and the upgrade continues from there. A database
    never migrated by this project must not hold a table of one of its names.
    """
    if context.get_current_revision() is not None:
        return
    legacy = _legacy_revision(connection)
    if legacy is not None:
        context.stamp(script, legacy)
        connection.execute(delete(_legacy).where(_legacy.c.version_num == legacy))
        if connection.scalar(select(func.count()).select_from(_legacy)) == 0:
            connection.execute(text("DROP TABLE alembic_version"))
        return
    taken = sorted(set(metadata.tables) & set(inspect(connection).get_table_names()))
    if taken:
        raise SchemaConflict(
            f"the database already has {len(taken)} table(s) with this project's names"
            f" ({', '.join(taken)}) that it did not create: migrate into a database of its own"
        )


def head() -> str:
    """The newest revision this code knows."""
    found = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert found is not None
    return found


def known_revisions() -> set[str]:
    """Every revision in this code's migration history."""
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
