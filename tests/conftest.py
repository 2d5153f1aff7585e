"""Session-wide servers: a throwaway database migrated to head, and a per-run Redis prefix."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
from hypothesis import HealthCheck, settings
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.db.engine import create_engine, create_session_factory
from app.db.migrate import upgrade
from app.session_store import RedisClient, connect_redis
from tests import scale_servers
from tests.servers import plain_dsn, provide_servers

RUN_ID = uuid.uuid4().hex[:10]

# Property tests judge correctness, not speed: how fast examples are generated and run
# depends on what else the machine is doing (test-dates and helpers share two cores),
# so neither the per-example deadline nor the slow-generation check may fail a run.
settings.register_profile("project", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("project")
pytest_plugins = ["tests.fixtures"]


@pytest.fixture
def server_dir() -> Iterator[Path]:
    """A scratch directory for a server a test starts itself, outside pytest's tmp root.

    Embedded servers run as an unprivileged user that must traverse every ancestor
    directory, and pytest locks its root (mode 0700) again whenever another pytest
    session starts on the machine: a tmp_path would lock the server out mid-test.
    """
    with scratch_dir() as path:
        yield path


@pytest.fixture(scope="session")
def servers() -> Iterator[tuple[str, str]]:
    with provide_servers() as urls:
        yield urls


@pytest.fixture(scope="session")
async def make_database(
    servers: tuple[str, str],
) -> AsyncIterator[Callable[[], Awaitable[str]]]:
    """Factory of empty throwaway databases, each dropped when the run ends."""
    admin_url = servers[0]
    created: list[str] = []

    async def make() -> str:
        name = f"test_{RUN_ID}_{len(created)}"
        conn = await asyncpg.connect(plain_dsn(admin_url))
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        created.append(name)
        return (
            make_url(admin_url)
            .set(drivername="postgresql+asyncpg", database=name)
            .render_as_string(hide_password=False)
        )

    yield make

    conn = await asyncpg.connect(plain_dsn(admin_url))
    try:
        for name in created:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
async def database_url(make_database: Callable[[], Awaitable[str]]) -> str:
    """The run's main database, migrated to head with ``app.db.migrate.upgrade``."""
    url = await make_database()
    engine = create_engine(url)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()
    return url


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="agent-sleepwake-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pgbouncer_port(servers: tuple[str, str]) -> Iterator[int]:
    """A pgbouncer in transaction mode in front of the test server, for the whole run."""
    with scratch_dir() as directory:
        try:
            with scale_servers.pgbouncer(directory, servers[0]) as port:
                yield port
        except scale_servers.ServerUnavailable as exc:
            pytest.skip(str(exc))


@pytest.fixture(scope="session")
def pooled_database_url(database_url: str, pgbouncer_port: int) -> str:
    """The run's main database, reached through pgbouncer."""
    return scale_servers.with_host_port(database_url, pgbouncer_port)


@pytest.fixture(scope="session")
def db_route(request: pytest.FixtureRequest) -> str:
    """How ``engine`` reaches PostgreSQL: "direct", or "pgbouncer" where a module is
    parametrised with it (tests/integration/conftest.py)."""
    route: str = getattr(request, "param", "direct")
    return route


@pytest.fixture(scope="session")
async def engine(
    database_url: str, db_route: str, request: pytest.FixtureRequest
) -> AsyncIterator[AsyncEngine]:
    if db_route == "pgbouncer":
        url = request.getfixturevalue("pooled_database_url")
        eng = create_engine(url, pooler="pgbouncer", pool_size=40, max_overflow=20)
    else:
        eng = create_engine(database_url, pool_size=40, max_overflow=20)
    yield eng
    await eng.dispose()


@pytest.fixture(scope="session")
def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return create_session_factory(engine)


@pytest.fixture(scope="session")
def redis_url(servers: tuple[str, str]) -> str:
    return servers[1]


@pytest.fixture(scope="session")
def key_prefix() -> str:
    """Every Redis key a test writes lives under this per-run prefix."""
    return f"test:{RUN_ID}:agent:session"


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """A 3-master Redis Cluster for the whole run: ``redis+cluster://`` one of its nodes."""
    with scratch_dir() as directory:
        try:
            with scale_servers.redis_cluster(directory) as ports:
                yield f"redis+cluster://127.0.0.1:{ports[0]}"
        except scale_servers.ServerUnavailable as exc:
            pytest.skip(str(exc))


@pytest.fixture(scope="session")
def redis_route(request: pytest.FixtureRequest) -> str:
    """Which Redis ``redis`` is: "single" (the test server), or "cluster" where a module
    is parametrised with it (tests/integration/conftest.py)."""
    route: str = getattr(request, "param", "single")
    return route


@pytest.fixture(scope="session")
async def redis(
    redis_url: str, redis_route: str, request: pytest.FixtureRequest
) -> AsyncIterator[RedisClient]:
    if redis_route == "cluster":
        client = connect_redis(request.getfixturevalue("redis_cluster_url"))
    else:
        client = connect_redis(redis_url)
    yield client
    async for key in client.scan_iter(match=f"test:{RUN_ID}:*", count=500):
        await client.delete(key)
    await client.aclose()
