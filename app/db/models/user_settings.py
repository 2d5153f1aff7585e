"""``user_settings``: one row per user, owned by the billing side of the product."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, Identity, func
from sqlalchemy.orm import Mapped, mapped_column, validates

from app.db.base import Base, Microdollars, Str50, Str255, check_in
from app.domain import InvalidInput, Tier
from app.validation import require_id


class UserSettings(Base):
    """A subscriber: tier, Stripe ids, renewal date and an optional budget override."""

    __tablename__ = "user_settings"
    __table_args__ = (
        CheckConstraint(check_in("tier", Tier), name="tier"),
        CheckConstraint(
            "budget_override_microdollars IS NULL OR budget_override_microdollars >= 0",
            name="budget_override_non_negative",
        ),
    )

    clerk_user_id: Mapped[Str255] = mapped_column(unique=True)
    tier: Mapped[Str50]
    id: Mapped[int] = mapped_column(
        BigInteger, Identity(), primary_key=True, init=False, repr=False, sort_order=-1
    )
    stripe_customer_id: Mapped[Str255 | None] = mapped_column(default=None)
    stripe_subscription_id: Mapped[Str255 | None] = mapped_column(default=None)
    subscription_renewal_date: Mapped[datetime | None] = mapped_column(default=None)
    # Admin override of the tier's period allowance.
    budget_override_microdollars: Mapped[Microdollars | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now(), init=False, repr=False)
    updated_at: Mapped[datetime] = mapped_column(
        server_default=func.now(), onupdate=func.now(), init=False, repr=False
    )

    @validates("clerk_user_id")
    def _valid_user_id(self, key: str, value: str) -> str:
        return require_id(value, key)

    @validates("subscription_renewal_date")
    def _aware_renewal(self, key: str, value: datetime | None) -> datetime | None:
        # A naive time would be read in some machine's local zone: refuse it.
        if value is not None and (value.tzinfo is None or value.utcoffset() is None):
            raise InvalidInput(f"{key} must be timezone-aware, got naive {value}", field=key)
        return value

    @validates("budget_override_microdollars")
    def _storable_override(self, key: str, value: int | None) -> int | None:
        # BIGINT holds it or nothing does: refused here, not as a driver error on flush.
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 2**63 - 1
        ):
            raise InvalidInput(f"{key} must be an int in [0, 2**63-1], got {value!r}", field=key)
        return value
