"""``budget_credits``: top-ups a user bought, each added to the period it was bought in."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Identity,
    Index,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, Microdollars, Str255


class BudgetCredit(Base):
    """One top-up: ``amount_microdollars`` bought at ``bought_at`` (on ``budget_day``, UTC).

    A period's allowance is the tier's (or the override) plus the credits bought in it;
    the day it was bought on gets the whole amount at once (DESIGN.md §6b).
    """

    __tablename__ = "budget_credits"
    __table_args__ = (
        CheckConstraint("amount_microdollars > 0", name="amount_positive"),
        Index(None, "clerk_user_id", "budget_day"),
        # A retried top-up credits once (DESIGN.md §6c); NULL keys never collide.
        UniqueConstraint("clerk_user_id", "idempotency_key"),
    )

    # A credit belongs to a subscriber: it goes when the user_settings row goes.
    clerk_user_id: Mapped[Str255] = mapped_column(
        ForeignKey("user_settings.clerk_user_id", ondelete="CASCADE")
    )
    amount_microdollars: Mapped[Microdollars]
    budget_day: Mapped[date]
    bought_at: Mapped[datetime]
    idempotency_key: Mapped[Str255 | None] = mapped_column(default=None)
    id: Mapped[int] = mapped_column(
        BigInteger, Identity(), primary_key=True, init=False, repr=False, sort_order=-1
    )
    created_at: Mapped[datetime] = mapped_column(server_default=func.now(), init=False, repr=False)
