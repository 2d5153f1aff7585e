"""Billing periods against a real PostgreSQL: the renewal day, month ends, annual plans."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from app.lifecycle import Runtime, start_session
from app.repositories import BudgetRepository
from app.session_store import RedisSessionStore
from app.settings import ModelPrice, Settings
from tests.integration.helpers import Factory, ManualClock
from tests.integration.money import (
    ONE_PER_TOKEN,
    add_spend,
    add_user,
    charge,
    day_row,
)

HUNDRED = 100_000_000  # partner: $100 a period (the default allowance)


@pytest.fixture
def settings() -> Settings:
    return Settings(
        _env_file=None,
        model_prices={ONE_PER_TOKEN: ModelPrice(input_per_mtok=1_000_000, output_per_mtok=0)},
    )


async def _budget(factory: Factory, settings: Settings, day: date, user: str = "u-1") -> int:
    async with factory.begin() as s:
        return await BudgetRepository(s, settings).daily_budget(user, day)


async def test_renewal_day_opens_a_new_period(
    session_factory: Factory, settings: Settings, store: RedisSessionStore
) -> None:
    """Finding 1 and the issue's acceptance: Dec 6 gets 100 // 31, not the old $40, and
    Dec 6's spend is counted once, in the new period."""
    await add_user(session_factory, renewal=datetime(2026, 12, 6, 9, 0, tzinfo=UTC))
    await add_spend(
        session_factory, "u-1", {date(2026, 11, 10): 40_000_000, date(2026, 11, 20): 20_000_000}
    )
    assert await _budget(session_factory, settings, date(2026, 11, 26)) == 4_000_000
    assert await _budget(session_factory, settings, date(2026, 12, 5)) == 40_000_000

    clock = ManualClock(datetime(2026, 12, 6, 10, 0, tzinfo=UTC))
    rt = Runtime(session_factory, store, settings, clock)
    session = await start_session(
        rt, session_id="s-1", job_id="j", clerk_user_id="u-1", tier="partner"
    )
    assert session.daily_budget_microdollars == HUNDRED // 31
    result = await charge(rt, "s-1", "dec-6", 1_000_000)  # $1 on the renewal day
    assert (result.spent_microdollars, result.budget_microdollars) == (1_000_000, HUNDRED // 31)
    assert await _budget(session_factory, settings, date(2026, 12, 7)) == 99_000_000 // 30


async def test_month_end_anchor_does_not_drift(
    session_factory: Factory, settings: Settings
) -> None:
    """Finding 2: renewal stored as Jan 31 2026, $60 spent Jan 28-30. Feb 1 lies in
    [Jan 31, Feb 28) with nothing of it spent; Mar 1 in [Feb 28, Mar 31)."""
    await add_user(session_factory, renewal=datetime(2026, 1, 31, tzinfo=UTC))
    await add_spend(
        session_factory,
        "u-1",
        {
            date(2026, 1, 28): 20_000_000,
            date(2026, 1, 29): 20_000_000,
            date(2026, 1, 30): 20_000_000,
        },
    )
    assert await _budget(session_factory, settings, date(2026, 2, 1)) == HUNDRED // 27
    assert await _budget(session_factory, settings, date(2026, 3, 1)) == HUNDRED // 30


async def test_renewal_a_year_ahead_subtracts_this_periods_spend(
    session_factory: Factory, settings: Settings
) -> None:
    """Finding 3: an annual plan (renewal next December) still has monthly periods on its
    day, and what was spent earlier in the current one is subtracted."""
    await add_user(session_factory, renewal=datetime(2027, 12, 6, tzinfo=UTC))
    await add_spend(
        session_factory, "u-1", {date(2026, 11, 10): 40_000_000, date(2026, 11, 20): 20_000_000}
    )
    assert await _budget(session_factory, settings, date(2026, 11, 26)) == 4_000_000


async def test_a_renewal_date_years_past_needs_no_special_case(
    session_factory: Factory, settings: Settings
) -> None:
    await add_user(session_factory, renewal=datetime(2023, 5, 31, tzinfo=UTC))
    # Anniversaries ... Oct 31, Nov 30 2026: Nov 30 opens a 31-day period.
    await add_spend(session_factory, "u-1", {date(2026, 11, 10): 70_000_000})
    assert await _budget(session_factory, settings, date(2026, 11, 29)) == 30_000_000
    assert await day_row(session_factory, "u-1", date(2026, 11, 29)) == (0, 30_000_000)
    assert await _budget(session_factory, settings, date(2026, 11, 30)) == HUNDRED // 31
