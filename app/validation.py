"""Argument checks shared by the repositories; each raises a typed ``InvalidInput``."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Final, TypeVar

from app.domain import InvalidInput, SessionStatus, Tier

MAX_ID_LENGTH: Final = 255
MAX_MODEL_LENGTH: Final = 100
#: PostgreSQL BIGINT bounds; money beyond them cannot be stored.
BIGINT_MAX: Final = 2**63 - 1
INT_MAX: Final = 2**31 - 1

E = TypeVar("E", Tier, SessionStatus)


#: Unicode category Cc: C0 controls, DEL and C1 controls. No id (and no stored text)
#: carries one: a newline in an id would forge a log line, a NUL cannot be stored.
_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f]")


def require_text(value: Any, field: str, *, max_length: int = MAX_ID_LENGTH) -> str:
    """A ``str`` of 1 to ``max_length`` characters, not blank, with no control character
    (Unicode category Cc) and no lone surrogate: storable in PostgreSQL and Redis, and
    printable in a log line. ``InvalidInput`` naming ``field`` otherwise."""
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be a string, not {type(value).__name__}", field=field)
    if not value or not value.strip():
        raise InvalidInput(f"{field} must not be empty or blank", field=field)
    if len(value) > max_length:
        raise InvalidInput(
            f"{field} is {len(value)} characters long; the limit is {max_length}", field=field
        )
    control = _CONTROL.search(value)
    if control is not None:
        raise InvalidInput(
            f"{field} contains the control character U+{ord(control.group()):04X}"
            f" at position {control.start()}",
            field=field,
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(f"{field} is not valid UTF-8 (lone surrogate?)", field=field) from exc
    return value


def require_id(value: Any, field: str) -> str:
    """The id rule (DESIGN.md §6c), for a session, user, job or request id and an
    idempotency key: a ``str`` of 1 to 255 characters, not blank, with no character of
    category Cc and no lone surrogate; ``InvalidInput(field=...)`` otherwise."""
    return require_text(value, field, max_length=MAX_ID_LENGTH)


def stored_id(value: Any, field: str) -> str:
    """An id read back from the database, on its way through an internal path (a wake, a
    Redis key): a non-empty ``str`` that fits its column. The id rule is checked where
    ids enter (:func:`require_id`); a row written before the rule, or by another tool,
    must still be woken, mirrored and erased rather than stop the fleet."""
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
        raise InvalidInput(f"{field} must be a stored id, got {value!r}", field=field)
    # What PostgreSQL's text cannot hold was never stored: NUL, and lone surrogates.
    if "\x00" in value or any("\ud800" <= c <= "\udfff" for c in value):
        raise InvalidInput(f"{field} cannot be a stored id: {value!r}", field=field)
    return value


def require_int(value: Any, field: str, *, minimum: int = 0, maximum: int = BIGINT_MAX) -> int:
    """An ``int`` (``bool`` is refused) within ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(
            f"{field} must be an integer, not {type(value).__name__} {value!r}", field=field
        )
    if value < minimum:
        raise InvalidInput(f"{field} must be >= {minimum}, got {value}", field=field)
    if value > maximum:
        raise InvalidInput(f"{field} must be <= {maximum}, got {value}", field=field)
    return value


def require_money(value: Any, field: str) -> int:
    """Non-negative integer microdollars that fit in BIGINT."""
    return require_int(value, field, minimum=0, maximum=BIGINT_MAX)


def require_aware(value: Any, field: str) -> datetime:
    """A timezone-aware ``datetime``; naive ones are ambiguous and refused."""
    if not isinstance(value, datetime):
        raise InvalidInput(f"{field} must be a datetime, not {type(value).__name__}", field=field)
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInput(f"{field} must be timezone-aware, got naive {value}", field=field)
    return value


def parse_enum(kind: type[E], value: Any, field: str) -> E:
    """``value`` as a member of ``kind``, or ``InvalidInput`` listing the allowed values."""
    try:
        return kind(value)
    except (ValueError, TypeError):
        allowed = ", ".join(m.value for m in kind)
        raise InvalidInput(
            f"unknown {field} {value!r}; expected one of: {allowed}", field=field
        ) from None


def parse_statuses(value: Any, field: str = "expected") -> frozenset[SessionStatus]:
    """One status or an iterable of them (a single value means ``[value]``)."""
    if isinstance(value, str):
        return frozenset({parse_enum(SessionStatus, value, field)})
    if not isinstance(value, Iterable):
        raise InvalidInput(f"{field} must be a status or statuses, got {value!r}", field=field)
    statuses = frozenset(parse_enum(SessionStatus, v, field) for v in value)
    if not statuses:
        raise InvalidInput(f"{field} must name at least one status", field=field)
    return statuses
