"""Incarnations: which life of a session id a row, a Redis snapshot or an event belongs to.

An erased session's id can be used again (DESIGN.md §6c). Each life of the id is told
apart by its row's ``started_at``, stamped by PostgreSQL when the row is inserted and
never changed by the application: no migration, and nothing for a caller to forge.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from app.db.models import AgentSession

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)


def incarnation_of(started_at: datetime) -> int:
    """The incarnation stamped ``started_at``: whole microseconds since the epoch (exact,
    no float on the way, and below 2**53, so a Lua number in Redis holds it exactly)."""
    return (started_at - _EPOCH) // _MICROSECOND


def incarnation(session: AgentSession) -> int:
    """The incarnation of ``session``'s row (see :func:`incarnation_of`)."""
    return incarnation_of(session.started_at)


__all__ = ["incarnation", "incarnation_of"]
