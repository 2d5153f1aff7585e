"""Budget arithmetic: pure functions of money and time, no I/O (DESIGN.md §6)."""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime, time, timedelta
from typing import Final, NamedTuple

from app.domain import Decision, InvalidInput

#: Days a period is divided into when the subscription's renewal date is unknown.
DEFAULT_PERIOD_DAYS: Final = 30
#: The largest amount of money PostgreSQL's BIGINT holds; budgets saturate here.
MAX_MICRODOLLARS: Final = 2**63 - 1

# Decision thresholds in percent of the day's budget.
WIND_DOWN_AT: Final = 90
SLEEP_AT: Final = 100
STOP_ABOVE: Final = 110


def aware(moment: datetime, field: str = "now") -> datetime:
    """``moment`` if it is timezone-aware; a naive time is ambiguous and refused."""
    if not isinstance(moment, datetime):
        raise InvalidInput(f"{field} must be a datetime, not {type(moment).__name__}", field=field)
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidInput(f"{field} must be timezone-aware, got naive {moment}", field=field)
    return moment


def budget_day(moment: datetime) -> date:
    """The UTC calendar date ``moment`` falls on: the budget day it is charged to."""
    return aware(moment).astimezone(UTC).date()


def day_start(day: date) -> datetime:
    """00:00 UTC of ``day``."""
    return datetime.combine(day, time(0), tzinfo=UTC)


def next_budget_day_start(moment: datetime) -> datetime:
    """The first 00:00 UTC strictly after ``moment``: when a sleeper wakes."""
    return day_start(budget_day(moment) + timedelta(days=1))


def _as_date(value: datetime | date) -> date:
    return budget_day(value) if isinstance(value, datetime) else value


def add_months(day: date, months: int) -> date:
    """``day`` moved by whole calendar months, the day clamped (Mar 31 - 1 -> Feb 28/29)."""
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    last = calendar.monthrange(year, month + 1)[1]
    return date(year, month + 1, min(day.day, last))


class Period(NamedTuple):
    """A billing period: ``start`` is an anniversary of the renewal date, ``end`` the next
    one (exclusive), so ``end`` is the day the following period begins."""

    start: date
    end: date

    @property
    def days(self) -> int:
        return (self.end - self.start).days


def anniversary(renewal: datetime | date, months: int) -> date:
    """The renewal date moved by ``months`` whole months, clamped to the month's end.

    Always counted from the stored date itself, so an anchor of Jan 31 gives Feb 28
    and then Mar 31: the period start never drifts after a short month.
    """
    return add_months(_as_date(renewal), months)


def period_containing(day: date, renewal: datetime | date) -> Period:
    """The billing period holding ``day``: from the latest anniversary on or before it up
    to, not including, the next one. The renewal day opens a new period, and a renewal
    date in the past or far ahead needs no special case."""
    anchor = _as_date(renewal)
    # The anniversary in day's own month; one month earlier if it falls after ``day``.
    months = (day.year * 12 + day.month) - (anchor.year * 12 + anchor.month)
    start = add_months(anchor, months)
    if start > day:
        months -= 1
        start = add_months(anchor, months)
    return Period(start, add_months(anchor, months + 1))


def days_until_renewal(day: date, renewal: datetime | date | None) -> int:
    """Days the remaining budget is spread over: from ``day`` to the next anniversary after
    it (at least 1; the whole period on the renewal day), or 30 when renewal is unknown."""
    if renewal is None:
        return DEFAULT_PERIOD_DAYS
    return (period_containing(day, renewal).end - day).days


def period_start(day: date, renewal: datetime | date) -> date:
    """First day of the billing period that holds ``day``."""
    return period_containing(day, renewal).start


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


def within_cap(total: int, budget: int) -> bool:
    """Whether ``total`` (the day's spend plus every open reservation) stays within 110 %
    of ``budget``: what a reservation may book up to (DESIGN.md §6b). A zero budget
    admits nothing but zero."""
    return total * 100 <= budget * STOP_ABOVE
