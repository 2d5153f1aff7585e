"""One place that turns driver exceptions into the domain's error hierarchy."""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, ParamSpec, TypeVar

from sqlalchemy.exc import DBAPIError, IntegrityError

from app.domain import (
    DatabaseError,
    DatabaseUnavailable,
    InvalidInput,
    SessionAlreadyExists,
    SessionNotFound,
    TransactionConflict,
)

FOREIGN_KEY_VIOLATION = "23503"
UNIQUE_VIOLATION = "23505"
CHECK_VIOLATION = "23514"
NOT_NULL_VIOLATION = "23502"
NUMERIC_OUT_OF_RANGE = "22003"
UNTRANSLATABLE_CHARACTER = "22P05"
INVALID_TEXT = "22P02"
SERIALIZATION_FAILURE = "40001"
DEADLOCK_DETECTED = "40P01"
# Class 08 is "connection exception"; 57P01-57P03 are shutdowns and "cannot connect now".
CONNECTION_STATES = ("08", "57P01", "57P02", "57P03")


def _sqlstate(exc: DBAPIError) -> str | None:
    orig: Any = exc.orig
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)


def _constraint(exc: DBAPIError) -> str | None:
    # SQLAlchemy's asyncpg adapter keeps the asyncpg exception as the cause.
    cause: Any = getattr(exc.orig, "__cause__", None)
    return getattr(cause, "constraint_name", None)


@contextlib.contextmanager
def translate_errors(*, session_id: str | None = None) -> Iterator[None]:
    """Re-raise IntegrityError and friends as domain errors, always ``from`` the original."""
    try:
        yield
    except IntegrityError as exc:
        state, constraint = _sqlstate(exc), _constraint(exc) or "?"
        if state == FOREIGN_KEY_VIOLATION and session_id is not None:
            raise SessionNotFound(session_id) from exc
        if state == UNIQUE_VIOLATION and constraint == "pk_agent_sessions" and session_id:
            raise SessionAlreadyExists(session_id) from exc
        raise InvalidInput(f"rejected by constraint {constraint} (SQLSTATE {state})") from exc
    except DBAPIError as exc:
        state = _sqlstate(exc)
        if state in (NUMERIC_OUT_OF_RANGE, UNTRANSLATABLE_CHARACTER, INVALID_TEXT):
            raise InvalidInput(f"value rejected by PostgreSQL (SQLSTATE {state})") from exc
        if state in (SERIALIZATION_FAILURE, DEADLOCK_DETECTED):
            raise TransactionConflict(
                f"transaction aborted by PostgreSQL (SQLSTATE {state}): run it again"
            ) from exc
        if exc.connection_invalidated or (state or "").startswith(CONNECTION_STATES):
            raise DatabaseUnavailable(f"connection lost: {exc.orig}") from exc
        raise DatabaseError(
            f"PostgreSQL refused the statement (SQLSTATE {state}): {exc.orig}"
        ) from exc
    except OSError as exc:
        raise DatabaseUnavailable(f"cannot reach PostgreSQL: {exc}") from exc


P = ParamSpec("P")
R = TypeVar("R")
C = TypeVar("C", bound=type)


def _translating(method: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    signature = inspect.signature(method)

    @functools.wraps(method)
    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except (DBAPIError, OSError):
            # Binding the arguments costs more than the call's own Python work on the
            # hot paths, so the session id is looked up only when there is an error.
            session_id = signature.bind_partial(*args, **kwargs).arguments.get("session_id")
            with translate_errors(session_id=session_id if isinstance(session_id, str) else None):
                raise

    return call


def translated(cls: C) -> C:
    """Class decorator: every public coroutine method of a repository raises only the
    domain's errors for driver failures (a ``session_id`` argument names the session
    in ``SessionNotFound`` when a foreign key says it is missing)."""
    for name, member in list(vars(cls).items()):
        if not name.startswith("_") and inspect.iscoroutinefunction(member):
            setattr(cls, name, _translating(member))
    return cls
