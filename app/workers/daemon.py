"""BudgetDaemon: the safety net that sleeps and stops sessions that missed their decision."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.budget import policy
from app.clock import Clock, utc_now
from app.db.models import AgentSession
from app.domain import SessionStatus
from app.lifecycle import Runtime, repair_keys, write_key
from app.repositories import SessionRepository
from app.session_store import RedisSessionStore
from app.settings import Settings
from app.workers import metrics
from app.workers.backoff import Backoff, wait_or_stop
from app.workers.wake import real_seconds_until

log = logging.getLogger("app.daemon")


@dataclass
class DaemonReport:
    """What one ``run_once`` did and saw."""

    slept: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    by_status: dict[SessionStatus, int] = field(default_factory=dict)
    due: int = 0
    wake_lag_seconds: float = 0.0
    store_errors: int = 0


class BudgetDaemon:
    """Each tick, and again just after each UTC midnight: stop sessions above 110 % of
    the day's budget, put to sleep working sessions of users at or over it that have
    been silent longer than the grace period, and publish gauges. Run any number."""

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        store: RedisSessionStore,
        settings: Settings,
        *,
        clock: Clock = utc_now,
        batch_size: int = 100,
    ) -> None:
        self.rt = Runtime(session_factory, store, settings, clock)
        self.settings = settings
        self.clock = clock
        self.batch_size = batch_size

    async def run_once(self) -> DaemonReport:
        """One pass over today's over-budget users; returns what it did."""
        started = time.perf_counter()
        report = DaemonReport()
        if self.rt.pending_keys:
            await repair_keys(self.rt)
        now = self.clock()
        today = policy.budget_day(now)
        changed: list[AgentSession] = []
        while True:
            if policy.budget_day(self.clock()) != today:
                break  # the day ended during the pass: never act on it (the next tick won't)
            async with self.rt.session_factory.begin() as s:
                repo = SessionRepository(s)
                stopped = await repo.stop_over_budget(day=today, limit=self.batch_size)
                slept = await repo.sleep_over_budget(
                    day=today,
                    silent_for=timedelta(seconds=self.settings.sleep_grace_seconds),
                    wake_at=policy.next_budget_day_start(now),
                    limit=self.batch_size,
                )
            for row in stopped:
                log.info("stop session=%s reason=%r by=daemon", row.id, "over 110% of daily budget")
                metrics.STOPS.inc()
                report.stopped.append(row.id)
            for row in slept:
                log.info(
                    "sleep session=%s reason=%r wake_at=%s by=daemon",
                    row.id, "daily budget spent, agent silent", row.wake_at,
                )  # fmt: skip
                metrics.SLEEPS.labels("daemon").inc()
                report.slept.append(row.id)
            changed += [*stopped, *slept]
            if len(stopped) < self.batch_size and len(slept) < self.batch_size:
                break
        for row in changed:
            if not await write_key(self.rt, row):
                report.store_errors += 1
                metrics.STORE_ERRORS.inc()
        await self._gauges(report)
        metrics.BATCH_SECONDS.labels("daemon").observe(time.perf_counter() - started)
        return report

    async def _gauges(self, report: DaemonReport) -> None:
        now = self.clock()
        async with self.rt.session_factory() as s:
            repo = SessionRepository(s)
            report.by_status = await repo.count_by_status()
            report.due, oldest = await repo.due_stats(now=now)
        report.wake_lag_seconds = (now - oldest).total_seconds() if oldest else 0.0
        for status, n in report.by_status.items():
            metrics.SESSIONS.labels(status.value).set(n)
        metrics.DUE.set(report.due)
        metrics.WAKE_LAG.set(report.wake_lag_seconds)

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Tick every ``daemon_interval`` and just after each UTC midnight until ``stop``."""
        backoff = Backoff(maximum=self.settings.backoff_max_seconds)
        while not stop.is_set():
            try:
                report = await self.run_once()
                if report.slept or report.stopped:
                    log.info(
                        "daemon_tick slept=%d stopped=%d due=%d wake_lag=%.1fs",
                        len(report.slept), len(report.stopped), report.due,
                        report.wake_lag_seconds,
                    )  # fmt: skip
                backoff.reset()
                midnight = policy.next_budget_day_start(self.clock())
                delay = min(
                    self.settings.daemon_interval,
                    real_seconds_until(self.clock, midnight) + 0.001,
                )
            except Exception as exc:
                delay = backoff.next_delay()
                log.warning("daemon_error retry_in=%.2fs error=%r", delay, str(exc))
            await wait_or_stop(stop, delay)
