"""Fixtures shared by every test directory (loaded by ``pytest_plugins`` in
tests/conftest.py): a clean schema, the run's Redis store, a database of its own."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.engine import create_engine
from app.db.migrate import upgrade
from app.session_store import RedisClient, RedisSessionStore

TABLES = (
    "agent_events, budget_credits, agent_cost_events, budget_days, agent_checkpoints,"
    " agent_sessions, user_settings"
)


@pytest.fixture
async def clean_tables(engine: AsyncEngine) -> AsyncIterator[None]:
    """Empties every table of the run's database after the test."""
    yield
    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))


@pytest.fixture
async def store(redis: RedisClient, key_prefix: str) -> AsyncIterator[RedisSessionStore]:
    """A store under the run's prefix, emptied after each test."""
    yield RedisSessionStore(redis, prefix=key_prefix)
    async for key in redis.scan_iter(match=f"{key_prefix}:*", count=500):
        await redis.delete(key)


@pytest.fixture
async def e2e_db(
    make_database: Callable[[], Awaitable[str]],
) -> AsyncIterator[tuple[str, AsyncEngine]]:
    """A fresh migrated database of its own, for tests whose processes connect by URL."""
    url = await make_database()
    engine = create_engine(url)
    await upgrade(engine)
    yield url, engine
    await engine.dispose()
