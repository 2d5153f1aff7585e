"""Sharing a database: the project keeps its Alembic history in a version table of its
own, never touches another application's tables or history, refuses a database whose
tables of its names are someone else's, and moves a deployment made before the version
table had its own name into it in place."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from sqlalchemy import inspect, pool, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db.engine import create_engine
from app.db.migrate import VERSION_TABLE, SchemaConflict, current, head, upgrade

NewDatabase = Callable[[], Awaitable[str]]

OWN_VERSION = "SELECT version_num FROM agent_sleepwake_alembic_version"
#: Another application's Alembic history and one of its tables.
THEIR_REVISION = "3f2a9c1b7d4e"


@pytest.fixture
async def fresh(make_database: NewDatabase) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(await make_database(), poolclass=pool.NullPool)
    yield engine
    await engine.dispose()


async def tables(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


async def rows(engine: AsyncEngine, sql: str) -> list[tuple[object, ...]]:
    async with engine.connect() as conn:
        return [tuple(r) for r in await conn.execute(text(sql))]


async def as_legacy(conn: AsyncConnection) -> None:
    """The version table as releases before its own name left it (Alembic's default)."""
    await conn.execute(text(f"ALTER TABLE {VERSION_TABLE} RENAME TO alembic_version"))
    await conn.execute(
        text(
            f"ALTER TABLE alembic_version RENAME CONSTRAINT {VERSION_TABLE}_pkc"
            " TO alembic_version_pkc"
        )
    )


async def their_app(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
        )
        await conn.execute(
            text("INSERT INTO alembic_version VALUES (:rev)"), {"rev": THEIR_REVISION}
        )
        await conn.execute(text("CREATE TABLE orders (id int PRIMARY KEY, total int)"))
        await conn.execute(text("INSERT INTO orders VALUES (1, 4200), (2, 99)"))


def test_the_version_table_is_the_projects_own() -> None:
    assert OWN_VERSION.endswith(VERSION_TABLE)


async def test_migrates_beside_another_applications_alembic_history(fresh: AsyncEngine) -> None:
    await their_app(fresh)

    await upgrade(fresh)

    assert await current(fresh) == head()
    assert await rows(fresh, "SELECT version_num FROM alembic_version") == [(THEIR_REVISION,)]
    assert await rows(fresh, "SELECT id, total FROM orders ORDER BY id") == [(1, 4200), (2, 99)]
    assert await rows(fresh, OWN_VERSION) == [(head(),)]
    assert {"agent_sessions", "user_settings", "orders", "alembic_version"} <= await tables(fresh)


async def test_a_foreign_table_with_one_of_its_names_is_refused_and_nothing_is_created(
    fresh: AsyncEngine,
) -> None:
    await their_app(fresh)
    async with fresh.begin() as conn:
        await conn.execute(text("CREATE TABLE user_settings (id int PRIMARY KEY, theme text)"))
    before = await tables(fresh)

    with pytest.raises(SchemaConflict, match="user_settings"):
        await upgrade(fresh)

    assert await tables(fresh) == before
    assert await current(fresh) is None


async def test_a_deployment_on_the_shared_version_table_is_moved_in_place(
    fresh: AsyncEngine,
) -> None:
    # As releases before the project's own version table left it: the project's
    # revision in ``alembic_version``, with its tables and data.
    await upgrade(fresh, "0008")
    async with fresh.begin() as conn:
        await as_legacy(conn)
        await conn.execute(
            text("INSERT INTO user_settings (clerk_user_id, tier) VALUES ('u-kept', 'partner')")
        )
    assert await current(fresh) == "0008"  # status reads the legacy row too

    await upgrade(fresh)

    assert await current(fresh) == head()
    assert await rows(fresh, OWN_VERSION) == [(head(),)]
    assert "alembic_version" not in await tables(fresh)  # it held nothing else
    assert await rows(fresh, "SELECT clerk_user_id FROM user_settings") == [("u-kept",)]


async def test_a_legacy_row_beside_another_applications_row_leaves_theirs(
    fresh: AsyncEngine,
) -> None:
    await upgrade(fresh, "0008")
    async with fresh.begin() as conn:
        await as_legacy(conn)
        await conn.execute(
            text("INSERT INTO alembic_version VALUES (:rev)"), {"rev": THEIR_REVISION}
        )

    await upgrade(fresh)

    assert await current(fresh) == head()
    assert await rows(fresh, "SELECT version_num FROM alembic_version") == [(THEIR_REVISION,)]
