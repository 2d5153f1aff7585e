"""Behind a real pgbouncer in transaction mode: the driver settings that make it work, and
the wake worker with and without a direct connection for LISTEN.

The repositories' own tests also run through this pgbouncer (tests/integration/conftest.py
parametrises test_sessions, test_budget and test_checkpoints with it), the charge races
of test_budget included.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.engine import create_engine, create_session_factory
from app.domain import InvalidInput
from app.lifecycle import RestoredSession, Runtime, start_session
from app.repositories import SessionRepository
from app.session_store import RedisSessionStore
from app.settings import Settings
from app.workers import WakeWorker
from tests.integration.helpers import Factory, eventually, later
from tests.scale_servers import with_host_port
from tests.servers import plain_dsn


@pytest.fixture
async def pooled_engine(pooled_database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(pooled_database_url, pooler="pgbouncer", pool_size=10)
    yield engine
    await engine.dispose()


@pytest.fixture
def pooled_factory(pooled_engine: AsyncEngine) -> Factory:
    return create_session_factory(pooled_engine)


async def test_default_driver_settings_collide_behind_pgbouncer(
    make_database: Callable[[], Awaitable[str]], pgbouncer_port: int
) -> None:
    """Why DATABASE_POOLER exists: asyncpg's cached, named statement lives on one server
    connection, and pgbouncer runs the client's next transaction on another."""
    # A database of its own: pgbouncer's pool for it starts empty, so which server
    # connection each client gets is certain.
    dsn = plain_dsn(with_host_port(await make_database(), pgbouncer_port))
    first = await asyncpg.connect(dsn)
    second = await asyncpg.connect(dsn)
    try:
        await first.fetchval("SELECT 1")  # prepared on the pool's only server connection
        async with second.transaction():  # which this transaction now holds
            with pytest.raises(asyncpg.PostgresError, match="prepared statement"):
                await first.fetchval("SELECT 1")  # on a new server connection
    finally:
        await first.close()
        await second.close()


async def test_pooler_settings_survive_many_clients_on_few_server_connections(
    pooled_factory: Factory,
) -> None:
    """Forty concurrent transactions share pgbouncer's server connections (20 per
    database), each running statements the dialect prepares; none collides."""

    async def one(n: int) -> int:
        async with pooled_factory.begin() as s:
            await s.execute(text("SELECT pg_backend_pid()"))
            value = await s.scalar(text("SELECT CAST(:n AS bigint) * 2"), {"n": n})
            assert value is not None
            return int(value)

    for _ in range(3):
        assert await asyncio.gather(*(one(n) for n in range(40))) == [2 * n for n in range(40)]


async def _sleeping(factory: Factory, store: RedisSessionStore, settings: Settings) -> None:
    rt = Runtime(factory, store, settings)
    await start_session(rt, session_id="s-1", job_id="j", clerk_user_id="u-1", tier="partner")
    async with factory.begin() as s:
        # Due in an hour: only a NOTIFY or a poll brings it forward.
        await SessionRepository(s).transition(
            "s-1", "sleeping", expected="working", wake_at=later(3600)
        )


async def _listeners(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        found = await conn.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND query ILIKE 'LISTEN%'"
            )
        )
    return int(found or 0)


async def _run_until_woken(
    worker: WakeWorker, factory: Factory, woken: asyncio.Event, *, before: asyncio.Event
) -> float:
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run_forever(stop))
    try:
        await before.wait()
        started = time.perf_counter()
        async with factory.begin() as s:
            assert await SessionRepository(s).request_wake(session_id="s-1") == 1
        await asyncio.wait_for(woken.wait(), 60)
        return time.perf_counter() - started
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


async def test_worker_behind_pgbouncer_listens_on_the_direct_url(
    pooled_factory: Factory,
    store: RedisSessionStore,
    database_url: str,
    engine: AsyncEngine,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With DATABASE_LISTEN_URL the wake of a request_wake (a top-up) comes by NOTIFY:
    the poll interval is an hour, so nothing else could wake the session."""
    settings = Settings(
        _env_file=None,
        database_pooler="pgbouncer",
        database_listen_url=database_url,
        wake_poll_interval=3600.0,
    )
    await _sleeping(pooled_factory, store, settings)
    woken = asyncio.Event()

    def hook(restored: RestoredSession) -> None:
        woken.set()

    listening = asyncio.Event()

    async def wait_for_listener() -> None:
        await eventually(lambda: _has_listener(engine))
        listening.set()

    watcher = asyncio.create_task(wait_for_listener())
    worker = WakeWorker(pooled_factory, store, settings, on_resume=hook)
    latency = await _run_until_woken(worker, pooled_factory, woken, before=listening)
    await watcher
    with capsys.disabled():
        print(f"\n  behind pgbouncer, LISTEN on the direct URL: woken {latency * 1000:.0f} ms")
    async with pooled_factory() as s:
        assert (await SessionRepository(s).get("s-1")).status == "working"


async def _has_listener(engine: AsyncEngine) -> bool:
    return await _listeners(engine) > 0


async def test_worker_behind_pgbouncer_without_listen_url_polls(
    pooled_factory: Factory,
    store: RedisSessionStore,
    engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Without DATABASE_LISTEN_URL the worker says once that it polls, opens no LISTEN,
    and wakes the session on its next poll."""
    settings = Settings(_env_file=None, database_pooler="pgbouncer", wake_poll_interval=0.5)
    await _sleeping(pooled_factory, store, settings)
    woken = asyncio.Event()

    def hook(restored: RestoredSession) -> None:
        woken.set()

    said_so = asyncio.Event()
    listeners_while_running: list[int] = []

    async def wait_for_log() -> None:
        await eventually(lambda: _logged(caplog, "not listening"))
        listeners_while_running.append(await _listeners(engine))
        said_so.set()

    caplog.set_level(logging.INFO, logger="app.worker")
    watcher = asyncio.create_task(wait_for_log())
    worker = WakeWorker(pooled_factory, store, settings, on_resume=hook)
    latency = await _run_until_woken(worker, pooled_factory, woken, before=said_so)
    await watcher
    with capsys.disabled():
        print(f"\n  behind pgbouncer, polling every 0.5 s: woken {latency * 1000:.0f} ms")
    notes = [r for r in caplog.records if "not listening" in r.getMessage()]
    assert len(notes) == 1
    assert "DATABASE_LISTEN_URL" in notes[0].getMessage()
    assert listeners_while_running == [0]
    async with pooled_factory() as s:
        assert (await SessionRepository(s).get("s-1")).status == "working"


async def _logged(caplog: pytest.LogCaptureFixture, needle: str) -> bool:
    return any(needle in r.getMessage() for r in caplog.records)


async def test_a_bad_listen_url_is_refused_when_the_worker_is_built(
    pooled_factory: Factory, store: RedisSessionStore
) -> None:
    settings = Settings(_env_file=None, database_listen_url="mysql://x@y/z")
    with pytest.raises(InvalidInput) as info:
        WakeWorker(pooled_factory, store, settings)
    assert info.value.field == "url"
