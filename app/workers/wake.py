"""WakeWorker: wakes sleeping sessions whose time has come and delivers their resumes
to the runner hook, at least once (BDGT-03, BDGT-04; DESIGN.md §8)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.pool import NullPool

from app.clock import Clock, real_seconds_until, utc_now
from app.db.engine import create_engine, normalize_url
from app.lifecycle import (
    WAKE_CHANNEL,
    RestoredSession,
    Runtime,
    acknowledge,
    deliver_due,
    delivery_failed,
    next_due,
    renew_leases,
    wake_due,
)
from app.session_store import RedisSessionStore
from app.settings import Settings
from app.workers import metrics
from app.workers.backoff import Backoff, tick_forever, wait_or_stop

log = logging.getLogger("app.worker")

#: A resume hook takes the restored session, and optionally the Runtime that delivered
#: it (``hook(restored)`` or ``hook(restored, rt)``), so that it never builds its own.
ResumeHook = (
    Callable[[RestoredSession], Awaitable[Any] | Any]
    | Callable[[RestoredSession, Runtime], Awaitable[Any] | Any]
)


def takes_runtime(hook: ResumeHook) -> bool:
    """Whether ``hook`` takes a second positional argument (the Runtime)."""
    try:
        params = list(inspect.signature(hook).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: one argument
        return False
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return True
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(p.kind in positional for p in params) >= 2


@dataclass
class WakeReport:
    """What one ``run_once`` did."""

    claimed: int = 0
    woken: int = 0
    failed: int = 0
    delivered: int = 0
    acknowledged: int = 0
    resume_errors: int = 0
    parked: int = 0
    orphans: int = 0
    store_errors: int = 0
    batches: int = 0


class _Dispatcher:
    """Runs resume hooks, at most ``concurrency`` at once, while renewing the leases of
    every delivery it holds; acknowledges those whose hook returned, in batches."""

    def __init__(self, rt: Runtime, hook: ResumeHook, concurrency: int) -> None:
        self.rt = rt
        self.hook = hook
        self.args: tuple[Any, ...] = (rt,) if takes_runtime(hook) else ()
        self.concurrency = concurrency
        self.slots = asyncio.Semaphore(concurrency)
        # Plain-function hooks get threads of their own, as many as there are slots.
        self.threads = ThreadPoolExecutor(concurrency, thread_name_prefix="resume-hook")
        self._freed = asyncio.Event()
        # Token -> session id of the deliveries not yet done. Keyed by token: after a
        # forced redelivery this worker may run the fenced delivery and the new one of
        # the same session at once, and the old one's end must not drop the new one.
        self.held: dict[str, str] = {}
        self.pending = 0  # deliveries whose hook has not finished: running or queued
        self.tasks: set[asyncio.Task[None]] = set()
        self.report = WakeReport()
        self._to_ack: dict[str, str] = {}
        self._ack_wanted = asyncio.Event()
        self._background: list[asyncio.Task[None]] = []

    def start(self, deliveries: Iterable[RestoredSession]) -> None:
        if not self._background:
            self._background = [
                asyncio.create_task(self._acknowledger()),
                asyncio.create_task(self._renewer()),
            ]
        for restored in deliveries:
            self.held[restored.resume_token] = restored.session.id
            self.pending += 1
            task = asyncio.create_task(self._deliver(restored))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _deliver(self, restored: RestoredSession) -> None:
        try:
            await self._run_hook(restored)
        finally:
            self.pending -= 1
            self._freed.set()

    async def _run_hook(self, restored: RestoredSession) -> None:
        async with self.slots:
            self.report.delivered += 1
            metrics.HOOKS_RUNNING.inc()
            try:
                hook = cast(Callable[..., Any], self.hook)
                if inspect.iscoroutinefunction(hook):
                    await hook(restored, *self.args)
                else:
                    # A plain function may block: it runs in a thread, so leases are
                    # still renewed and other hooks still run meanwhile.
                    loop = asyncio.get_running_loop()
                    result = await loop.run_in_executor(self.threads, hook, restored, *self.args)
                    if inspect.isawaitable(result):
                        await result
            except Exception as exc:
                self.report.resume_errors += 1
                metrics.RESUMES.labels("failed").inc()
                with contextlib.suppress(Exception):  # the lease runs out: delivered again
                    await delivery_failed(self.rt, restored, exc)
                self._release(restored.resume_token)
                return
            finally:
                metrics.HOOKS_RUNNING.dec()
        self._to_ack[restored.resume_token] = restored.session.id
        self._ack_wanted.set()

    async def _acknowledger(self) -> None:
        # One acknowledgement transaction at a time, for whatever returned meanwhile.
        while True:
            await self._ack_wanted.wait()
            self._ack_wanted.clear()
            batch, self._to_ack = self._to_ack, {}
            done = 0
            try:
                for tokens in _by_session(batch):
                    done += await acknowledge(self.rt, tokens)
            except Exception as exc:
                # Not acknowledged: held until the lease runs out, then delivered again.
                log.warning("ack_error sessions=%d error=%r", len(batch), str(exc))
            self.report.acknowledged += done
            metrics.RESUMES.labels("acknowledged").inc(done)
            for token in batch:
                self._release(token)

    def _release(self, token: str) -> None:
        self.held.pop(token, None)
        self._freed.set()

    def room(self) -> int:
        """How many more deliveries to take on now: enough to keep every slot busy,
        without hoarding what another worker could run sooner."""
        return max(0, 2 * self.concurrency - self.pending)

    async def wait_for_room(self) -> None:
        while not self.room():
            self._freed.clear()
            await self._freed.wait()

    async def _renewer(self) -> None:
        period = self.rt.settings.resume_lease_seconds / 3
        while True:
            await asyncio.sleep(period)
            if self.held:
                try:
                    # A session held twice (a fenced delivery and its successor): the
                    # one started last is the session's; the other renews nothing.
                    await renew_leases(self.rt, {sid: tok for tok, sid in self.held.items()})
                except Exception as exc:
                    log.warning("lease_renewal_error error=%r", str(exc))

    @property
    def busy(self) -> int:
        """Deliveries held: running, waiting for a slot, or waiting for their ack."""
        return len(self.held)

    async def drain(self) -> None:
        """Wait for every delivery held so far: its hook returned and was acknowledged,
        or raised and was rescheduled. (Bound it with ``asyncio.timeout``: what is
        abandoned is delivered again after its lease.)"""
        while self.held:
            self._freed.clear()
            await self._freed.wait()

    async def close(self) -> None:
        for task in [*self.tasks, *self._background]:
            task.cancel()
        await asyncio.gather(*self.tasks, *self._background, return_exceptions=True)
        self._background = []
        # A hook still blocking in its thread is abandoned (delivered again after its
        # lease); the process does not wait for it.
        self.threads.shutdown(wait=False, cancel_futures=True)


class WakeWorker:
    """Wakes due sleepers in batches (``SKIP LOCKED``; a session that cannot be restored
    stays asleep, retried with backoff, without holding up the others), then delivers
    every resume owed to ``on_resume``: its own wakes at once, and any delivery whose
    lease ran out (another worker died) or that a resume or top-up owes. Run any number.
    """

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
        if on_resume is None:
            log.warning(
                "worker started without a resume hook: every resume is acknowledged at once"
                " and no runner carries the session on (pass on_resume=, or --on-resume)"
            )
        self.on_resume: ResumeHook = on_resume or _acknowledge_only
        self.batch_size = batch_size
        self._notified = asyncio.Event()
        if settings.database_listen_url:
            normalize_url(settings.database_listen_url)  # a bad URL fails here, typed

    # ---------------------------------------------------------------- one pass

    async def _pass(self, dispatcher: _Dispatcher, stop: asyncio.Event | None) -> WakeReport:
        report = dispatcher.report
        while stop is None or not stop.is_set():
            await dispatcher.wait_for_room()
            limit = min(self.batch_size, dispatcher.room())
            started = time.perf_counter()
            woken = await wake_due(self.rt, limit=limit, lease=self.rt.lease)
            metrics.BATCH_SECONDS.labels("worker").observe(time.perf_counter() - started)
            report.claimed += woken.claimed
            report.woken += len(woken.woken)
            report.failed += len(woken.failed)
            if not woken.keys_written:
                report.store_errors += len(woken.woken)
                metrics.STORE_ERRORS.inc(len(woken.woken))
            report.batches += 1 if woken.claimed else 0
            metrics.WAKES.labels("due").inc(len(woken.woken))
            metrics.WAKE_FAILURES.inc(len(woken.failed))
            dispatcher.start(woken.woken)
            metrics.RESUME_ATTEMPTS.labels("first").inc(len(woken.woken))
            owed = await deliver_due(self.rt, limit=max(1, dispatcher.room()))
            report.parked += len(owed.parked)
            report.orphans += len(owed.orphans)
            metrics.PARKED_TOTAL.inc(len(owed.parked))
            metrics.RUNNERS_LOST.inc(len(owed.orphans))
            metrics.RESUMES.labels("unrestorable").inc(len(owed.unrestorable))
            dispatcher.start(owed.deliveries)
            metrics.RESUME_ATTEMPTS.labels("redelivery").inc(len(owed.deliveries))
            # A full batch may hide more; failures were deferred, so they are not
            # claimed again in this pass and cannot starve it.
            if woken.claimed < limit and not owed.deliveries:
                break
        return report

    async def run_once(self, stop: asyncio.Event | None = None) -> WakeReport:
        """Wake every session due now and deliver every resume owed now; returns after
        every hook it started has returned or raised (and was acknowledged)."""
        dispatcher = _Dispatcher(self.rt, self.on_resume, self.settings.resume_concurrency)
        try:
            report = await self._pass(dispatcher, stop)
            await dispatcher.drain()
        finally:
            await dispatcher.close()
        return report

    # ----------------------------------------------------------------- forever

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Tick until ``stop`` is set; then wait up to ``RESUME_GRACE_SECONDS`` for the
        hooks still running (what is abandoned is delivered again after its lease).

        Between ticks it sleeps for the poll interval, or until the next sleeper is
        due, or until a NOTIFY (a top-up, a resume) arrives, whichever comes first.
        Hooks run beside the ticks: a slow hook delays no other wake.
        """
        dispatcher = _Dispatcher(self.rt, self.on_resume, self.settings.resume_concurrency)
        listener = asyncio.create_task(self._listen(stop))

        async def tick() -> float:
            report = await self._pass(dispatcher, stop)
            if report.claimed or report.delivered:
                log.info(
                    "worker_tick claimed=%d woken=%d failed=%d delivered=%d acked=%d",
                    report.claimed, report.woken, report.failed, report.delivered,
                    report.acknowledged,
                )  # fmt: skip
            dispatcher.report = WakeReport()
            return await self._idle_delay()

        try:
            await tick_forever(
                stop,
                tick,
                name="worker",
                backoff_max=self.settings.backoff_max_seconds,
                wake=self._notified,
            )
            try:
                async with asyncio.timeout(self.settings.resume_grace_seconds):
                    await dispatcher.drain()
            except TimeoutError:
                log.warning(
                    "shutdown abandoning %d resume(s): delivered again after the lease",
                    dispatcher.busy,
                )
        finally:
            await dispatcher.close()
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    async def _idle_delay(self) -> float:
        # Two waits, each on its own clock: sleepers' wake_at is on the injected clock,
        # deliveries' due times on the database's.
        earliest_wake, next_delivery = await next_due(self.rt)
        delay = self.settings.wake_poll_interval
        if earliest_wake is not None:
            delay = min(delay, real_seconds_until(self.clock, earliest_wake) + 0.001)
        if next_delivery is not None:
            delay = min(delay, max(0.0, next_delivery) + 0.001)
        return delay

    def _listen_engine(self) -> tuple[AsyncEngine | None, bool]:
        """The engine to LISTEN on, and whether it is ours to dispose; None: poll only.

        LISTEN holds a server connection for as long as it listens, which a
        transaction-mode pooler cannot give: behind pgbouncer only a direct
        ``DATABASE_LISTEN_URL`` can listen."""
        if self.settings.database_listen_url:
            engine = create_engine(self.settings.database_listen_url, poolclass=NullPool)
            return engine, True
        if self.settings.database_pooler != "none":
            return None, False
        bound: AsyncEngine = self.rt.session_factory.kw["bind"]
        return bound, False

    async def _listen(self, stop: asyncio.Event) -> None:
        """LISTEN on the wake channel over a dedicated connection; reconnect on loss."""
        engine, owned = self._listen_engine()
        if engine is None:
            log.info(
                "not listening: DATABASE_POOLER=%s and no DATABASE_LISTEN_URL, polling every"
                " %gs (a top-up or resume waits up to that long)",
                self.settings.database_pooler,
                self.settings.wake_poll_interval,
            )
            return
        try:
            await self._listen_on(engine, stop)
        finally:
            if owned:
                await engine.dispose()

    async def _listen_on(self, engine: AsyncEngine, stop: asyncio.Event) -> None:
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


def _by_session(tokens: dict[str, str]) -> list[dict[str, str]]:
    """Token -> session id as session id -> token mappings, as few as can hold them
    (one, unless a session appears with two tokens)."""
    rounds: list[dict[str, str]] = []
    for token, session_id in tokens.items():
        free = next((r for r in rounds if session_id not in r), None)
        if free is None:
            free = {}
            rounds.append(free)
        free[session_id] = token
    return rounds


def _acknowledge_only(restored: RestoredSession) -> None:
    """Without a hook there is nobody to hand the session to: the delivery is done."""
    log.info("resume session=%s (no hook)", restored.session.id)
