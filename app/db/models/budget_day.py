"""``budget_days``: one row per user per UTC day; a new day is a new row, never a reset."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import CheckConstraint, func, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, Microdollars, Str255


class BudgetDay(Base):
    """A user's allowance for one UTC day, fixed when the row is created, the spend so far,
    and what open reservations hold back."""

    __tablename__ = "budget_days"
    __table_args__ = (
        CheckConstraint("budget_microdollars >= 0", name="budget_non_negative"),
        CheckConstraint("spent_microdollars >= 0", name="spent_non_negative"),
        CheckConstraint("reserved_microdollars >= 0", name="reserved_non_negative"),
    )

    clerk_user_id: Mapped[Str255] = mapped_column(primary_key=True)
    day: Mapped[date] = mapped_column(primary_key=True)
    budget_microdollars: Mapped[Microdollars]
    spent_microdollars: Mapped[Microdollars] = mapped_column(default=0, server_default=text("0"))
    # The sum of the day's budget_reservations rows, kept by the statements that insert
    # and delete them, so a reservation checks one locked row (DESIGN.md §6b).
    reserved_microdollars: Mapped[Microdollars] = mapped_column(default=0, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now(), init=False, repr=False)
