"""Billing periods anchored on the renewal date (DESIGN.md §6): examples and properties."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from app.budget.policy import (
    MAX_MICRODOLLARS,
    Period,
    anniversary,
    budget_day,
    daily_budget,
    days_until_renewal,
    decide,
    next_budget_day_start,
    period_containing,
)
from app.clock import VirtualClock
from app.db.models import UserSettings
from app.domain import Decision, InvalidInput, Tier
from app.settings import Settings

HUNDRED = 100_000_000  # partner: $100 a period


# ------------------------------------------------------------- issue 13, findings 1-3


def test_renewal_day_opens_a_new_period() -> None:
    """Finding 1: Dec 6 is the first day of [Dec 6, Jan 6), not the last of the old one."""
    renewal = datetime(2026, 12, 6, 9, 30, tzinfo=UTC)
    assert period_containing(date(2026, 12, 6), renewal) == Period(
        date(2026, 12, 6), date(2027, 1, 6)
    )
    assert days_until_renewal(date(2026, 12, 6), renewal) == 31
    assert daily_budget(HUNDRED, 0, 31) == HUNDRED // 31
    # The day before is the old period's last day: the rest of it, once.
    assert period_containing(date(2026, 12, 5), renewal) == Period(
        date(2026, 11, 6), date(2026, 12, 6)
    )
    assert days_until_renewal(date(2026, 12, 5), renewal) == 1
    # Dec 6's spend counts in the new period only: Dec 7 spreads the rest over 30 days.
    assert days_until_renewal(date(2026, 12, 7), renewal) == 30
    assert daily_budget(HUNDRED, 1_000_000, 30) == 99_000_000 // 30


def test_nov_26_of_the_worked_example() -> None:
    renewal = datetime(2026, 12, 6, tzinfo=UTC)
    assert period_containing(date(2026, 11, 26), renewal).start == date(2026, 11, 6)
    assert daily_budget(HUNDRED, 60_000_000, days_until_renewal(date(2026, 11, 26), renewal)) == (
        4_000_000
    )


def test_month_end_anchor_does_not_drift() -> None:
    """Finding 2: anchor Jan 31 gives Feb 28 then Mar 31, never Jan 28 or Mar 28."""
    anchor = date(2026, 1, 31)
    assert [anniversary(anchor, k) for k in range(-1, 4)] == [
        date(2025, 12, 31),
        date(2026, 1, 31),
        date(2026, 2, 28),
        date(2026, 3, 31),
        date(2026, 4, 30),
    ]
    feb_1 = period_containing(date(2026, 2, 1), anchor)
    assert feb_1 == Period(date(2026, 1, 31), date(2026, 2, 28))
    assert days_until_renewal(date(2026, 2, 1), anchor) == 27
    assert daily_budget(HUNDRED, 0, 27) == HUNDRED // 27
    assert period_containing(date(2026, 3, 1), anchor) == Period(
        date(2026, 2, 28), date(2026, 3, 31)
    )
    assert days_until_renewal(date(2026, 3, 1), anchor) == 30
    # In a leap year the clamp lands on Feb 29.
    assert period_containing(date(2028, 3, 1), anchor).start == date(2028, 2, 29)


def test_renewal_far_ahead_still_finds_the_current_period() -> None:
    """Finding 3: an annual plan renewing next year splits the year into monthly periods
    anchored on its day, so what was spent earlier this month is subtracted."""
    renewal = datetime(2027, 12, 6, tzinfo=UTC)
    assert period_containing(date(2026, 11, 26), renewal) == Period(
        date(2026, 11, 6), date(2026, 12, 6)
    )
    assert days_until_renewal(date(2026, 11, 26), renewal) == 10


def test_renewal_long_past_needs_no_special_case() -> None:
    renewal = date(2024, 3, 31)
    assert period_containing(date(2026, 11, 26), renewal) == Period(
        date(2026, 10, 31), date(2026, 11, 30)
    )


@pytest.mark.parametrize(
    "call",
    [
        lambda: budget_day(datetime(2026, 11, 26, 23, 0)),
        lambda: next_budget_day_start(datetime(2026, 11, 26, 23, 0)),
    ],
)
def test_naive_times_are_refused(call: Callable[[], object]) -> None:
    """Finding 8: a naive time would be read in the machine's zone; it is refused."""
    with pytest.raises(InvalidInput) as caught:
        call()
    assert caught.value.field == "now"


