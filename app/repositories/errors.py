"""One place that turns driver exceptions into the domain's error hierarchy."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from sqlalchemy.exc import DBAPIError, IntegrityError

from app.domain import DatabaseUnavailable, InvalidInput, SessionAlreadyExists, SessionNotFound

FOREIGN_KEY_VIOLATION = "23503"
UNIQUE_VIOLATION = "23505"
CHECK_VIOLATION = "23514"
NOT_NULL_VIOLATION = "23502"
NUMERIC_OUT_OF_RANGE = "22003"
UNTRANSLATABLE_CHARACTER = "22P05"
INVALID_TEXT = "22P02"


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
        if exc.connection_invalidated:
            raise DatabaseUnavailable(f"connection lost: {exc.orig}") from exc
        raise
    except OSError as exc:
        raise DatabaseUnavailable(f"cannot reach PostgreSQL: {exc}") from exc
