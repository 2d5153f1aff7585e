"""``agent_cost_events``: the append-only ledger of LLM calls (BDGT-06)."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Identity,
    Index,
    UniqueConstraint,
    false,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, Microdollars, Str100, Str255


class AgentCostEvent(Base):
    """One LLM call. ``request_id`` is the provider's id (or the caller's), unique per
    user so a retried charge counts once; the same id from another user is another call
    (DESIGN.md §6c).

    The row keeps its token counts by class (DESIGN.md §6b), so its cost can be audited
    against the price that was in force: ``cache_creation_input_tokens`` counts every
    cache write, ``cache_creation_1h_input_tokens`` the part of them with the 1-hour TTL.
    """

    __tablename__ = "agent_cost_events"
    __table_args__ = (
        CheckConstraint("input_tokens >= 0", name="input_tokens_non_negative"),
        CheckConstraint("output_tokens >= 0", name="output_tokens_non_negative"),
        CheckConstraint("cost_microdollars >= 0", name="cost_non_negative"),
        CheckConstraint(
            "cache_creation_1h_input_tokens >= 0"
            " AND cache_creation_1h_input_tokens <= cache_creation_input_tokens",
            name="cache_1h_within_writes",
        ),
        CheckConstraint("cache_read_input_tokens >= 0", name="cache_read_non_negative"),
        CheckConstraint("web_search_requests >= 0", name="web_search_requests_non_negative"),
        # A request id belongs to a user (DESIGN.md §6c).
        UniqueConstraint("clerk_user_id", "request_id"),
        Index(None, "clerk_user_id", "budget_day"),
        # A session's latest charge is a sign of its runner's life (DESIGN.md §8).
        Index(None, "session_id", "created_at"),
    )

    request_id: Mapped[Str255]
    # No cascade: money that was spent stays on the books even if a session row goes.
    session_id: Mapped[Str255] = mapped_column(ForeignKey("agent_sessions.id"), index=True)
    clerk_user_id: Mapped[Str255]
    model: Mapped[Str100]
    input_tokens: Mapped[int]
    output_tokens: Mapped[int]
    cost_microdollars: Mapped[Microdollars]
    budget_day: Mapped[date]
    cache_creation_input_tokens: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    cache_creation_1h_input_tokens: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    cache_read_input_tokens: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    batch: Mapped[bool] = mapped_column(default=False, server_default=false())
    # Server tool use priced per use (DESIGN.md §6b; docs/pricing.md).
    web_search_requests: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    id: Mapped[int] = mapped_column(
        BigInteger, Identity(), primary_key=True, init=False, repr=False, sort_order=-1
    )
    created_at: Mapped[datetime] = mapped_column(server_default=func.now(), init=False, repr=False)
