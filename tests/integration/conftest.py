"""Integration tests share one migrated database; each test starts from empty tables."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.session_store import RedisSessionStore

TABLES = (
    "agent_events, budget_credits, agent_cost_events, budget_days, agent_checkpoints,"
    " agent_sessions, user_settings"
)


@pytest.fixture(autouse=True)
async def _empty_tables(engine: AsyncEngine) -> AsyncIterator[None]:
    yield
    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))


@pytest.fixture
async def store(redis: Redis, key_prefix: str) -> AsyncIterator[RedisSessionStore]:
    """A store under the run's prefix, emptied after each test."""
    yield RedisSessionStore(redis, prefix=key_prefix)
    async for key in redis.scan_iter(match=f"{key_prefix}:*", count=500):
        await redis.delete(key)
