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
from app.db.engine import create_engine, create_session_factory, mask_password
from app.db.migrate import schema_problem
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
        # Embedded servers are never behind a pooler or a cluster.
        engine = create_engine(
            services.database_url,
            pooler="none" if services.postgres else settings.database_pooler,
        )
        redis = connect_redis(
            services.redis_url, cluster=settings.redis_cluster and not services.redis
        )
        store = RedisSessionStore(
            redis, prefix=settings.redis_prefix, timeout=settings.store_timeout_seconds
        )
        try:
            yield Connected(engine, create_session_factory(engine), store, services)
        finally:
            await redis.aclose()
            await engine.dispose()


__all__ = ["Connected", "UsageError", "connect"]
