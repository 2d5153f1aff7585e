"""Fixtures shared by every test directory (loaded by ``pytest_plugins`` in
tests/conftest.py): a clean schema, the run's Redis store, a database of its own, and a
wake worker running in the background."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.db.engine import create_engine
from app.db.migrate import upgrade
from app.lifecycle import RestoredSession
from app.session_store import RedisClient, RedisSessionStore
from app.settings import Settings
from app.workers import BudgetDaemon, WakeWorker

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
    store = RedisSessionStore(redis, prefix=key_prefix)
    yield store
    async for key in redis.scan_iter(match=f"{key_prefix}:*", count=500):
        await redis.delete(key)
    await redis.delete(store.own_key("reconciled-through"))


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


@dataclass
class RunningWorker:
    """A :class:`WakeWorker` running in the background with a hook that records every
    session it resumed, in order."""

    worker: WakeWorker
    resumed: list[str] = field(default_factory=list)


class StartWorker(Protocol):
    def __call__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        store: RedisSessionStore,
        settings: Settings,
        *,
        with_daemon: bool = False,
        **options: Any,
    ) -> contextlib.AbstractAsyncContextManager[RunningWorker]: ...


@pytest.fixture
def running_worker() -> StartWorker:
    """``async with running_worker(factory, store, settings, batch_size=3) as running:``
    runs a wake worker (and with ``with_daemon=True`` a budget daemon beside it) until
    the block ends, then stops both and waits for them."""

    @contextlib.asynccontextmanager
    async def start(
        session_factory: async_sessionmaker[AsyncSession],
        store: RedisSessionStore,
        settings: Settings,
        *,
        with_daemon: bool = False,
        **options: Any,
    ) -> AsyncIterator[RunningWorker]:
        resumed: list[str] = []

        def record(restored: RestoredSession) -> None:
            resumed.append(restored.session.id)

        worker = WakeWorker(session_factory, store, settings, on_resume=record, **options)
        running = RunningWorker(worker, resumed)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(worker.run_forever(stop))]
        if with_daemon:
            daemon = BudgetDaemon(session_factory, store, settings)
            tasks.append(asyncio.create_task(daemon.run_forever(stop)))
        try:
            yield running
        finally:
            stop.set()
            await asyncio.gather(*tasks)

    return start
