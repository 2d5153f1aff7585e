"""Bounded exponential backoff for processes whose PostgreSQL or Redis went away."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

log = logging.getLogger("app.workers")


class Backoff:
    """``base * 2**n`` seconds with jitter, capped at ``maximum``; ``reset()`` on success."""

    def __init__(self, *, base: float = 0.2, maximum: float = 30.0) -> None:
        self.base = base
        self.maximum = maximum
        self.failures = 0

    def next_delay(self) -> float:
        self.failures += 1
        delay: float = min(self.maximum, self.base * 2.0 ** (self.failures - 1))
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.failures = 0


async def wait_or_stop(stop: asyncio.Event, seconds: float, *others: asyncio.Event) -> None:
    """Sleep ``seconds``, returning early when ``stop`` (or any of ``others``) is set."""
    events = [stop, *others]
    if any(e.is_set() for e in events):
        return
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


async def tick_forever(
    stop: asyncio.Event,
    tick: Callable[[], Awaitable[float]],
    *,
    name: str,
    backoff_max: float,
    wake: asyncio.Event | None = None,
) -> None:
    """Run ``tick`` until ``stop``, waiting the delay it returns (or until ``wake``) in
    between; a tick that raises is retried with a bounded exponential backoff."""
    backoff = Backoff(maximum=backoff_max)
    while not stop.is_set():
        if wake is not None:
            wake.clear()
        try:
            delay = await tick()
            backoff.reset()
        except Exception as exc:
            delay = backoff.next_delay()
            # The first line says what went wrong; SQLAlchemy appends the statement.
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.warning("%s_error retry_in=%.2fs error=%r", name, delay, first)
        await wait_or_stop(stop, delay, *([wake] if wake is not None else []))
