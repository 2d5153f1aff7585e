"""Any accepted id works on every path (DESIGN.md §6c, issue 24): hypothesis drives ids
from the whole accepted range (1 to 255 characters, printable Unicode of every plane,
the system's own names) through start, a parked and redelivered resume, a charge past
110 %, a daemon pass, erasure and reuse, on real PostgreSQL and Redis."""

from __future__ import annotations

import os
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.models import AgentEvent
from app.domain import EventType, SessionNotFound, SessionStatus
from app.lifecycle import (
    Runtime,
    acknowledge,
    charge,
    delete_session,
    deliver_due,
    redeliver,
    session_state,
    start_session,
)
from app.session_store import RedisClient, RedisSessionStore
from app.validation import require_id
from app.workers import BudgetDaemon
from tests.fixtures import TABLES
from tests.integration.helpers import Factory
from tests.integration.money import ONE_PER_TOKEN
from tests.integration.test_seams_ids import NOW, make_settings
from tests.strategies import accepted_ids

FUZZ = settings(
    max_examples=int(os.environ.get("ID_FUZZ_EXAMPLES", "12")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


async def reset(engine: AsyncEngine, redis: RedisClient, store: RedisSessionStore) -> None:
    """Each example starts from nothing, as a test does."""
    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
    async for key in redis.scan_iter(match=f"{store.prefix}:*", count=500):
        await redis.delete(key)
    await redis.delete(store.own_key("reconciled-through"))


async def spend(rt: Runtime, session_id: str, request_id: str, microdollars: int) -> None:
    await charge(
        rt,
        session_id=session_id,
        request_id=request_id,
        model=ONE_PER_TOKEN,
        input_tokens=microdollars,
        output_tokens=0,
        now=NOW,
    )


async def stopped_events(factory: Factory) -> list[tuple[str | None, str | None]]:
    async with factory() as s:
        rows = await s.execute(
            select(AgentEvent.session_id, AgentEvent.clerk_user_id)
            .where(AgentEvent.type == EventType.STOPPED.value)
            .order_by(AgentEvent.id)
        )
        return [(sid, user) for sid, user in rows]


def test_every_generated_id_is_one_the_rule_accepts() -> None:
    @given(accepted_ids)
    def check(value: str) -> None:
        assert require_id(value, "session_id") == value

    check()


@FUZZ
@given(ids=st.lists(accepted_ids, min_size=7, max_size=7, unique=True))
async def test_any_accepted_id_goes_through_every_path(
    engine: AsyncEngine,
    session_factory: Factory,
    store: RedisSessionStore,
    redis: RedisClient,
    ids: list[str],
) -> None:
    await reset(engine, redis, store)
    sid, other, job, user, user2, request, request2 = ids
    rt = Runtime(session_factory, store, make_settings(), lambda: NOW)
    daemon = BudgetDaemon(session_factory, store, rt.settings, clock=lambda: NOW)
    for session_id in (sid, other):
        await start_session(
            rt, session_id=session_id, job_id=job, clerk_user_id=user, tier="partner"
        )

    # A resume that ran out of deliveries is parked, then redelivered by an operator.
    async with session_factory.begin() as s:
        await s.execute(
            text(
                "UPDATE agent_sessions SET resume_due_at = now() - interval '1 s',"
                " resume_attempts = 2 WHERE id = :id"
            ),
            {"id": sid},
        )
    assert (await deliver_due(rt, limit=10)).parked == [sid]
    await redeliver(rt, sid)
    delivered = (await deliver_due(rt, limit=10)).deliveries
    assert [d.session.id for d in delivered] == [sid]
    assert await acknowledge(rt, {sid: delivered[0].resume_token}) == 1

    # Charged past 110 %: stopped at once; the daemon stops the user's other session.
    await spend(rt, sid, request, 11_500)
    assert (await session_state(rt, sid))["status"] == SessionStatus.BUDGET_EXCEEDED
    report = await daemon.run_once()
    assert report.stopped == [other]
    assert report.reconciled >= 1
    state = await session_state(rt, other)
    assert (state["session_id"], state["status"]) == (other, SessionStatus.BUDGET_EXCEEDED)

    # Erased, with Redis missing the erasure; then the id is used again by another user.
    erased = await store.get(sid, refresh=False)
    assert erased is not None
    await delete_session(rt, sid)
    stale: dict[str, Any] = {**erased, "version": 50}
    await redis.set(store.key(sid), orjson.dumps(stale))
    with pytest.raises(SessionNotFound):
        await session_state(rt, sid)
    await redis.set(store.key(sid), orjson.dumps(stale))
    await start_session(rt, session_id=sid, job_id=job, clerk_user_id=user2, tier="partner")
    state = await session_state(rt, sid)
    assert (state["clerk_user_id"], state["version"]) == (user2, 0)
    await spend(rt, sid, request2, 12_000)
    await spend(rt, sid, request, 1)  # the erased life's request id: a new call
    await daemon.run_once()
    key = await store.get(sid, refresh=False)
    assert key is not None
    assert (key["clerk_user_id"], key["status"]) == (user2, SessionStatus.BUDGET_EXCEEDED)
    assert await stopped_events(session_factory) == [(sid, user), (other, user), (sid, user2)]
