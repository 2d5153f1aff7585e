"""Alembic environment: async engine, or a connection handed in by app.db.migrate."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection

import app.db.models  # noqa: F401  (registers every table on Base.metadata)
from app.db.base import Base
from app.db.engine import create_engine
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
        compare_type=True,
        compare_server_default=True,
        transaction_per_migration=True,
    )


def do_run_migrations(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    engine = create_engine(_database_url(), poolclass=pool.NullPool)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(do_run_migrations)
    finally:
        await engine.dispose()


def run_migrations_offline() -> None:
    context.configure(
        url=_database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
elif (shared := config.attributes.get("connection")) is not None:
    # app.db.migrate already holds a connection inside run_sync(); reuse it.
    do_run_migrations(shared)
else:
    asyncio.run(run_async_migrations())
