"""``UserRepository``: a subscriber's settings, created and changed in code."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any, Final, Literal

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import tables
from app.db.models import UserSettings
from app.domain import InvalidInput, Tier
from app.repositories.errors import translated
from app.repositories.sql import FRESH
from app.validation import parse_enum, require_aware, require_id, require_money


class _Keep(Enum):
    KEEP = "keep"


#: "Leave this field as it is" for :meth:`UserRepository.upsert` (``None`` clears it).
KEEP: Final = _Keep.KEEP
Keep = Literal[_Keep.KEEP]


@translated
class UserRepository:
    """Users' ``user_settings`` rows. Flushes, never commits."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def upsert(
        self,
        clerk_user_id: str,
        *,
        tier: Tier | str | Keep = KEEP,
        subscription_renewal_date: datetime | Keep | None = KEEP,
        budget_override_microdollars: int | Keep | None = KEEP,
    ) -> UserSettings:
        """Create the user's row, or change the fields given (``None`` clears the renewal
        date or the override; a field not given is left as it is). A new user needs a
        ``tier``. One statement (``INSERT ... ON CONFLICT DO UPDATE``), so two callers
        creating one user at once make one row. A day's budget is fixed when its row is
        made: a change applies from the next budget day on (a top-up is immediate)."""
        require_id(clerk_user_id, "clerk_user_id")
        given: dict[str, Any] = {}
        if tier is not KEEP:
            given["tier"] = parse_enum(Tier, tier, "tier").value
        if subscription_renewal_date is not KEEP:
            given["subscription_renewal_date"] = (
                None
                if subscription_renewal_date is None
                else require_aware(subscription_renewal_date, "subscription_renewal_date")
            )
        if budget_override_microdollars is not KEEP:
            given["budget_override_microdollars"] = (
                None
                if budget_override_microdollars is None
                else require_money(budget_override_microdollars, "budget_override_microdollars")
            )
        table = tables.user_settings
        if "tier" not in given:
            existing = await self.get(clerk_user_id)
            if existing is None:
                raise InvalidInput(
                    f"user {clerk_user_id!r} does not exist yet: give a tier to create it",
                    field="tier",
                )
            if not given:
                return existing
        stmt = (
            insert(table)
            .values(clerk_user_id=clerk_user_id, **given)
            .on_conflict_do_update(index_elements=[table.c.clerk_user_id], set_=given)
            if "tier" in given
            else update(table).where(table.c.clerk_user_id == clerk_user_id).values(**given)
        )
        await self.session.execute(stmt)
        found = await self.get(clerk_user_id)
        assert found is not None  # written by this transaction
        return found

    async def get(self, clerk_user_id: str) -> UserSettings | None:
        """The user's row, or None."""
        require_id(clerk_user_id, "clerk_user_id")
        return await self.session.scalar(
            select(UserSettings)
            .where(UserSettings.clerk_user_id == clerk_user_id)
            .execution_options(**FRESH)
        )
