"""EventDeliverer: POSTs the outbox's events to ``WEBHOOK_URL`` as signed JSON, at
least once, with capped exponential backoff (DESIGN.md §8). It runs in the daemon and
as its own process (``python -m app events``); any number may run at once."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import orjson
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.lifecycle import (
    ClaimedEvent,
    Runtime,
    claim_events,
    event_failed,
    events_delivered,
    events_pending,
)
from app.session_store import RedisSessionStore
from app.settings import Settings, mask_secrets, mask_url
from app.webhooks import EVENT_TYPE_HEADER, secret_keys, sign
from app.workers import metrics
from app.workers.backoff import tick_forever

log = logging.getLogger("app.events")

USER_AGENT = "agent-sleepwake-webhooks/1"


@dataclass
class DeliveryReport:
    """What one ``run_once`` did."""

    delivered: int = 0
    failed: int = 0
    batches: int = 0


class EventDeliverer:
    """Claims due events in batches (``SKIP LOCKED`` with a lease), POSTs them
    concurrently, marks the 2xx ones delivered and reschedules the others."""

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        store: RedisSessionStore,
        settings: Settings,
        *,
        client: httpx.AsyncClient | None = None,
        batch_size: int | None = None,
        timestamp: Callable[[], float] = time.time,
    ) -> None:
        if not settings.webhook_url:
            raise ValueError("WEBHOOK_URL is not set: there is nowhere to deliver events")
        if not settings.webhook_secret:
            raise ValueError("WEBHOOK_SECRET is not set: receivers could not verify events")
        self.rt = Runtime(session_factory, store, settings)
        self.settings = settings
        self.url = settings.webhook_url
        self.secret = settings.webhook_secret
        secret_keys(self.secret)  # a whsec_ secret that is not base64 fails here, named
        self.secrets = settings.secrets()
        #: The URL as logs and errors show it: no credentials, no query tokens.
        self.shown_url = mask_url(settings.webhook_url, every_query_value=True)
        self.batch_size = batch_size or settings.webhook_batch_size
        self.timestamp = timestamp
        self._client = client
        self._failing = False

    async def _post(self, client: httpx.AsyncClient, event: ClaimedEvent) -> str | None:
        """POST one event; None on a 2xx answer, otherwise what went wrong."""
        body = orjson.dumps(event.body())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            EVENT_TYPE_HEADER: event.type,
            **sign(self.secret, event.event_id, int(self.timestamp()), body),
        }
        deadline = self.settings.webhook_timeout_seconds
        try:
            # One deadline for the whole attempt, connect to the last byte of the answer:
            # httpx's timeouts are per read, so a receiver trickling one byte a second
            # would hold the attempt (and its batch) for as long as it liked.
            async with asyncio.timeout(deadline):
                async with client.stream(
                    "POST", self.url, content=body, headers=headers
                ) as response:
                    await response.aread()
        except TimeoutError:
            return f"no complete answer within WEBHOOK_TIMEOUT_SECONDS={deadline:g}"
        except httpx.HTTPError as exc:
            return mask_secrets(f"{type(exc).__name__}: {exc}", self.secrets)
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}"

    async def run_once(self) -> DeliveryReport:
        """Deliver every event that is due now, batch by batch; returns the counts."""
        report = DeliveryReport()
        client = self._client or httpx.AsyncClient(timeout=self.settings.webhook_timeout_seconds)
        try:
            while True:
                started = time.perf_counter()
                batch = await claim_events(self.rt, limit=self.batch_size)
                if not batch:
                    break
                report.batches += 1
                posts = {asyncio.ensure_future(self._post(client, event)): event for event in batch}
                # Settle answers as they come: a slow receiver of one event holds none of
                # the others (their delivery is recorded while it is still trickling).
                try:
                    while posts:
                        finished, _ = await asyncio.wait(posts, return_when=asyncio.FIRST_COMPLETED)
                        await self._settle([(posts.pop(t), t.result()) for t in finished], report)
                finally:
                    for post in posts:  # stopped midway: the lease makes them due again
                        post.cancel()
                metrics.BATCH_SECONDS.labels("events").observe(time.perf_counter() - started)
                if len(batch) < self.batch_size:
                    break
        finally:
            if self._client is None:
                await client.aclose()
        return report

    async def _settle(
        self, outcomes: list[tuple[ClaimedEvent, str | None]], report: DeliveryReport
    ) -> None:
        """Record answered attempts: the 2xx ones delivered, the others due after backoff."""
        done = [event.id for event, error in outcomes if error is None]
        await events_delivered(self.rt, done)
        for event, error in outcomes:
            if error is not None:
                delay = await event_failed(self.rt, event, error)
                log.warning(
                    "webhook_failed event=%s type=%s attempt=%d retry_in=%.0fs error=%r",
                    event.event_id, event.type, event.attempts, delay.total_seconds(), error,
                )  # fmt: skip
        report.delivered += len(done)
        report.failed += len(outcomes) - len(done)
        metrics.WEBHOOK_DELIVERIES.labels("delivered").inc(len(done))
        metrics.WEBHOOK_DELIVERIES.labels("failed").inc(len(outcomes) - len(done))

    async def tick(self) -> float:
        """One pass and the gauges; returns the seconds to wait before the next."""
        started = time.perf_counter()
        report = await self.run_once()
        if report.batches == 0:
            metrics.BATCH_SECONDS.labels("events").observe(time.perf_counter() - started)
        pending, oldest, next_in = await events_pending(self.rt)
        metrics.EVENTS_PENDING.set(pending)
        metrics.EVENTS_OLDEST_PENDING.set(oldest)
        if report.failed and not self._failing:
            log.error("webhook_failing url=%s pending=%d", self.shown_url, pending)
        self._failing = report.failed > 0 and report.delivered == 0
        interval = self.settings.events_poll_interval
        return interval if next_in is None else max(0.01, min(interval, next_in))

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop``; database errors back off and retry."""
        log.info("events started url=%s", self.shown_url)
        await tick_forever(
            stop, self.tick, name="events", backoff_max=self.settings.backoff_max_seconds
        )
