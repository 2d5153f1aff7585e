"""Migrations: pytest-alembic's built-in tests on a fresh database each, and 0002 as the
original plan wrote it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from alembic.config import Config
from pytest_alembic.plugin.fixtures import alembic_runner
from pytest_alembic.tests import (
    test_model_definitions_match_ddl,
    test_single_head_revision,
    test_up_down_consistency,
    test_upgrade,
)
from sqlalchemy import inspect, pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.engine import create_engine
from app.db.migrate import alembic_config as project_alembic_config
from app.db.migrate import upgrade

NewDatabase = Callable[[], Awaitable[str]]

# Single head; base -> head; every revision up then down to base; and autogenerate
# finds no difference between the models and the DDL the migrations produce.
__all__ = [
    "alembic_runner",
    "test_model_definitions_match_ddl",
    "test_single_head_revision",
    "test_up_down_consistency",
    "test_upgrade",
]


@pytest.fixture
def alembic_config() -> Config:
    """The project's own Alembic config (``[tool.alembic]`` in pyproject.toml)."""
    return project_alembic_config()


@pytest.fixture
async def alembic_engine(make_database: NewDatabase) -> AsyncIterator[AsyncEngine]:
    """An empty throwaway database for each built-in test. pytest-alembic runs env.py
    with this engine under ``asyncio.run``, in a loop of its own: no pooled connection
    may outlive that loop, hence ``NullPool``."""
    engine = create_engine(await make_database(), poolclass=pool.NullPool)
    yield engine
    await engine.dispose()


# The column list of ORIGINAL-PLAN-43-01.md, Task 1: (type, nullable).
PLAN_CHECKPOINT_COLUMNS = {
    "id": ("INTEGER", False),
    "session_id": ("VARCHAR(255)", False),
    "job_id": ("VARCHAR(255)", False),
    "message_history": ("JSON", False),
    "sandbox_id": ("VARCHAR(255)", True),
    "current_phase": ("VARCHAR(255)", True),
    "retry_counts": ("JSON", False),
    "session_cost_microdollars": ("INTEGER", False),
    "daily_budget_microdollars": ("INTEGER", False),
    "iteration_number": ("INTEGER", False),
    "agent_state": ("VARCHAR(50)", False),
    "created_at": ("TIMESTAMP WITH TIME ZONE", False),
    "updated_at": ("TIMESTAMP WITH TIME ZONE", False),
}
PLAN_SESSION_COLUMNS = {
    "id": ("VARCHAR(255)", False),
    "job_id": ("VARCHAR(255)", False),
    "clerk_user_id": ("VARCHAR(255)", False),
    "tier": ("VARCHAR(50)", False),
    "model_used": ("VARCHAR(100)", False),
    "status": ("VARCHAR(50)", False),
    "cumulative_cost_microdollars": ("INTEGER", False),
    "daily_budget_microdollars": ("INTEGER", False),
    "started_at": ("TIMESTAMP WITH TIME ZONE", False),
    "last_checkpoint_at": ("TIMESTAMP WITH TIME ZONE", True),
    "completed_at": ("TIMESTAMP WITH TIME ZONE", True),
}


async def test_0002_matches_the_original_plan(make_database: NewDatabase) -> None:
    engine = create_engine(await make_database())

    def shape(conn: Connection) -> dict[str, Any]:
        insp = inspect(conn)
        out: dict[str, Any] = {}
        for table in ("agent_checkpoints", "agent_sessions", "user_settings"):
            out[table] = {
                c["name"]: (c["type"].compile(dialect=conn.dialect), c["nullable"])
                for c in insp.get_columns(table)
            }
            out[table + ".indexes"] = {tuple(ix["column_names"]) for ix in insp.get_indexes(table)}
            out[table + ".pk"] = tuple(insp.get_pk_constraint(table)["constrained_columns"])
        return out

    try:
        await upgrade(engine, "0002")
        async with engine.connect() as conn:
            got = await conn.run_sync(shape)
            serial = await conn.scalar(
                text("SELECT pg_get_serial_sequence('agent_checkpoints', 'id')")
            )
    finally:
        await engine.dispose()

    assert got["agent_checkpoints"] == PLAN_CHECKPOINT_COLUMNS
    assert got["agent_sessions"] == PLAN_SESSION_COLUMNS
    assert got["agent_checkpoints.indexes"] == {("session_id",), ("job_id",)}
    assert got["agent_sessions.indexes"] == {("job_id",), ("clerk_user_id",)}
    assert got["agent_checkpoints.pk"] == ("id",)
    assert got["agent_sessions.pk"] == ("id",)
    assert serial is not None  # "Integer PK autoincrement"
    assert got["user_settings"]["subscription_renewal_date"] == ("TIMESTAMP WITH TIME ZONE", True)


async def test_lz4_where_the_server_has_it(engine: Any) -> None:
    async with engine.connect() as conn:
        has_lz4 = await conn.scalar(
            text(
                "SELECT 'lz4' = ANY(enumvals) FROM pg_settings"
                " WHERE name = 'default_toast_compression'"
            )
        )
        compression = await conn.scalar(
            text(
                "SELECT attcompression::text FROM pg_attribute"
                " WHERE attrelid = 'agent_checkpoints'::regclass AND attname = 'message_history'"
            )
        )
    assert compression == ("l" if has_lz4 else "")
