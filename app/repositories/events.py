"""EventRepository: the transactional outbox. Events are added in the caller's
transaction (so they exist exactly when the change they report committed), then
claimed by a deliverer with a lease, ``FOR UPDATE SKIP LOCKED``."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Final

from sqlalchemy import Interval, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.budget import policy
from app.db.models import AgentEvent, AgentSession
from app.db.tables import agent_events
from app.domain import Decision, EventType
from app.incarnation import incarnation
from app.repositories.errors import translate_errors, translated
from app.repositories.sql import claim_due
from app.validation import MAX_ID_LENGTH

#: The thresholds a user's day can cross, in percent, and the decision that first
#: reaches each one: a rule lives in one place (``policy.decide``).
THRESHOLDS: Final[Mapping[int, frozenset[Decision]]] = {
    90: frozenset({Decision.WIND_DOWN, Decision.SLEEP, Decision.STOP}),
    100: frozenset({Decision.SLEEP, Decision.STOP}),
    110: frozenset({Decision.STOP}),
}


#: The ``dedup_key`` column is varchar(255).
MAX_DEDUP_KEY_LENGTH: Final = MAX_ID_LENGTH


def fit_dedup_key(type: EventType, key: str) -> str:
    """``key`` itself when it fits its column, else ``{type}#sha256:{hex}`` of it.

    Deterministic, so a repeat still collides with its first; and a hashed key never
    equals a readable one, whose type is followed by ":" (built by :func:`dedup_key`).
    """
    if len(key) <= MAX_DEDUP_KEY_LENGTH:
        return key
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
    return f"{type.value}#sha256:{digest}"


def _escaped(part: object) -> str:
    return str(part).replace("\\", "\\\\").replace(":", "\\:")


def dedup_key(type: EventType, *parts: object) -> str:
    """What makes two events the same: ``{type}:{part}:{part}...``, each part's ":" and
    "\\" escaped (so two lists of ids never give one key), fitted to its column
    whatever the ids in it (any accepted id is up to 255 characters)."""
    return fit_dedup_key(type, ":".join([type.value, *map(_escaped, parts)]))


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to add; ``dedup_key`` says what makes two of them the same (a key
    longer than its column is hashed, see :func:`fit_dedup_key`)."""

    type: EventType
    dedup_key: str
    payload: dict[str, Any] = field(default_factory=dict)
    clerk_user_id: str | None = None
    session_id: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "dedup_key", fit_dedup_key(self.type, self.dedup_key))


def session_event(
    type: EventType, session: AgentSession, *, at: datetime | None = None, **data: Any
) -> NewEvent:
    """An event about one transition of ``session``: once per (type, session, version)
    of one incarnation, so a new session under an erased one's id has events of its own."""
    payload: dict[str, Any] = {
        "status": session.status,
        "version": session.version,
        "tier": session.tier,
        "job_id": session.job_id,
        **data,
    }
    if at is not None:
        payload["at"] = at.isoformat()
    if session.wake_at is not None:
        payload.setdefault("wake_at", session.wake_at.isoformat())
    return NewEvent(
        type,
        dedup_key(type, session.id, incarnation(session), session.version),
        payload,
        clerk_user_id=session.clerk_user_id,
        session_id=session.id,
    )


def threshold_events(
    *,
    clerk_user_id: str,
    session_id: str,
    day: date,
    spent: int,
    budget: int,
    at: datetime,
) -> list[NewEvent]:
    """The thresholds the day's spend has reached: one event each, once per user-day
    (the unique ``dedup_key`` drops the repeats, whichever charge gets there first)."""
    decision = policy.decide(spent, budget)
    if budget <= 0:  # a zero budget means "sleep until tomorrow": no percentage to report
        return []
    return [
        NewEvent(
            EventType.THRESHOLD,
            dedup_key(EventType.THRESHOLD, clerk_user_id, day.isoformat(), pct),
            {
                "threshold_percent": pct,
                "day": day.isoformat(),
                "spent_microdollars": spent,
                "budget_microdollars": budget,
                "decision": decision.value,
                "at": at.isoformat(),
            },
            clerk_user_id=clerk_user_id,
            session_id=session_id,
        )
        for pct, reached_by in THRESHOLDS.items()
        if decision in reached_by
    ]


@dataclass(frozen=True, slots=True)
class ClaimedEvent:
    """An event booked to one deliverer until its lease runs out."""

    id: int
    event_id: str
    type: str
    dedup_key: str
    clerk_user_id: str | None
    session_id: str | None
    payload: dict[str, Any]
    attempts: int
    created_at: datetime

    def body(self) -> dict[str, Any]:
        """The JSON document POSTed to the webhook."""
        return {
            "id": self.event_id,
            "type": self.type,
            "created_at": self.created_at.isoformat(),
            "clerk_user_id": self.clerk_user_id,
            "session_id": self.session_id,
            "attempt": self.attempts,
            "data": self.payload,
        }


