"""The composition root: engine, Redis, store and runtime built from settings.

The CLI, the demo and the processes build what they run through this module, so nothing
imports upward (``cli`` and ``demo`` both depend on it, never on each other).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.cli_errors import SchemaBehind, explain
from app.clock import Clock, utc_now
from app.db.engine import Pooler, create_engine, create_session_factory, mask_password
from app.db.migrate import schema_problem
from app.domain import InvalidInput
from app.lifecycle import Runtime
from app.local_services import LocalServices, local_services
from app.session_store import RedisSessionStore, connect_redis
from app.settings import Settings

log = logging.getLogger("app")


class UsageError(Exception):
    """Bad command-line input; printed without a traceback, exit code 2."""


@dataclass
class Connected:
    """What a command runs against: the servers, the engine and the store."""

    engine: AsyncEngine
    session_factory: async_sessionmaker[AsyncSession]
    store: RedisSessionStore
    services: LocalServices

    def runtime(self, settings: Settings, clock: Clock = utc_now) -> Runtime:
        """The use cases' runtime over these connections."""
        return Runtime(self.session_factory, self.store, settings, clock)

    async def require_schema(self) -> None:
        """``SchemaBehind`` unless the database is at this code's newest revision."""
        problem = await schema_problem(self.engine)
        if problem is not None:
            raise SchemaBehind(self.services.database_url, problem)

    async def warn_if_schema_behind(self, name: str) -> None:
        """Say once, on start, that the schema is behind; the process keeps going (and
        backing off) so that it works as soon as someone migrates."""
        try:
            await self.require_schema()
        except SchemaBehind as exc:
            log.error("%s schema_behind: %s", name, exc)
        except Exception as exc:
            problem = explain(exc, database_url=self.services.database_url, redis_url=None)
            log.error("%s cannot check the schema: %s", name, problem.message if problem else exc)


@contextlib.asynccontextmanager
async def _connections(
    settings: Settings, database_url: str, redis_url: str, *, pooler: Pooler, cluster: bool
) -> AsyncIterator[tuple[AsyncEngine, RedisSessionStore]]:
    """One engine and one store for a process, closed when it ends."""
    engine = create_engine(database_url, pooler=pooler)
    redis = connect_redis(redis_url, cluster=cluster)
    store = RedisSessionStore(
        redis, prefix=settings.redis_prefix, timeout=settings.store_timeout_seconds
    )
    try:
        yield engine, store
    finally:
        await redis.aclose()
        await engine.dispose()


@contextlib.asynccontextmanager
async def connect(settings: Settings, *, embedded_ok: bool) -> AsyncIterator[Connected]:
    """Engine, session factory and store; embedded servers when allowed and unconfigured."""
    if not embedded_ok and not (settings.database_url and settings.redis_url):
        raise UsageError(
            "DATABASE_URL and REDIS_URL must be set: separate worker and daemon processes"
            " have to share one database (`run` and `demo` start embedded servers instead)"
        )
    with local_services(settings.database_url, settings.redis_url) as services:
        if services.embedded:
            print(f"embedded PostgreSQL at {mask_password(services.database_url)}", flush=True)
            print(f"embedded Redis at {mask_password(services.redis_url)}", flush=True)
        async with _connections(
            settings,
            services.database_url,
            services.redis_url,
            # Embedded servers are never behind a pooler or a cluster.
            pooler="none" if services.postgres else settings.database_pooler,
            cluster=settings.redis_cluster and not services.redis,
        ) as (engine, store):
            yield Connected(engine, create_session_factory(engine), store, services)


@contextlib.asynccontextmanager
async def open_runtime(
    database_url: str | None = None,
    redis_url: str | None = None,
    *,
    settings: Settings | None = None,
    clock: Clock | None = None,
) -> AsyncIterator[Runtime]:
    """The way in for an application's own process: a :class:`Runtime` over one engine
    and one Redis client, closed on exit.

    What is not given comes from ``settings``, else from the environment (``Settings()``
    reads ``DATABASE_URL``, ``REDIS_URL`` and the rest, and ``.env``). No embedded
    servers: those are for ``make run`` and the tests. A URL that is missing is
    ``InvalidInput`` naming it; the schema is not checked here (``python -m app status``
    does that), so a process can start before the database is migrated.
    """
    settings = settings if settings is not None else Settings()
    database_url = database_url or settings.database_url
    redis_url = redis_url or settings.redis_url
    if not database_url:
        raise InvalidInput(
            "no database URL: pass database_url or set DATABASE_URL", field="database_url"
        )
    if not redis_url:
        raise InvalidInput("no Redis URL: pass redis_url or set REDIS_URL", field="redis_url")
    async with _connections(
        settings,
        database_url,
        redis_url,
        pooler=settings.database_pooler,
        cluster=settings.redis_cluster,
    ) as (engine, store):
        yield Runtime(create_session_factory(engine), store, settings, clock or utc_now)


__all__ = ["Connected", "UsageError", "connect", "open_runtime"]
