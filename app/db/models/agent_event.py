"""``agent_events``: the transactional outbox of budget and session events (webhooks)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, Identity, Index, Text, func, text
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, JSONObject, Str50, Str255, check_in
from app.domain import EventType


class AgentEvent(Base):
    """One event, written in the transaction of the change it reports and delivered at
    least once. ``dedup_key`` makes "once" hold: the same threshold of the same user-day,
    or the same transition of the same session version, is recorded a single time."""

    __tablename__ = "agent_events"
    __table_args__ = (
        CheckConstraint(check_in("type", [t.value for t in EventType]), name="type_known"),
        CheckConstraint("attempts >= 0", name="attempts_non_negative"),
        # The deliverer's claim: undelivered events by due time.
        Index(
            "ix_agent_events_next_attempt_at_pending",
            "next_attempt_at",
            postgresql_where=text("delivered_at IS NULL"),
        ),
    )

    type: Mapped[Str50]
    dedup_key: Mapped[Str255] = mapped_column(unique=True)
    payload: Mapped[JSONObject] = mapped_column(default_factory=dict)
    clerk_user_id: Mapped[Str255 | None] = mapped_column(default=None, index=True)
    session_id: Mapped[Str255 | None] = mapped_column(default=None)
    id: Mapped[int] = mapped_column(
        BigInteger, Identity(), primary_key=True, init=False, repr=False, sort_order=-1
    )
    #: What receivers deduplicate on (the ``webhook-id`` header and the body's ``id``).
    event_id: Mapped[Any] = mapped_column(
        UUID(as_uuid=False),
        server_default=func.gen_random_uuid(),
        unique=True,
        init=False,
    )
    attempts: Mapped[int] = mapped_column(default=0, server_default=text("0"), init=False)
    #: Due time; a claim pushes it one lease ahead, so an event whose deliverer died is
    #: claimed again after the lease (at least once).
    next_attempt_at: Mapped[datetime] = mapped_column(server_default=func.now(), init=False)
    delivered_at: Mapped[datetime | None] = mapped_column(default=None, init=False)
    last_error: Mapped[str | None] = mapped_column(Text, default=None, init=False, repr=False)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now(), init=False, repr=False)
