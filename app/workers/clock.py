"""Clocks for the processes (they live in ``app.clock`` so the use cases can share them)."""

from app.clock import Clock, VirtualClock, utc_now

__all__ = ["Clock", "VirtualClock", "utc_now"]