def test_the_largest_override_decides_without_trouble() -> None:
    assert decide(MAX_MICRODOLLARS, MAX_MICRODOLLARS) is Decision.SLEEP
    assert decide(0, MAX_MICRODOLLARS // 30) is Decision.CONTINUE


# ---------------------------------------------------------------------- properties


@st.composite
def renewal_and_day(draw: st.DrawFn) -> tuple[date, date]:
    """A day, and a renewal date from years in the past to 13 months ahead of it, often on
    a month's last days (28-31) and in leap years."""
    day = draw(st.dates(min_value=date(2001, 1, 1), max_value=date(2098, 12, 31)))
    offset = draw(st.integers(min_value=-5 * 366, max_value=13 * 31))
    renewal = day + timedelta(days=offset)
    if draw(st.booleans()):  # pin to the month's end region: 28, 29, 30 or 31
        wanted = draw(st.integers(28, 31))
        for candidate in range(wanted, 27, -1):
            try:
                renewal = renewal.replace(day=candidate)
                break
            except ValueError:
                continue
    if draw(st.booleans()):  # a leap year's February
        renewal = renewal.replace(year=2000 + 4 * draw(st.integers(0, 24)), month=2, day=29)
    return renewal, day


def _index(anchor: date, day: date) -> int:
    return (day.year * 12 + day.month) - (anchor.year * 12 + anchor.month)


@given(renewal_and_day())
def test_every_day_lies_in_exactly_one_period_starting_on_an_anniversary(
    pair: tuple[date, date],
) -> None:
    renewal, day = pair
    period = period_containing(day, renewal)
    assert period.start <= day < period.end
    k = _index(renewal, period.start)
    assert period.start == anniversary(renewal, k)
    assert period.end == anniversary(renewal, k + 1)
    # Exactly one: of the consecutive anniversaries around ``day``, only this pair holds it.
    base = _index(renewal, day)
    holders = [
        j
        for j in range(base - 2, base + 3)
        if anniversary(renewal, j) <= day < anniversary(renewal, j + 1)
    ]
    assert holders == [k]
    # Neighbouring days agree: the period's first and last days map to it too.
    assert period_containing(period.start, renewal) == period
    assert period_containing(period.end - timedelta(days=1), renewal) == period
    assert 1 <= days_until_renewal(day, renewal) <= period.days


@given(renewal_and_day(), st.integers(-15, 15))
def test_the_renewal_day_opens_a_period(pair: tuple[date, date], months: int) -> None:
    renewal, _ = pair
    opening = anniversary(renewal, months)
    assert period_containing(opening, renewal).start == opening
    assert days_until_renewal(opening, renewal) == period_containing(opening, renewal).days


@given(
    renewal_and_day(),
    st.integers(0, MAX_MICRODOLLARS),
    st.lists(st.integers(0, 10**12), min_size=31, max_size=31),
)
def test_daily_budgets_never_exceed_what_is_left(
    pair: tuple[date, date], allowance: int, spends: list[int]
) -> None:
    """Walk a whole period day by day: each day's budget, times the days left, fits in
    what remains of the allowance, whatever was spent on the days before."""
    renewal, day = pair
    period = period_containing(day, renewal)
    spent = 0
    current = period.start
    while current < period.end:
        days_left = days_until_renewal(current, renewal)
        assert days_left == (period.end - current).days
        budget = daily_budget(allowance, spent, days_left)
        assert 0 <= budget * days_left <= max(0, allowance - spent)
        spent += spends[(current - period.start).days]
        current += timedelta(days=1)


@given(st.dates(min_value=date(2000, 1, 1), max_value=date(2090, 12, 31)), st.integers(-24, 24))
def test_anniversaries_increase_month_by_month(anchor: date, months: int) -> None:
    assert anniversary(anchor, months) < anniversary(anchor, months + 1)


def test_a_naive_renewal_date_or_clock_start_is_refused() -> None:
    naive = datetime(2026, 12, 6, 9, 0)
    with pytest.raises(InvalidInput) as caught:
        UserSettings(clerk_user_id="u", tier="partner", subscription_renewal_date=naive)
    assert caught.value.field == "subscription_renewal_date"
    with pytest.raises(InvalidInput):
        VirtualClock(naive)
    aware_renewal = naive.replace(tzinfo=UTC)
    settings = UserSettings(
        clerk_user_id="u", tier="partner", subscription_renewal_date=aware_renewal
    )
    assert settings.subscription_renewal_date == aware_renewal


def test_allowances_beyond_bigint_are_refused_at_start_up() -> None:
    assert (
        Settings(_env_file=None, tier_allowance_partner=MAX_MICRODOLLARS).allowance_for(
            Tier.PARTNER
        )
        == MAX_MICRODOLLARS
    )
    with pytest.raises(ValidationError, match="tier_allowance_partner"):
        Settings(_env_file=None, tier_allowance_partner=MAX_MICRODOLLARS + 1)
