"""Integration tests share one migrated database; each test starts from empty tables."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.session_store import RedisClient, RedisSessionStore

#: The repositories' tests run twice: straight to PostgreSQL and through a real
#: pgbouncer in transaction mode. The store's tests run on one Redis and on a cluster.
#: Not through pgbouncer: test_top_up (its worker LISTENs on the engine, which a
#: transaction-mode pooler cannot carry: test_pgbouncer covers the worker there) and
#: test_checkpoint_saves (its lock probe finds the blocked statement by its text in
#: pg_stat_activity, which shows an empty query for the waiting backend when the
#: statement came through pgbouncer; the save does wait on the lock, and every other
#: test of the module passes through pgbouncer).
THROUGH_PGBOUNCER: Final = {"test_sessions", "test_budget", "test_checkpoints"}
ON_A_CLUSTER: Final = {"test_session_store"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    module = metafunc.module.__name__.rpartition(".")[2]
    if module in THROUGH_PGBOUNCER and "db_route" in metafunc.fixturenames:
        metafunc.parametrize("db_route", ["direct", "pgbouncer"], indirect=True, scope="session")
    if module in ON_A_CLUSTER and "redis_route" in metafunc.fixturenames:
        metafunc.parametrize("redis_route", ["single", "cluster"], indirect=True, scope="session")


TABLES = (
    "budget_credits, agent_cost_events, budget_days, agent_checkpoints, agent_sessions,"
    " user_settings"
)


@pytest.fixture(autouse=True)
async def _empty_tables(engine: AsyncEngine) -> AsyncIterator[None]:
    yield
    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))


@pytest.fixture
async def store(redis: RedisClient, key_prefix: str) -> AsyncIterator[RedisSessionStore]:
    """A store under the run's prefix, emptied after each test."""
    yield RedisSessionStore(redis, prefix=key_prefix)
    async for key in redis.scan_iter(match=f"{key_prefix}:*", count=500):
        await redis.delete(key)
