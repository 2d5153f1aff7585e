"""WakeWorker: restores sleeping sessions whose wake time has come (BDGT-03, BDGT-04)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.clock import Clock, utc_now
from app.lifecycle import RestoredSession, Runtime, log_wake, repair_keys, wake_many, write_keys
from app.repositories import WAKE_CHANNEL, SessionRepository
from app.session_store import RedisSessionStore
from app.settings import Settings
from app.workers import metrics
from app.workers.backoff import Backoff, wait_or_stop

log = logging.getLogger("app.worker")

ResumeHook = Callable[[RestoredSession], Awaitable[Any] | Any]


@dataclass
class WakeReport:
    """What one ``run_once`` did."""

    claimed: int = 0
    woken: int = 0
    failed: int = 0
    store_errors: int = 0
    resume_errors: int = 0
    batches: int = 0


def real_seconds_until(clock: Clock, moment: datetime) -> float:
    """Real seconds until ``moment`` on ``clock`` (a virtual clock may run faster)."""
    delta = moment - clock()
    convert = getattr(clock, "real_seconds", None)
    return float(convert(delta)) if convert else max(0.0, delta.total_seconds())


class WakeWorker:
    """Claims due sleepers in batches (``SKIP LOCKED``), wakes a batch in one transaction
    (a session that cannot be restored stays asleep without aborting the others), then
    rewrites the Redis keys and hands each session to ``on_resume``. Run any number."""

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        store: RedisSessionStore,
        settings: Settings,
        *,
        clock: Clock = utc_now,
        on_resume: ResumeHook | None = None,
        batch_size: int = 100,
    ) -> None:
        self.rt = Runtime(session_factory, store, settings, clock)
        self.settings = settings
        self.clock = clock
        self.on_resume = on_resume
        self.batch_size = batch_size
        self._notified = asyncio.Event()

    # ---------------------------------------------------------------- one pass

    async def run_once(self, stop: asyncio.Event | None = None) -> WakeReport:
        """Wake every session that is due now, batch by batch, and return the counts."""
        report = WakeReport()
        if self.rt.pending_keys:
            await repair_keys(self.rt)
        failed: set[str] = set()
        while stop is None or not stop.is_set():
            started = time.perf_counter()
            woken = await self._wake_batch(report, failed)
            metrics.BATCH_SECONDS.labels("worker").observe(time.perf_counter() - started)
            if not woken:
                break  # nothing due, or only failures: those are retried on the next tick
            for restored in woken:
                await self._after_commit(restored, report)
        return report

    async def _wake_batch(self, report: WakeReport, failed: set[str]) -> list[RestoredSession]:
        async with self.rt.session_factory() as s, s.begin():
            claimed = await SessionRepository(s).claim_due_for_wake(
                now=self.clock(), limit=self.batch_size, exclude=failed
            )
            if not claimed:
                return []
            report.batches += 1
            report.claimed += len(claimed)
            woken, failures = await wake_many(self.rt, s, claimed)
        for session_id, exc in failures.items():
            # Left asleep and due: retried on the next tick, not in this pass.
            report.failed += 1
            failed.add(session_id)
            metrics.WAKE_FAILURES.inc()
            log.error("wake_failed session=%s error=%r", session_id, str(exc))
        if woken and not await write_keys(self.rt, [(r.session, r.checkpoint) for r in woken]):
            report.store_errors += len(woken)
            metrics.STORE_ERRORS.inc(len(woken))
        return woken

    async def _after_commit(self, restored: RestoredSession, report: WakeReport) -> None:
        report.woken += 1
        metrics.WAKES.labels("due").inc()
        log_wake(restored, "due")
        if self.on_resume is None:
            return
        try:
            result = self.on_resume(restored)
            if inspect.isawaitable(result):
                await result
        except Exception:
            report.resume_errors += 1
            log.exception("resume_hook_failed session=%s", restored.session.id)

    # ----------------------------------------------------------------- forever

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Tick until ``stop`` is set, then finish the current batch and return.

        Between ticks it sleeps for the poll interval, or until the next sleeper is
        due, or until a ``request_wake`` NOTIFY arrives, whichever comes first.
        """
        listener = asyncio.create_task(self._listen(stop))
        backoff = Backoff(maximum=self.settings.backoff_max_seconds)
        try:
            while not stop.is_set():
                self._notified.clear()
                try:
                    report = await self.run_once(stop)
                    if report.claimed:
                        log.info(
                            "worker_tick claimed=%d woken=%d failed=%d store_errors=%d",
                            report.claimed, report.woken, report.failed, report.store_errors,
                        )  # fmt: skip
                    delay = await self._idle_delay()
                    backoff.reset()
                except Exception as exc:
                    delay = backoff.next_delay()
                    log.warning("worker_error retry_in=%.2fs error=%r", delay, str(exc))
                await wait_or_stop(stop, delay, self._notified)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    async def _idle_delay(self) -> float:
        async with self.rt.session_factory() as s:
            earliest = await SessionRepository(s).next_wake_at()
        poll = self.settings.wake_poll_interval
        if earliest is None:
            return poll
        return min(poll, real_seconds_until(self.clock, earliest) + 0.001)

    async def _listen(self, stop: asyncio.Event) -> None:
        """LISTEN on the wake channel over a dedicated connection; reconnect on loss."""
        engine: AsyncEngine = self.rt.session_factory.kw["bind"]
        backoff = Backoff(maximum=self.settings.backoff_max_seconds)
        while not stop.is_set():
            try:
                async with engine.connect() as conn:
                    raw = (await conn.get_raw_connection()).driver_connection
                    assert raw is not None
                    await raw.add_listener(WAKE_CHANNEL, self._on_notify)
                    backoff.reset()
                    log.info("listening channel=%s", WAKE_CHANNEL)
                    while not stop.is_set() and not raw.is_closed():
                        await wait_or_stop(stop, 1.0)
                    if not raw.is_closed():
                        await raw.remove_listener(WAKE_CHANNEL, self._on_notify)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = backoff.next_delay()
                log.warning("listen_error retry_in=%.2fs error=%r", delay, str(exc))
                await wait_or_stop(stop, delay)

    def _on_notify(self, *_: object) -> None:
        self._notified.set()
