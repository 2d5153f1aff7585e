"""``budget_reservations``: the worst-case cost of calls in flight, booked before each call."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, func
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, Microdollars, Str100, Str255


class BudgetReservation(Base):
    """One open reservation (DESIGN.md §6b): ``amount_microdollars`` held back on the
    user's ``budget_day`` until the user's charge with the same ``request_id`` settles it, or
    until ``expires_at``. Its amount is also in the day's ``reserved_microdollars``."""

    __tablename__ = "budget_reservations"
    __table_args__ = (
        CheckConstraint("amount_microdollars >= 0", name="amount_non_negative"),
        Index(None, "clerk_user_id", "budget_day", "expires_at"),
    )

    # A request id belongs to a user (DESIGN.md §6c): the pair is the key.
    clerk_user_id: Mapped[Str255] = mapped_column(primary_key=True)
    request_id: Mapped[Str255] = mapped_column(primary_key=True)
    # A reservation is worth nothing without its session: it goes with it.
    session_id: Mapped[Str255] = mapped_column(
        ForeignKey("agent_sessions.id", ondelete="CASCADE"), index=True
    )
    budget_day: Mapped[date]
    model: Mapped[Str100]
    amount_microdollars: Mapped[Microdollars]
    expires_at: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now(), init=False, repr=False)
