"""How long a process waits for a moment, on a real or a virtual clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.clock import PacedClock, VirtualClock, real_seconds_until
from app.domain import InvalidInput

MOMENT = datetime(2031, 1, 1, tzinfo=UTC)


def test_a_plain_callable_waits_in_its_own_seconds() -> None:
    def clock() -> datetime:
        return MOMENT - timedelta(minutes=2)

    assert not isinstance(clock, PacedClock)
    assert real_seconds_until(clock, MOMENT) == 120.0
    assert real_seconds_until(clock, MOMENT - timedelta(hours=1)) == 0.0  # passed


def test_a_virtual_clock_waits_in_real_seconds() -> None:
    clock = VirtualClock(MOMENT - timedelta(hours=10), speed=3600.0)
    assert isinstance(clock, PacedClock)
    # Ten virtual hours at 3600x are ten real seconds, less what has already run.
    assert 9.0 < real_seconds_until(clock, MOMENT) <= 10.0
    assert real_seconds_until(clock, MOMENT - timedelta(days=1)) == 0.0


def test_a_virtual_clock_needs_an_aware_start() -> None:
    with pytest.raises(InvalidInput, match="start"):
        VirtualClock(datetime(2031, 1, 1))
