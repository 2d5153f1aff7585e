"""BudgetDaemon: the safety net that sleeps and stops sessions that missed their decision,
the pass that reconciles the Redis mirror from PostgreSQL, and retention of finished
sessions' checkpoints."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.budget import policy
from app.clock import Clock, real_seconds_until, utc_now
from app.domain import SessionStatus, SessionStoreUnavailable
from app.lifecycle import Runtime, enforce_budgets, gauges, purge_finished, reconcile_store
from app.session_store import RedisSessionStore
from app.settings import Settings
from app.workers import metrics
from app.workers.backoff import tick_forever

log = logging.getLogger("app.daemon")


@dataclass
class DaemonReport:
    """What one ``run_once`` did and saw."""

    slept: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    by_status: dict[SessionStatus, int] = field(default_factory=dict)
    due: int = 0
    parked: int = 0
    wake_lag_seconds: float = 0.0
    reconciled: int = 0
    store_errors: int = 0
    #: Completed sessions whose checkpoints retention deleted in this pass.
    purged: int = 0


class BudgetDaemon:
    """Each tick, and again just after each UTC midnight: stop sessions above 110 % of
    the day's budget, put to sleep working sessions of users at or over it that have
    been silent longer than the grace period, rewrite the Redis keys that changed, and
    publish gauges. Run any number."""

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
        done = await enforce_budgets(self.rt, limit=self.batch_size)
        report.stopped = [row.id for row in done.stopped]
        report.slept = [row.id for row in done.slept]
        metrics.STOPS.inc(len(report.stopped))
        metrics.SLEEPS.labels("daemon").inc(len(report.slept))
        try:
            report.reconciled = await reconcile_store(self.rt)
        except SessionStoreUnavailable as exc:
            report.store_errors += 1
            metrics.STORE_ERRORS.inc()
            log.warning("store_error reconcile error=%r", str(exc))
        metrics.RECONCILED.inc(report.reconciled)
        await self._retention(report)
        await self._gauges(report)
        metrics.BATCH_SECONDS.labels("daemon").observe(time.perf_counter() - started)
        return report

    async def _retention(self, report: DaemonReport) -> None:
        # One bounded batch per pass (RETENTION_BATCH sessions): a backlog drains over
        # a few ticks instead of holding up the safety net.
        # With Redis down the checkpoints still go (committed); the keys expire.
        purged = await purge_finished(
            self.rt, batch=self.settings.retention_batch, most=self.settings.retention_batch
        )
        report.store_errors += purged.store_errors
        metrics.STORE_ERRORS.inc(purged.store_errors)
        report.purged = len(purged.session_ids)
        metrics.PURGED.inc(report.purged)

    async def _gauges(self, report: DaemonReport) -> None:
        now = self.clock()
        counted = await gauges(self.rt, now=now)
        report.by_status, report.due, report.parked = counted.by_status, counted.due, counted.parked
        oldest = counted.oldest_due
        report.wake_lag_seconds = (now - oldest).total_seconds() if oldest else 0.0
        for status, n in report.by_status.items():
            metrics.SESSIONS.labels(status.value).set(n)
        metrics.DUE.set(report.due)
        metrics.PARKED.set(report.parked)
        metrics.WAKE_LAG.set(report.wake_lag_seconds)

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Tick every ``daemon_interval`` and just after each UTC midnight until ``stop``."""

        async def tick() -> float:
            report = await self.run_once()
            if report.slept or report.stopped:
                log.info(
                    "daemon_tick slept=%d stopped=%d due=%d wake_lag=%.1fs",
                    len(report.slept), len(report.stopped), report.due,
                    report.wake_lag_seconds,
                )  # fmt: skip
            midnight = policy.next_budget_day_start(self.clock())
            return min(
                self.settings.daemon_interval, real_seconds_until(self.clock, midnight) + 0.001
            )

        await tick_forever(stop, tick, name="daemon", backoff_max=self.settings.backoff_max_seconds)
