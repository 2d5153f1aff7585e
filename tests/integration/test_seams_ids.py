"""Ids at the seams (DESIGN.md §6c, issue 24): the id rule on every way in, every key
derived from an accepted id fits its column, the store's own Redis names out of any
session's reach, and an erased session's id used again as a new incarnation. Real
PostgreSQL and Redis throughout."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from sqlalchemy import func, select, text

from app.db.models import AgentCostEvent, AgentEvent, AgentSession, BudgetDay, UserSettings
from app.domain import EventType, InvalidInput, SessionNotFound, SessionStatus
from app.lifecycle import (
    Runtime,
    charge,
    complete_session,
    delete_session,
    deliver_due,
    enforce_budgets,
    purge_finished,
    redeliver,
    session_state,
    start_session,
    top_up,
)
from app.repositories import BudgetRepository, SessionRepository
from app.session_store import RedisClient, RedisSessionStore
from app.settings import ModelPrice, Settings
from app.workers import BudgetDaemon
from tests.integration.helpers import Factory
from tests.integration.money import ONE_PER_TOKEN

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
DAY_BUDGET = 10_000  # a partner without a billing row: 300,000 / 30 µ$


def make_settings() -> Settings:
    # 1 µ$ per token, so every figure is checked by hand; deliveries run out after two.
    return Settings(
        _env_file=None,
        model_prices={
            ONE_PER_TOKEN: ModelPrice(input_per_mtok=1_000_000, output_per_mtok=1_000_000)
        },
        tier_allowance_partner=300_000,
        resume_max_attempts=2,
        resume_lease_seconds=60.0,
        backoff_max_seconds=0.05,
    )


@pytest.fixture
def rt(session_factory: Factory, store: RedisSessionStore) -> Runtime:
    return Runtime(session_factory, store, make_settings(), lambda: NOW)


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


async def events(factory: Factory, type: EventType) -> list[AgentEvent]:
    async with factory() as s:
        stmt = select(AgentEvent).where(AgentEvent.type == type.value).order_by(AgentEvent.id)
        return list(await s.scalars(stmt))


async def status_of(factory: Factory, session_id: str) -> str:
    async with factory() as s:
        return (await SessionRepository(s).get(session_id)).status


async def begin(rt: Runtime, session_id: str, user: str) -> AgentSession:
    return await start_session(
        rt, session_id=session_id, job_id="j", clerk_user_id=user, tier="partner"
    )


# ------------------------------------------------------------------- the id rule

BAD_IDS: list[Any] = [
    "",
    " \t ",
    "\u3000",  # blank: an ideographic space only
    "line\nbreak",
    "nul\x00byte",
    "c1\x85control",
    "\x7f",
    "esc\x1b[31m",
    "x" * 256,
    "lone\ud800surrogate",
    7,
    None,
]


async def count_rows(factory: Factory) -> dict[str, int]:
    async with factory() as s:
        return {
            model.__tablename__: int(await s.scalar(select(func.count()).select_from(model)) or 0)
            for model in (AgentSession, BudgetDay, AgentCostEvent, AgentEvent, UserSettings)
        }


async def redis_keys(redis: RedisClient, key_prefix: str) -> list[bytes]:
    return [k async for k in redis.scan_iter(match=f"{key_prefix}*")]


@pytest.mark.parametrize("bad", BAD_IDS, ids=repr)
@pytest.mark.parametrize("field", ["session_id", "job_id", "clerk_user_id"])
async def test_start_session_refuses_an_id_outside_the_rule_and_writes_nothing(
    rt: Runtime, session_factory: Factory, redis: RedisClient, key_prefix: str, field: str, bad: Any
) -> None:
    given = {"session_id": "s-1", "job_id": "j", "clerk_user_id": "u-1", field: bad}
    with pytest.raises(InvalidInput) as caught:
        await start_session(rt, tier="partner", **given)
    assert caught.value.field == field
    assert set((await count_rows(session_factory)).values()) == {0}
    assert await redis_keys(redis, key_prefix) == []


@pytest.mark.parametrize("bad", BAD_IDS, ids=repr)
async def test_the_repositories_and_user_settings_refuse_an_id_outside_the_rule(
    rt: Runtime, session_factory: Factory, bad: Any
) -> None:
    await begin(rt, "s-1", "u-1")
    before = await count_rows(session_factory)
    for field in ("id", "job_id", "clerk_user_id"):
        given = {"id": "s-2", "job_id": "j", "clerk_user_id": "u-1", field: bad}
        with pytest.raises(InvalidInput) as caught:
            async with session_factory.begin() as s:
                await SessionRepository(s).create(tier="partner", model_used="m", **given)
        assert caught.value.field == field
    for field in ("session_id", "request_id"):
        call = {"session_id": "s-1", "request_id": "r-1", field: bad}
        with pytest.raises(InvalidInput) as caught:
            async with session_factory.begin() as s:
                await BudgetRepository(s, rt.settings).charge(
                    model=ONE_PER_TOKEN, input_tokens=10, output_tokens=0, now=NOW, **call
                )
        assert caught.value.field == field
    with pytest.raises(InvalidInput) as caught:
        async with session_factory.begin() as s:
            s.add(UserSettings(clerk_user_id=bad, tier="partner"))
    assert caught.value.field == "clerk_user_id"
    with pytest.raises(InvalidInput) as caught:
        async with session_factory.begin() as s:
            s.add(
                AgentSession(
                    id=bad, job_id="j", clerk_user_id="u-1", tier="partner", model_used="m"
                )
            )
    assert caught.value.field == "id"
    with pytest.raises(InvalidInput) as caught:
        await top_up(rt, clerk_user_id=bad, amount_microdollars=5, now=NOW)
    assert caught.value.field == "clerk_user_id"
    assert await count_rows(session_factory) == before


# ------------------------------------------------- finding 1: long ids, every key fits


async def test_a_230_character_user_is_charged_past_90_and_110_percent(
    rt: Runtime, session_factory: Factory
) -> None:
    user = "u" * 230
    await begin(rt, "s-1", user)
    await spend(rt, "s-1", "r-1", 9_500)  # 95 %
    await spend(rt, "s-1", "r-2", 1_000)  # 105 %
    await spend(rt, "s-1", "r-3", 1_000)  # 115 %: stopped
    await spend(rt, "s-1", "r-3", 1_000)  # a retry: charged once, reported once
    async with session_factory() as s:
        day = await s.scalar(select(BudgetDay).where(BudgetDay.clerk_user_id == user))
    assert day is not None
    assert day.spent_microdollars == 11_500
    thresholds = await events(session_factory, EventType.THRESHOLD)
    assert [(e.clerk_user_id, e.payload["threshold_percent"]) for e in thresholds] == [
        (user, 90),
        (user, 100),
        (user, 110),
    ]
    assert await status_of(session_factory, "s-1") == SessionStatus.BUDGET_EXCEEDED
    stopped = await events(session_factory, EventType.STOPPED)
    assert [(e.session_id, e.clerk_user_id) for e in stopped] == [("s-1", user)]


async def test_a_245_character_session_over_budget_does_not_stop_the_daemon(
    rt: Runtime, session_factory: Factory, store: RedisSessionStore
) -> None:
    long_id = "s" * 245
    await begin(rt, long_id, "u-long")
    await begin(rt, "plain", "u-plain")
    # Both users above 110 % of the day, their sessions still working (a repository
    # charge, say, or a price change): the daemon's pass must stop both.
    async with session_factory.begin() as s:
        await s.execute(text("UPDATE budget_days SET spent_microdollars = 12000"))
    report = await enforce_budgets(rt, limit=10)
    assert sorted(row.id for row in report.stopped) == sorted([long_id, "plain"])
    for sid in (long_id, "plain"):
        assert await status_of(session_factory, sid) == SessionStatus.BUDGET_EXCEEDED
        assert (await store.get(sid) or {}).get("status") == SessionStatus.BUDGET_EXCEEDED
    stopped = await events(session_factory, EventType.STOPPED)
    assert sorted(e.session_id or "" for e in stopped) == sorted([long_id, "plain"])
    assert all(len(e.dedup_key) <= 255 for e in stopped)
    # The next pass finds nothing to do, and adds no event.
    assert (await enforce_budgets(rt, limit=10)).stopped == []
    assert len(await events(session_factory, EventType.STOPPED)) == 2


async def owe_exhausted_delivery(factory: Factory, session_id: str, attempts: int) -> None:
    """A resume owed now that has used ``attempts`` deliveries already."""
    async with factory.begin() as s:
        await s.execute(
            text(
                "UPDATE agent_sessions SET resume_due_at = now() - interval '1 s',"
                " resume_attempts = :n WHERE id = :id"
            ),
            {"id": session_id, "n": attempts},
        )


async def test_a_200_character_session_is_parked_then_delivered(
    rt: Runtime, session_factory: Factory
) -> None:
    long_id = "p" * 200
    await begin(rt, long_id, "u-1")
    await begin(rt, "other", "u-2")
    await owe_exhausted_delivery(session_factory, long_id, attempts=2)
    await owe_exhausted_delivery(session_factory, "other", attempts=0)
    first = await deliver_due(rt, limit=10)
    assert first.parked == [long_id]
    assert [d.session.id for d in first.deliveries] == ["other"]  # the others go on
    parked = await events(session_factory, EventType.RESUME_PARKED)
    assert [e.session_id for e in parked] == [long_id]
    # The operator redelivers it: the next pass delivers it, with the same token.
    await redeliver(rt, long_id)
    second = await deliver_due(rt, limit=10)
    assert [d.session.id for d in second.deliveries] == [long_id]
    assert second.parked == []
    # Parked again after running out once more: a second event, not a duplicate.
    await owe_exhausted_delivery(session_factory, long_id, attempts=2)
    assert (await deliver_due(rt, limit=10)).parked == [long_id]
    assert len(await events(session_factory, EventType.RESUME_PARKED)) == 2


async def test_a_255_character_session_whose_runner_vanished_is_fenced_and_delivered(
    rt: Runtime, session_factory: Factory
) -> None:
    long_id = "f" * 255
    old = await begin(rt, long_id, "u-1")
    async with session_factory.begin() as s:
        await s.execute(
            text(
                "UPDATE agent_sessions SET last_seen_at = now() - interval '1 day' WHERE id = :id"
            ),
            {"id": long_id},
        )
    found = await deliver_due(rt, limit=10)
    assert found.orphans == [long_id]
    assert [d.session.id for d in found.deliveries] == [long_id]
    assert found.deliveries[0].resume_token != old.resume_token
    fenced = await events(session_factory, EventType.RUNNER_FENCED)
    assert [e.session_id for e in fenced] == [long_id]


# ---------------------------- finding 10: a session named like the store's own names


@pytest.mark.parametrize("session_id", ["~reconciled-through", "|reconciled-through"])
async def test_a_session_named_after_the_watermark_breaks_no_daemon_pass(
    rt: Runtime, session_factory: Factory, store: RedisSessionStore, session_id: str
) -> None:
    await begin(rt, session_id, "u-1")
    await begin(rt, "plain", "u-2")
    daemon = BudgetDaemon(session_factory, store, rt.settings, clock=lambda: NOW)
    for _ in range(2):  # the second pass reads back the watermark the first one wrote
        report = await daemon.run_once()
        assert report.reconciled >= 2
    assert await store.reconciled_through() is not None
    state = await session_state(rt, session_id)
    assert (state["session_id"], state["status"]) == (session_id, SessionStatus.WORKING)
    await spend(rt, session_id, "r-1", 12_000)  # 120 %: stopped, the key rewritten
    assert (await store.get(session_id) or {}).get("status") == SessionStatus.BUDGET_EXCEEDED
    await daemon.run_once()
    assert (await store.get(session_id) or {}).get("status") == SessionStatus.BUDGET_EXCEEDED


# ------------------------------ findings 11 and 12: erasure, then the same id again


async def leave_behind(
    redis: RedisClient, store: RedisSessionStore, snapshot: dict[str, Any]
) -> None:
    """What a Redis that missed the erasure holds (a late write of the erased session,
    or a delete that never arrived): its snapshot, at a version far ahead."""
    await redis.set(store.key(snapshot["session_id"]), orjson.dumps({**snapshot, "version": 50}))


async def test_an_erased_id_used_again_wins_in_redis_and_the_erased_one_is_never_served(
    rt: Runtime, session_factory: Factory, store: RedisSessionStore, redis: RedisClient
) -> None:
    await begin(rt, "reused", "u-old")
    await spend(rt, "reused", "r-1", 12_000)  # stopped: version 1
    erased = await store.get("reused")
    assert erased is not None
    assert erased["clerk_user_id"] == "u-old"
    await delete_session(rt, "reused")

    await leave_behind(redis, store, erased)
    with pytest.raises(SessionNotFound):
        await session_state(rt, "reused")  # never the erased session...
    assert await store.get("reused", refresh=False) is None  # ...and its key is gone

    await leave_behind(redis, store, erased)
    await begin(rt, "reused", "u-new")  # its key wins over the one left behind
    key = await store.get("reused", refresh=False)
    assert key is not None
    assert (key["clerk_user_id"], key["status"], key["version"]) == ("u-new", "working", 0)

    # A late write of the erased session after the new one's: never served, and gone
    # from Redis within one daemon tick.
    await leave_behind(redis, store, erased)
    state = await session_state(rt, "reused")
    assert (state["clerk_user_id"], state["version"]) == ("u-new", 0)
    await leave_behind(redis, store, erased)
    await BudgetDaemon(session_factory, store, rt.settings, clock=lambda: NOW).run_once()
    key = await store.get("reused", refresh=False)
    assert key is not None
    assert key["clerk_user_id"] == "u-new"

    # The new session moves on; its keys follow, from version 1 (below the stale 50).
    await spend(rt, "reused", "r-1", 12_000)  # another user's request id: charged
    key = await store.get("reused", refresh=False)
    assert key is not None
    assert (key["clerk_user_id"], key["status"]) == ("u-new", SessionStatus.BUDGET_EXCEEDED)


async def test_a_purged_session_is_never_served_from_a_key_left_behind(
    rt: Runtime, session_factory: Factory, store: RedisSessionStore, redis: RedisClient
) -> None:
    await begin(rt, "done", "u-1")
    working = await store.get("done")
    assert working is not None
    await complete_session(rt, "done")
    await purge_finished(rt, older_than_days=0)
    await leave_behind(redis, store, working)
    state = await session_state(rt, "done")
    assert state["status"] == SessionStatus.COMPLETED
    assert await store.get("done", refresh=False) is None


async def test_events_of_an_id_used_again_are_delivered_not_dropped(
    rt: Runtime, session_factory: Factory
) -> None:
    for user in ("u-1", "u-2"):
        await begin(rt, "again", user)
        await spend(rt, "again", f"r-{user}", 12_000)  # stopped: version 1 both times
        await delete_session(rt, "again")
    await begin(rt, "again", "u-3")
    async with session_factory.begin() as s:
        await s.execute(text("UPDATE budget_days SET spent_microdollars = 12000"))
    assert [row.id for row in (await enforce_budgets(rt, limit=10)).stopped] == ["again"]
    stopped = await events(session_factory, EventType.STOPPED)
    assert [(e.session_id, e.clerk_user_id, e.payload["version"]) for e in stopped] == [
        ("again", "u-1", 1),
        ("again", "u-2", 1),
        ("again", "u-3", 1),
    ]
    assert len({e.dedup_key for e in stopped}) == 3


async def test_late_writes_of_an_erased_session_racing_its_reuse_converge_in_one_tick(
    rt: Runtime, session_factory: Factory, store: RedisSessionStore, redis: RedisClient
) -> None:
    """A real race: the erased session's late writes land before, between and after the
    new session's own writes; one daemon pass later Redis holds the new session."""
    await begin(rt, "raced", "u-old")
    await spend(rt, "raced", "r-1", 12_000)
    erased = await store.get("raced")
    assert erased is not None
    await delete_session(rt, "raced")

    async def late_writes() -> None:
        for _ in range(20):
            await leave_behind(redis, store, erased)
            await asyncio.sleep(0)

    async def new_life() -> None:
        await begin(rt, "raced", "u-new")
        await spend(rt, "raced", "r-1", 5_000)  # 50 %: no move, the key stays version 0

    await asyncio.gather(late_writes(), new_life(), late_writes())
    await BudgetDaemon(session_factory, store, rt.settings, clock=lambda: NOW).run_once()
    key = await store.get("raced", refresh=False)
    assert key is not None
    assert (key["clerk_user_id"], key["version"]) == ("u-new", 0)
    assert (await session_state(rt, "raced"))["clerk_user_id"] == "u-new"
