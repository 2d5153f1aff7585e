"""Clocks: the real UTC clock, and a virtual one that crosses midnight in milliseconds."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

from app.domain import InvalidInput

#: What workers and lifecycle functions take: a callable returning an aware datetime.
Clock = Callable[[], datetime]


@runtime_checkable
class PacedClock(Protocol):
    """A clock whose time may run at another pace than real time (:class:`VirtualClock`):
    it says how long a stretch of its time takes in real seconds."""

    def __call__(self) -> datetime: ...

    def real_seconds(self, virtual: timedelta) -> float: ...


def real_seconds_until(clock: Clock, moment: datetime) -> float:
    """Real seconds to wait until ``moment`` on ``clock`` (zero when it has passed)."""
    delta = moment - clock()
    if isinstance(clock, PacedClock):
        return clock.real_seconds(delta)
    return max(0.0, delta.total_seconds())


def utc_now() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


class VirtualClock:
    """Simulated time: starts at ``start`` and runs ``speed`` times faster than real time.

    ``advance()`` jumps ahead; the clock never goes backwards.
    """

    def __init__(self, start: datetime, *, speed: float = 1.0) -> None:
        if start.tzinfo is None or start.utcoffset() is None:
            raise InvalidInput(f"start must be timezone-aware, got naive {start}", field="start")
        self._origin = start
        self._real_origin = time.monotonic()
        self._offset = timedelta(0)
        self.speed = speed

    def __call__(self) -> datetime:
        elapsed = (time.monotonic() - self._real_origin) * self.speed
        return self._origin + self._offset + timedelta(seconds=elapsed)

    def advance(self, delta: timedelta) -> datetime:
        """Jump ``delta`` ahead and return the new time."""
        if delta < timedelta(0):
            raise ValueError("a clock does not go backwards")
        self._offset += delta
        return self()

    def real_seconds(self, virtual: timedelta) -> float:
        """How long ``virtual`` takes on this clock, in real seconds."""
        return max(0.0, virtual.total_seconds() / self.speed) if self.speed > 0 else float("inf")