_LEASE = bindparam("p_lease", type_=Interval)
_DELAY = bindparam("p_delay", type_=Interval)


@translated
class EventRepository:
    """The outbox. Never commits: the caller owns the transaction."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, events: Iterable[NewEvent]) -> int:
        """Add events; those whose ``dedup_key`` is already recorded are skipped.
        Returns how many were new."""
        rows = [
            {
                "type": e.type.value,
                "dedup_key": e.dedup_key,
                "payload": e.payload,
                "clerk_user_id": e.clerk_user_id,
                "session_id": e.session_id,
            }
            for e in events
        ]
        if not rows:
            return 0
        stmt = (
            insert(AgentEvent)
            .values(rows)
            .on_conflict_do_nothing(index_elements=[agent_events.c.dedup_key])
            .returning(agent_events.c.id)
        )
        with translate_errors():
            return len((await self.session.execute(stmt)).all())

    async def claim(self, *, lease: timedelta, limit: int) -> list[ClaimedEvent]:
        """Book up to ``limit`` due, undelivered events, oldest first, for ``lease``: the
        attempt counts now, so a deliverer that dies leaves the event due again later."""
        stmt = claim_due(
            AgentEvent,
            due=[
                agent_events.c.delivered_at.is_(None),
                agent_events.c.next_attempt_at <= func.now(),
            ],
            order_by=[agent_events.c.next_attempt_at, agent_events.c.id],
            limit=limit,
            values={
                "next_attempt_at": func.now() + _LEASE,
                "attempts": agent_events.c.attempts + 1,
            },
        ).returning(
            agent_events.c.id,
            agent_events.c.event_id,
            agent_events.c.type,
            agent_events.c.dedup_key,
            agent_events.c.clerk_user_id,
            agent_events.c.session_id,
            agent_events.c.payload,
            agent_events.c.attempts,
            agent_events.c.created_at,
        )
        with translate_errors():
            rows = (await self.session.execute(stmt, {"p_lease": lease})).all()
        claimed = [
            ClaimedEvent(
                id=r.id,
                event_id=str(r.event_id),
                type=r.type,
                dedup_key=r.dedup_key,
                clerk_user_id=r.clerk_user_id,
                session_id=r.session_id,
                payload=dict(r.payload),
                attempts=r.attempts,
                created_at=r.created_at,
            )
            for r in rows
        ]
        return sorted(claimed, key=lambda e: e.id)

    async def delivered(self, ids: Sequence[int]) -> int:
        """The receiver answered 2xx: these events are done."""
        if not ids:
            return 0
        stmt = (
            update(AgentEvent)
            .where(agent_events.c.id.in_(list(ids)), agent_events.c.delivered_at.is_(None))
            .values(delivered_at=func.now(), last_error=None)
            .returning(agent_events.c.id)
        )
        with translate_errors():
            return len((await self.session.execute(stmt)).all())

    async def retry_later(
        self, event_id: int, attempts: int, *, delay: timedelta, error: str
    ) -> bool:
        """The attempt failed: due again after ``delay``. Only the claim that made
        attempt ``attempts`` may reschedule (a later claim's lease stands)."""
        stmt = (
            update(AgentEvent)
            .where(
                agent_events.c.id == event_id,
                agent_events.c.attempts == attempts,
                agent_events.c.delivered_at.is_(None),
            )
            .values(next_attempt_at=func.now() + _DELAY, last_error=error[:2000])
            .returning(agent_events.c.id)
        )
        with translate_errors():
            found = (await self.session.execute(stmt, {"p_delay": delay})).first()
        return found is not None

    async def pending(self) -> tuple[int, float]:
        """Undelivered events, and the age in seconds of the oldest (0 when none)."""
        row = (
            await self.session.execute(
                select(
                    func.count(),
                    func.coalesce(
                        func.extract("epoch", func.now() - func.min(agent_events.c.created_at)), 0
                    ),
                ).where(agent_events.c.delivered_at.is_(None))
            )
        ).one()
        return int(row[0]), float(row[1])

    async def seconds_until_next(self) -> float | None:
        """Seconds until the next undelivered event is due (0 if one is), None if none."""
        value = await self.session.scalar(
            select(
                func.greatest(
                    0, func.extract("epoch", func.min(agent_events.c.next_attempt_at) - func.now())
                )
            ).where(agent_events.c.delivered_at.is_(None))
        )
        return None if value is None else float(value)


__all__ = [
    "MAX_DEDUP_KEY_LENGTH",
    "THRESHOLDS",
    "ClaimedEvent",
    "EventRepository",
    "NewEvent",
    "dedup_key",
    "fit_dedup_key",
    "session_event",
    "threshold_events",
]
