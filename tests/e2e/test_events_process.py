"""``python -m app events`` as a real process: SIGKILLed while deliveries are in flight
and started again, it still delivers every event, with a valid signature."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.engine import create_session_factory
from app.db.models import AgentEvent
from app.domain import EventType
from app.lifecycle import emit
from app.repositories import NewEvent
from tests.e2e.conftest import base_env
from tests.integration.helpers import eventually
from tests.webhook_server import WebhookServer

SECRET = "whsec-e2e"
EVENTS = 300


async def test_a_killed_deliverer_loses_nothing(
    e2e_db: tuple[str, AsyncEngine], redis_url: str, spawn: Callable[..., Any]
) -> None:
    url, engine = e2e_db
    factory = create_session_factory(engine)
    async with factory.begin() as s:
        await emit(
            s,
            *(
                NewEvent(EventType.THRESHOLD, f"k-{i}", {"n": i}, clerk_user_id=f"u-{i % 7}")
                for i in range(EVENTS)
            ),
        )
    async with factory() as s:
        expected = {str(e) for e in await s.scalars(select(AgentEvent.event_id))}
    server = WebhookServer(SECRET, fail_every=5, drop_every=11, hold_after=120).start()
    env = base_env(
        DATABASE_URL=url,
        REDIS_URL=redis_url,
        WEBHOOK_URL=server.url,
        WEBHOOK_SECRET=SECRET,
        WEBHOOK_TIMEOUT_SECONDS="5",
        WEBHOOK_LEASE_SECONDS="6",
        WEBHOOK_BACKOFF_BASE_SECONDS="0.05",
        WEBHOOK_BACKOFF_MAX_SECONDS="0.5",
        WEBHOOK_BATCH_SIZE="10",
        EVENTS_POLL_INTERVAL="0.1",
    )

    async def undelivered() -> int:
        async with factory() as s:
            return int(
                await s.scalar(
                    select(func.count())
                    .select_from(AgentEvent)
                    .where(AgentEvent.delivered_at.is_(None))
                )
                or 0
            )

    try:
        first = spawn(["events"], env)
        first.wait_for_output("events started")

        async def in_flight() -> bool:
            return server.holding > 0

        # The receiver stops answering after 120 requests: the deliverer has a batch in
        # flight, claimed but not marked delivered, when it is killed.
        await eventually(in_flight)
        first.popen.kill()
        first.popen.wait(30)
        assert await undelivered() > 0
        server.release()

        second = spawn(["events"], env)

        async def all_delivered() -> bool:
            return await undelivered() == 0

        await eventually(all_delivered, within=120)
        second.popen.terminate()
        assert second.popen.wait(30) == 0
    finally:
        server.stop()
    assert expected <= server.delivered_ids()
    received = server.snapshot()
    assert all(r.signature_valid for r in received)
    assert {r.body["data"]["n"] for r in received if r.answered == 204} == set(range(EVENTS))


async def test_the_daemon_delivers_events_when_a_webhook_is_set(
    e2e_db: tuple[str, AsyncEngine], redis_url: str, key_prefix: str, spawn: Callable[..., Any]
) -> None:
    url, engine = e2e_db
    factory = create_session_factory(engine)
    async with factory.begin() as s:
        await emit(s, NewEvent(EventType.TOPPED_UP, "k-daemon", {"amount_microdollars": 1}))
    server = WebhookServer(SECRET, fail_every=2, drop_every=0).start()
    try:
        daemon = spawn(
            ["daemon"],
            base_env(
                DATABASE_URL=url,
                REDIS_URL=redis_url,
                REDIS_PREFIX=key_prefix,
                WEBHOOK_URL=server.url,
                WEBHOOK_SECRET=SECRET,
                WEBHOOK_BACKOFF_BASE_SECONDS="0.05",
                EVENTS_POLL_INTERVAL="0.1",
            ),
        )

        async def delivered() -> bool:
            return len(server.delivered_ids()) == 1

        await eventually(delivered)
        daemon.popen.terminate()
        assert daemon.popen.wait(30) == 0
    finally:
        server.stop()
    [received] = [r for r in server.snapshot() if r.answered == 204]
    assert received.signature_valid
    assert received.body["type"] == "budget.topped_up"
    assert received.body["data"]["amount_microdollars"] == 1
