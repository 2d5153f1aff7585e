"""Engine and session factories: asyncpg driver, orjson JSON codecs, URL normalisation."""

from __future__ import annotations

import uuid
from typing import Any, Final, Literal

import orjson
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.ext.asyncio import create_async_engine as _create_async_engine

from app.domain import InvalidInput
from app.settings import mask_url

_ASYNC_DRIVER = "postgresql+asyncpg"
_ACCEPTED = {"postgres", "postgresql", "postgresql+asyncpg"}

#: What sits between the application and PostgreSQL: nothing, or a pgbouncer in
#: transaction mode (each transaction may run on a different server connection).
Pooler = Literal["none", "pgbouncer"]
POOLERS: Final[tuple[Pooler, ...]] = ("none", "pgbouncer")


def normalize_url(url: str | URL) -> URL:
    """Return ``url`` with the asyncpg driver; accepts postgres:// and postgresql://."""
    try:
        parsed = make_url(url)
    except Exception as exc:  # SQLAlchemy raises ArgumentError; keep the domain type
        raise InvalidInput(f"not a database URL: {mask_password(str(url))}", field="url") from exc
    if parsed.drivername not in _ACCEPTED:
        raise InvalidInput(
            f"unsupported database URL scheme {parsed.drivername!r}: use postgresql://"
            " or postgresql+asyncpg://",
            field="url",
        )
    return parsed.set(drivername=_ASYNC_DRIVER)


def mask_password(url: str | URL) -> str:
    """Render a URL with its password (userinfo or ``?password=``) replaced by ``***``,
    safe to log or print: ``app.settings.mask_url``, the one masking rule."""
    return mask_url(url if isinstance(url, str) else url.render_as_string(hide_password=True))


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _unique_statement_name() -> str:
    return f"__asyncpg_{uuid.uuid4().hex}__"


def pooler_connect_args(pooler: Pooler) -> dict[str, Any]:
    """asyncpg ``connect_args`` for what sits in front of PostgreSQL.

    Behind pgbouncer in transaction mode a server connection serves many clients, so
    per-connection prepared statements collide ("prepared statement ... does not
    exist / already exists"). As SQLAlchemy documents for the asyncpg dialect: no
    asyncpg statement cache, no SQLAlchemy prepared-statement cache, and a unique
    name for the statements the dialect still prepares to learn result types.
    """
    if pooler == "none":
        return {}
    if pooler == "pgbouncer":
        return {
            "statement_cache_size": 0,
            "prepared_statement_cache_size": 0,
            "prepared_statement_name_func": _unique_statement_name,
        }
    raise InvalidInput(
        f"unknown database pooler {pooler!r}: use one of {', '.join(POOLERS)}", field="pooler"
    )


def create_engine(url: str | URL, *, pooler: Pooler = "none", **kwargs: Any) -> AsyncEngine:
    """An ``AsyncEngine`` on asyncpg whose JSON columns go through orjson.

    ``pooler="pgbouncer"`` configures the driver for a transaction-mode pooler (see
    :func:`pooler_connect_args`); ``LISTEN`` then needs a direct connection of its own.

    No pre-ping by default: it costs a round trip on every checkout, on the hot
    paths too. A connection found dead on use invalidates the pool, the statement
    fails with ``DatabaseUnavailable`` / a DBAPI error, and the processes retry with
    backoff. Pass ``pool_pre_ping=True`` to trade that round trip for fewer errors.
    """
    connect_args = {**pooler_connect_args(pooler), **kwargs.pop("connect_args", {})}
    return _create_async_engine(
        normalize_url(url),
        connect_args=connect_args,
        json_serializer=_dumps,
        json_deserializer=orjson.loads,
        **kwargs,
    )


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Session factory for callers that own the transaction: ``async with f.begin() as s``."""
    return async_sessionmaker(engine, expire_on_commit=False)
