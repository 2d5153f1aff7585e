"""`migrate` on a database another application already uses: beside its Alembic
history it works and `status` is content; over a table of one of the project's names it
is one line naming the table, a non-zero exit, and nothing created."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg
from sqlalchemy.engine import make_url

from tests.e2e.conftest import base_env, run_app

NewDatabase = Callable[[], Awaitable[str]]


async def sql(url: str, *statements: str) -> list[asyncpg.Record]:
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn)
    try:
        for statement in statements[:-1]:
            await conn.execute(statement)
        return list(await conn.fetch(statements[-1]))
    finally:
        await conn.close()


async def test_migrate_and_status_beside_another_applications_history(
    make_database: NewDatabase, redis_url: str
) -> None:
    url = await make_database()
    await sql(
        url,
        "CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)",
        "INSERT INTO alembic_version VALUES ('ae1027a6acf')",
        "SELECT 1",
    )
    env = base_env(DATABASE_URL=url, REDIS_URL=redis_url, LOG_LEVEL="WARNING")

    migrated = await run_app(env, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    status = await run_app(env, "status")
    assert status.returncode == 0, status.stderr

    theirs = await sql(url, "SELECT version_num FROM alembic_version")
    assert [r["version_num"] for r in theirs] == ["ae1027a6acf"]


async def test_a_foreign_table_of_one_of_its_names_is_one_line(
    make_database: NewDatabase, redis_url: str
) -> None:
    url = await make_database()
    await sql(url, "CREATE TABLE user_settings (id int PRIMARY KEY, theme text)", "SELECT 1")
    env = base_env(DATABASE_URL=url, REDIS_URL=redis_url, LOG_LEVEL="WARNING")

    done = await run_app(env, "migrate")

    assert done.returncode == 1
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "user_settings" in lines[0]
    assert "Traceback" not in lines[0]
    assert "ProgrammingError" not in lines[0]
    created = await sql(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    assert [r["tablename"] for r in created] == ["user_settings"]
