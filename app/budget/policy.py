"""Budget arithmetic: pure functions of money and time, no I/O (DESIGN.md §6)."""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime, time, timedelta
from typing import Final

from app.domain import Decision

#: Days a period is divided into when the subscription's renewal date is unknown.
DEFAULT_PERIOD_DAYS: Final = 30

# Decision thresholds in percent of the day's budget.
WIND_DOWN_AT: Final = 90
SLEEP_AT: Final = 100
STOP_ABOVE: Final = 110


def budget_day(moment: datetime) -> date:
    """The UTC calendar date ``moment`` falls on: the budget day it is charged to."""
    return moment.astimezone(UTC).date()


def next_budget_day_start(moment: datetime) -> datetime:
    """The first 00:00 UTC strictly after ``moment``: when a sleeper wakes."""
    return datetime.combine(budget_day(moment) + timedelta(days=1), time(0), tzinfo=UTC)


def _as_date(value: datetime | date) -> date:
    return budget_day(value) if isinstance(value, datetime) else value


def add_months(day: date, months: int) -> date:
    """``day`` moved by whole calendar months, the day clamped (Mar 31 - 1 -> Feb 28/29)."""
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    last = calendar.monthrange(year, month + 1)[1]
    return date(year, month + 1, min(day.day, last))


def effective_renewal(today: date, renewal: datetime | date) -> date:
    """The renewal date, rolled forward a month at a time if it is already past.

    A billing system that has not yet written the next renewal date must not turn
    the rest of the allowance into a single day's budget.
    """
    anchor = _as_date(renewal)
    months = 0
    due = anchor
    while due < today:
        months += 1
        due = add_months(anchor, months)
    return due


def days_until_renewal(today: date, renewal: datetime | date | None) -> int:
    """Days the remaining budget is spread over: at least 1, and 30 when unknown."""
    if renewal is None:
        return DEFAULT_PERIOD_DAYS
    return max(1, (effective_renewal(today, renewal) - today).days)


def period_start(renewal: datetime | date, today: date | None = None) -> date:
    """First day of the billing period ending at ``renewal``: one calendar month before it."""
    due = effective_renewal(today, renewal) if today is not None else _as_date(renewal)
    return add_months(due, -1)


def daily_budget(allowance: int, spent_in_period: int, days_left: int) -> int:
    """BDGT-01: what is left of the period allowance, spread evenly over the days left."""
    if days_left < 1:
        raise ValueError(f"days_left must be >= 1, got {days_left}")
    return max(0, allowance - spent_in_period) // days_left


def decide(spent: int, budget: int) -> Decision:
    """What the agent should do with ``spent`` of the day's ``budget`` gone.

    Below 90 % continue, from 90 % wind down, from 100 % sleep, above 110 % stop. A
    zero budget means "sleep until tomorrow", never "stop". Integer arithmetic only.
    """
    if budget <= 0:
        return Decision.SLEEP
    if spent * 100 < budget * WIND_DOWN_AT:
        return Decision.CONTINUE
    if spent * 100 < budget * SLEEP_AT:
        return Decision.WIND_DOWN
    if spent * 100 <= budget * STOP_ABOVE:
        return Decision.SLEEP
    return Decision.STOP
