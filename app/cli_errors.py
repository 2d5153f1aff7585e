"""Errors for people: what went wrong, where (URLs with the password masked), and what
to do, in one line. ``python -m app --debug ...`` adds the traceback."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

import asyncpg
import redis.exceptions
from sqlalchemy.engine import make_url

from app.db.engine import mask_password
from app.db.migrate import SchemaConflict
from app.domain import DatabaseUnavailable, SessionStoreUnavailable

#: Exit codes: the environment (a server, a login, the schema) and bad usage/configuration.
ENVIRONMENT: Final = 1
USAGE: Final = 2

MIGRATE_HINT: Final = "run `python -m app migrate`"


class SchemaBehind(Exception):
    """The database is not at this code's newest revision."""

    def __init__(self, url: str, problem: str) -> None:
        super().__init__(f"the database at {mask_password(url)} {problem}: {MIGRATE_HINT}")


@dataclass(frozen=True)
class Problem:
    """One line for a person, and the exit code."""

    message: str
    exit_code: int = ENVIRONMENT


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        orig = getattr(current, "orig", None)  # SQLAlchemy's wrapped DBAPI error
        if isinstance(orig, BaseException) and id(orig) not in seen:
            yield from _chain(orig)
        current = current.__cause__ or current.__context__


def _user(url: str | None) -> str:
    try:
        return make_url(url or "").username or "(no user)"
    except Exception:
        return "(unknown user)"


def explain(
    exc: BaseException, *, database_url: str | None, redis_url: str | None
) -> Problem | None:
    """A one-line explanation of ``exc``, or None when it is not one we know."""
    db = mask_password(database_url) if database_url else "(DATABASE_URL unset)"
    rd = mask_password(redis_url) if redis_url else "(REDIS_URL unset)"
    for each in _chain(exc):
        if isinstance(each, SchemaBehind | SchemaConflict):
            return Problem(str(each))
        if isinstance(
            each, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError
        ):
            return Problem(
                f"PostgreSQL at {db} refused the login of user {_user(database_url)!r}"
                f" ({each}): fix the user or password in DATABASE_URL"
            )
        if isinstance(each, asyncpg.InvalidCatalogNameError):
            return Problem(
                f"PostgreSQL at {db} has no such database ({each}): create it"
                " (createdb) or fix DATABASE_URL, then run `python -m app migrate`"
            )
        if isinstance(each, asyncpg.UndefinedTableError):
            return Problem(f"the database at {db} lacks the schema ({each}): {MIGRATE_HINT}")
        if isinstance(each, redis.exceptions.AuthenticationError):
            return Problem(f"Redis at {rd} refused the login ({each}): fix REDIS_URL")
        if isinstance(each, redis.exceptions.ConnectionError | SessionStoreUnavailable):
            return Problem(f"cannot reach Redis at {rd} ({each}): start it, or fix REDIS_URL")
    for each in _chain(exc):
        if isinstance(each, socket.gaierror):
            return Problem(
                f"cannot resolve the host of DATABASE_URL {db} ({each}): fix DATABASE_URL"
            )
        if isinstance(each, ConnectionRefusedError):
            return Problem(
                f"cannot reach PostgreSQL at {db}: connection refused. Start the server,"
                " or fix DATABASE_URL"
            )
        if isinstance(each, DatabaseUnavailable | OSError | TimeoutError):
            return Problem(
                f"cannot reach PostgreSQL at {db} ({each or type(each).__name__}): check that"
                " the server is up and DATABASE_URL is right"
            )
    return None
