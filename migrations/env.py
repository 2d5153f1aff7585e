"""Alembic environment: an async engine of its own, or a connectable handed in.

``config.attributes["connection"]`` may hold a ``Connection`` (``app.db.migrate`` runs
inside ``run_sync``), an ``Engine`` or an ``AsyncEngine`` (pytest-alembic passes the
engine its ``alembic_engine`` fixture returns).
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine

import app.db.models  # noqa: F401  (registers every table on Base.metadata)
from app.db.base import Base
from app.db.engine import create_engine
from app.db.migrate import VERSION_TABLE, prepare
from app.settings import Settings

config = context.config
target_metadata = Base.metadata


def _database_url() -> str:
    # `alembic -x url=postgresql://... upgrade head` wins over DATABASE_URL.
    url = context.get_x_argument(as_dictionary=True).get("url") or Settings().database_url
    if not url:
        raise SystemExit("DATABASE_URL is not set (or pass -x url=...): nothing to migrate")
    return url


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        compare_type=True,
        compare_server_default=True,
        transaction_per_migration=True,
    )


def do_run_migrations(connection: Connection) -> None:
    _configure(connection)
    prepare(connection, context.get_context(), target_metadata, context.script)
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.run_sync(do_run_migrations)


async def run_on_own_engine() -> None:
    engine = create_engine(_database_url(), poolclass=pool.NullPool)
    try:
        await run_async_migrations(engine)
    finally:
        await engine.dispose()


def run_migrations_online(shared: object) -> None:
    if shared is None:
        asyncio.run(run_on_own_engine())
    elif isinstance(shared, Connection):
        # app.db.migrate already holds a connection inside run_sync(); reuse it.
        do_run_migrations(shared)
    elif isinstance(shared, AsyncEngine):
        asyncio.run(run_async_migrations(shared))
    elif isinstance(shared, Engine):
        with shared.begin() as connection:
            do_run_migrations(connection)
    else:
        raise TypeError(
            'config.attributes["connection"] must be a Connection, an Engine or an'
            f" AsyncEngine, not {type(shared).__name__}"
        )


def run_migrations_offline() -> None:
    context.configure(
        url=_database_url(),
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online(config.attributes.get("connection"))
