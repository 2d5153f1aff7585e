"""Budget arithmetic (BDGT-01, BDGT-07): examples from the plan, boundaries, properties."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.budget import policy
from app.budget.policy import (
    add_months,
    budget_day,
    daily_budget,
    days_until_renewal,
    decide,
    next_budget_day_start,
    period_containing,
    period_start,
)
from app.domain import Decision

TODAY = date(2026, 11, 26)


# ----------------------------------------------------------------- the plan's examples


def test_hundred_dollars_over_ten_days_is_ten_a_day() -> None:
    renewal = datetime(2026, 12, 6, 9, 30, tzinfo=UTC)
    days = days_until_renewal(TODAY, renewal)
    assert days == 10
    assert daily_budget(100_000_000, 0, days) == 10_000_000


def test_the_day_before_renewal_is_the_last_day_of_the_period() -> None:
    renewal = datetime(2026, 11, 27, 23, 0, tzinfo=UTC)
    assert days_until_renewal(TODAY, renewal) == 1
    assert daily_budget(100_000_000, 35_000_000, 1) == 65_000_000


def test_unknown_renewal_divides_by_thirty() -> None:
    assert days_until_renewal(TODAY, None) == 30
    assert daily_budget(30_000_000, 0, days_until_renewal(TODAY, None)) == 1_000_000


def test_spent_budget_never_goes_negative() -> None:
    assert daily_budget(10, 50, 3) == 0


def test_days_left_must_be_positive() -> None:
    with pytest.raises(ValueError, match="days_left"):
        daily_budget(10, 0, 0)


def test_past_renewal_rolls_forward_instead_of_dumping_the_allowance() -> None:
    # The billing system has not written the next date yet: Nov 20 -> Dec 20.
    stale = datetime(2026, 11, 20, tzinfo=UTC)
    assert days_until_renewal(TODAY, stale) == (date(2026, 12, 20) - TODAY).days


# ----------------------------------------------------------------------- calendar


@pytest.mark.parametrize(
    ("renewal", "start"),
    [
        (date(2027, 3, 31), date(2027, 2, 28)),
        (date(2028, 3, 31), date(2028, 2, 29)),  # leap year
        (date(2027, 1, 31), date(2026, 12, 31)),
        (date(2027, 5, 31), date(2027, 4, 30)),
        (date(2027, 3, 15), date(2027, 2, 15)),
    ],
)
def test_period_before_renewal_starts_one_calendar_month_earlier(
    renewal: date, start: date
) -> None:
    assert period_start(renewal - timedelta(days=1), renewal) == start


def test_budget_day_is_the_utc_date() -> None:
    tz_minus5 = datetime(2026, 11, 26, 21, 0, tzinfo=UTC).astimezone(timezone(timedelta(hours=-5)))
    assert budget_day(tz_minus5) == date(2026, 11, 26)
    assert budget_day(datetime(2026, 11, 26, 23, 59, 59, tzinfo=UTC)) == date(2026, 11, 26)


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (datetime(2026, 11, 26, 13, 5, tzinfo=UTC), datetime(2026, 11, 27, tzinfo=UTC)),
        (datetime(2026, 11, 26, 0, 0, tzinfo=UTC), datetime(2026, 11, 27, tzinfo=UTC)),
        (datetime(2026, 12, 31, 23, 59, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)),
    ],
)
def test_next_budget_day_start(moment: datetime, expected: datetime) -> None:
    assert next_budget_day_start(moment) == expected


# ---------------------------------------------------------------------- decisions


@pytest.mark.parametrize(
    ("spent", "decision"),
    [
        (0, Decision.CONTINUE),
        (8_999, Decision.CONTINUE),  # 89.99 %
        (9_000, Decision.WIND_DOWN),  # 90 %
        (9_999, Decision.WIND_DOWN),
        (10_000, Decision.SLEEP),  # 100 %
        (11_000, Decision.SLEEP),  # exactly 110 % still sleeps
        (11_001, Decision.STOP),  # 110.01 %
    ],
)
def test_decision_boundaries(spent: int, decision: Decision) -> None:
    assert decide(spent, 10_000) is decision


def test_a_hair_above_110_percent_stops() -> None:
    budget = 10_000_000
    assert decide(11_000_000, budget) is Decision.SLEEP
    assert decide(11_000_010, budget) is Decision.STOP  # 110.0001 %


@pytest.mark.parametrize("spent", [0, 1, 10**9])
def test_zero_budget_means_sleep_never_stop(spent: int) -> None:
    assert decide(spent, 0) is Decision.SLEEP


# --------------------------------------------------------------------- properties

money = st.integers(min_value=0, max_value=10**13)
days = st.dates(min_value=date(2000, 1, 1), max_value=date(2100, 12, 31))


@given(today=days, renewal=st.one_of(st.none(), days))
def test_days_until_renewal_is_at_least_one(today: date, renewal: date | None) -> None:
    assert days_until_renewal(today, renewal) >= 1


@given(allowance=money, spent=money, days_left=st.integers(1, 400))
def test_daily_budget_never_exceeds_what_is_left(
    allowance: int, spent: int, days_left: int
) -> None:
    remaining = max(0, allowance - spent)
    per_day = daily_budget(allowance, spent, days_left)
    assert 0 <= per_day * days_left <= remaining
    assert remaining - per_day * days_left < days_left  # and wastes less than a day's rounding


@given(day=days, months=st.integers(-24, 24))
def test_add_months_clamps_and_never_overshoots(day: date, months: int) -> None:
    moved = add_months(day, months)
    assert (moved.year * 12 + moved.month) - (day.year * 12 + day.month) == months
    assert moved.day <= day.day


@given(renewal=days, day=days)
def test_period_is_one_month_long(renewal: date, day: date) -> None:
    assert 28 <= period_containing(day, renewal).days <= 31


@given(spent=money, budget=st.integers(1, 10**12))
def test_decide_is_monotonic_in_spend(spent: int, budget: int) -> None:
    order = [Decision.CONTINUE, Decision.WIND_DOWN, Decision.SLEEP, Decision.STOP]
    assert order.index(decide(spent, budget)) <= order.index(decide(spent + 1, budget))


@given(spent=money, budget=st.integers(1, 10**12))
def test_stop_only_above_110_percent(spent: int, budget: int) -> None:
    stops = decide(spent, budget) is Decision.STOP
    assert stops == (spent * 100 > budget * policy.STOP_ABOVE)


def test_the_readme_worked_example() -> None:
    from app.budget.pricing import cost_microdollars
    from app.settings import SONNET

    today = date(2026, 11, 26)
    renewal = datetime(2026, 12, 6, tzinfo=UTC)
    assert period_start(today, renewal) == date(2026, 11, 6)
    budget = daily_budget(100_000_000, 40_000_000 + 20_000_000, days_until_renewal(today, renewal))
    assert budget == 4_000_000
    call = cost_microdollars(SONNET, 20_000, 3_000)
    assert call == 105_000
    assert decide(34 * call, budget) is Decision.CONTINUE
    assert decide(35 * call, budget) is Decision.WIND_DOWN
    assert decide(38 * call, budget) is Decision.WIND_DOWN
    assert decide(39 * call, budget) is Decision.SLEEP
    assert decide(4_400_001, budget) is Decision.STOP
