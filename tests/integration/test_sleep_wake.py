"""Sleep and wake end to end, in process, with an injected clock (BDGT-02, 03, 04)."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select, text

from app.budget import policy
from app.clock import VirtualClock
from app.db.models import AgentCheckpoint, AgentSession, BudgetDay
from app.domain import Decision, SessionStatus
from app.lifecycle import (
    RestoredSession,
    Runtime,
    complete_session,
    resume_session,
    sleep_session,
    start_session,
    stop_session,
)
from app.repositories import BudgetRepository, SessionRepository
from app.session_store import SESSION_TTL, RedisSessionStore
from app.settings import Settings
from app.workers import BudgetDaemon, WakeWorker
from tests.integration.helpers import SONNET, Factory, ManualClock

START = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


@pytest.fixture
def settings() -> Settings:
    return Settings(_env_file=None, tier_allowance_partner=3_000_000, sleep_grace_seconds=60)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def rt(
    session_factory: Factory, store: RedisSessionStore, settings: Settings, clock: ManualClock
) -> Runtime:
    return Runtime(session_factory, store, settings, clock)


def agent_checkpoint(
    session_id: str, iteration: int, history: list[dict[str, Any]]
) -> AgentCheckpoint:
    return AgentCheckpoint(
        session_id=session_id,
        job_id=f"job-{session_id}",
        message_history=list(history),
        sandbox_id=f"sbx-{session_id}",
        current_phase=f"phase-{iteration % 3}",
        retry_counts={"bash": iteration % 4, "edit": 1},
        iteration_number=iteration,
    )


async def charge(rt: Runtime, session_id: str, request_id: str, tokens: int) -> Any:
    async with rt.session_factory.begin() as s:
        return await BudgetRepository(s, rt.settings).charge(
            session_id=session_id, request_id=request_id, model=SONNET,
            input_tokens=tokens, output_tokens=0, now=rt.clock(),
        )  # fmt: skip


async def test_three_days_of_sleep_and_wake(
    rt: Runtime, clock: ManualClock, store: RedisSessionStore, redis: Redis
) -> None:
    resumed: list[RestoredSession] = []
    worker = WakeWorker(
        rt.session_factory, store, rt.settings, clock=clock, on_resume=resumed.append
    )
    await start_session(rt, session_id="s-1", job_id="job-s-1", clerk_user_id="u-1", tier="partner")
    history: list[dict[str, Any]] = []
    iteration = 0
    request = 0

    for day in range(3):
        # 1. charge until the day's budget says sleep
        while True:
            request += 1
            history.append({"role": "assistant", "content": f"day {day} step {request}"})
            result = await charge(rt, "s-1", f"req-{request}", 5_000)
            if result.decision is Decision.SLEEP:
                break
            assert result.decision in (Decision.CONTINUE, Decision.WIND_DOWN)
            iteration += 1
            clock.now += timedelta(minutes=5)
        # 2. sleep: checkpoint, transition, wake_at = next midnight
        saved = agent_checkpoint("s-1", iteration, history)
        slept = await sleep_session(rt, saved)
        midnight = policy.next_budget_day_start(clock.now)
        assert (slept.status, slept.wake_at) == ("sleeping", midnight)
        # 3. the Redis key says sleeping, with a ~25 h TTL
        key = await store.get("s-1", refresh=False)
        assert key is not None
        assert (key["status"], key["iteration"], key["sandbox_id"]) == (
            "sleeping",
            iteration,
            "sbx-s-1",
        )
        ttl = await store.ttl("s-1")
        assert ttl is not None
        assert ttl > SESSION_TTL - 5
        # Before midnight nothing is due.
        clock.now = midnight - timedelta(seconds=1)
        assert (await worker.run_once()).woken == 0
        # 4. cross midnight: the worker wakes it, exactly once
        await redis.delete(store.key("s-1"))  # a lost key is rebuilt at wake
        clock.now = midnight + timedelta(seconds=2)
        report = await worker.run_once()
        assert (report.claimed, report.woken, report.failed) == (1, 1, 0)
        assert len(resumed) == day + 1
        restored = resumed[-1]
        assert restored.session.status == SessionStatus.WORKING
        assert restored.checkpoint is not None
        for name in (
            "message_history",
            "sandbox_id",
            "current_phase",
            "retry_counts",
            "iteration_number",
        ):
            assert getattr(restored.checkpoint, name) == getattr(saved, name), name
        # The restored state is the session's: saved as it is, it does not record a sleep.
        assert restored.checkpoint.agent_state == "working"
        new_day = midnight.date()
        async with rt.session_factory() as s:
            row = await s.get_one(BudgetDay, ("u-1", new_day))
            session = await s.get_one(AgentSession, "s-1")
        assert row.spent_microdollars == 0
        assert session.daily_budget_microdollars == row.budget_microdollars > 0
        assert session.wake_at is None
        key = await store.get("s-1")
        assert key is not None
        assert key["status"] == "working"
        assert (await worker.run_once()).woken == 0  # and never twice
        clock.now = midnight + timedelta(hours=9)

    async with rt.session_factory() as s:
        days = list(await s.scalars(select(BudgetDay).order_by(BudgetDay.day)))
        session = await s.get_one(AgentSession, "s-1")
    assert [d.day for d in days] == [
        date(2026, 11, 26),
        date(2026, 11, 27),
        date(2026, 11, 28),
        date(2026, 11, 29),
    ]
    assert session.version == 6  # three sleeps, three wakes
    assert len(resumed) == 3


async def test_a_sleeper_without_a_checkpoint_resumes_with_none(
    rt: Runtime, clock: ManualClock, store: RedisSessionStore
) -> None:
    await start_session(rt, session_id="s-1", job_id="j", clerk_user_id="u-1", tier="bootstrapper")
    async with rt.session_factory.begin() as s:
        await SessionRepository(s).transition(
            "s-1", "sleeping", expected="working", wake_at=START + timedelta(hours=1)
        )
    got: list[RestoredSession] = []

    async def hook(restored: RestoredSession) -> None:
        got.append(restored)

    clock.now = START + timedelta(hours=2)
    report = await WakeWorker(
        rt.session_factory, store, rt.settings, clock=clock, on_resume=hook
    ).run_once()
    assert report.woken == 1
    assert got[0].checkpoint is None


async def test_one_bad_session_does_not_abort_the_batch(
    rt: Runtime, clock: ManualClock, store: RedisSessionStore, session_factory: Factory
) -> None:
    for i in range(5):
        await start_session(
            rt, session_id=f"s-{i}", job_id="j", clerk_user_id=f"u-{i}", tier="partner"
        )
        await sleep_session(rt, agent_checkpoint(f"s-{i}", 1, [{"n": i}]))
    # Corrupt one session's checkpoint chain so its load fails inside the batch.
    async with session_factory.begin() as s:
        await s.execute(
            text(
                "UPDATE agent_checkpoints SET base_message_count = 1, parent_iteration = 0,"
                " delta_depth = 1 WHERE session_id = 's-2'"
            )
        )
    clock.now = policy.next_budget_day_start(START) + timedelta(seconds=1)
    worker = WakeWorker(rt.session_factory, store, rt.settings, clock=clock)
    report = await worker.run_once()
    assert (report.woken, report.failed) == (4, 1)
    async with session_factory() as s:
        statuses = dict((await s.execute(select(AgentSession.id, AgentSession.status))).all())
    assert statuses == {
        "s-0": "working",
        "s-1": "working",
        "s-2": "sleeping",
        "s-3": "working",
        "s-4": "working",
    }


async def test_redis_down_during_wake_then_back(
    rt: Runtime,
    clock: ManualClock,
    session_factory: Factory,
    settings: Settings,
    redis_url: str,
    key_prefix: str,
) -> None:
    await start_session(rt, session_id="s-1", job_id="j", clerk_user_id="u-1", tier="partner")
    await sleep_session(rt, agent_checkpoint("s-1", 3, [{"n": 1}]))
    dead = RedisSessionStore(Redis(host="127.0.0.1", port=1), prefix=key_prefix, timeout=0.3)
    worker = WakeWorker(session_factory, dead, settings, clock=clock)
    clock.now = policy.next_budget_day_start(START) + timedelta(seconds=1)
    report = await worker.run_once()
    assert (report.woken, report.store_errors) == (1, 1)
    async with session_factory() as s:
        assert (await s.get_one(AgentSession, "s-1")).status == "working"
    # Redis is back: any process's next reconciliation pass writes the key from
    # PostgreSQL; nothing depends on the memory of the worker that failed.
    live = Redis.from_url(redis_url)
    daemon = BudgetDaemon(
        session_factory, RedisSessionStore(live, prefix=key_prefix), settings, clock=clock
    )
    assert (await daemon.run_once()).reconciled >= 1
    key = await daemon.rt.store.get("s-1")
    assert key is not None
    assert (key["status"], key["iteration"]) == ("working", 3)
    await live.aclose()
    await dead.redis.aclose()


async def test_stop_resume_and_complete(
    rt: Runtime, store: RedisSessionStore, session_factory: Factory
) -> None:
    await start_session(rt, session_id="s-1", job_id="j", clerk_user_id="u-1", tier="partner")
    stopped = await stop_session(rt, "s-1", checkpoint=agent_checkpoint("s-1", 2, [{"n": 1}]))
    assert stopped.status == "budget_exceeded"
    assert (await store.get("s-1"))["status"] == "budget_exceeded"  # type: ignore[index]
    restored = await resume_session(rt, "s-1")
    assert restored.session.status == "working"
    assert restored.checkpoint is not None
    assert restored.checkpoint.message_history == [{"n": 1}]
    done = await complete_session(
        rt, "s-1", checkpoint=agent_checkpoint("s-1", 3, [{"n": 1}, {"n": 2}])
    )
    assert done.completed_at is not None
    assert await store.get("s-1") is None
    async with session_factory() as s:
        count = await s.scalar(select(func.count()).select_from(AgentCheckpoint))
    assert count == 2  # the checkpoints stay


async def test_start_session_fixes_the_model_by_tier(rt: Runtime) -> None:
    a = await start_session(rt, session_id="a", job_id="j", clerk_user_id="u", tier="cto_scale")
    b = await start_session(rt, session_id="b", job_id="j", clerk_user_id="u", tier="partner")
    assert a.model_used == rt.settings.tier_model_cto_scale
    assert b.model_used == rt.settings.tier_model_partner
    assert a.daily_budget_microdollars > 0


# ---------------------------------------------------------------------- daemon


async def test_daemon_sleeps_silent_over_budget_sessions_and_stops_runaways(
    rt: Runtime, clock: ManualClock, store: RedisSessionStore, session_factory: Factory
) -> None:
    for sid, user in (
        ("over", "u-over"),
        ("runaway", "u-run"),
        ("under", "u-under"),
        ("chatty", "u-over"),
    ):
        await start_session(rt, session_id=sid, job_id="j", clerk_user_id=user, tier="partner")
    budget = 3_000_000 // 30
    tokens = budget // 3 + 1  # Sonnet input is 3 µ$ a token: just over 100 %
    await charge(rt, "over", "r1", tokens)
    await charge(rt, "runaway", "r2", tokens)  # then the day's row is edited to 120 %
    async with session_factory.begin() as s:
        await s.execute(
            text(
                "UPDATE budget_days SET spent_microdollars = budget_microdollars * 12 / 10"
                " WHERE clerk_user_id = 'u-run'"
            )
        )
        await s.execute(
            text(
                "UPDATE agent_sessions SET started_at = started_at - interval '1 hour'"
                " WHERE id <> 'chatty'"
            )
        )
    await charge(rt, "under", "r3", tokens // 2)
    clock.now = START + timedelta(minutes=5)  # silence is measured on the database clock
    daemon = BudgetDaemon(session_factory, store, rt.settings, clock=clock)
    report = await daemon.run_once()
    assert report.stopped == ["runaway"]
    assert report.slept == ["over"]  # "chatty" is over budget too but not silent yet
    async with session_factory() as s:
        rows = {r.id: r for r in await s.scalars(select(AgentSession))}
    assert rows["over"].status == "sleeping"
    assert rows["over"].wake_at == policy.next_budget_day_start(clock.now)
    assert rows["runaway"].status == "budget_exceeded"
    assert rows["under"].status == "working"
    assert rows["chatty"].status == "working"
    assert (await store.get("over"))["status"] == "sleeping"  # type: ignore[index]
    assert report.by_status[SessionStatus.WORKING] == 2
    again = await daemon.run_once()
    assert (again.slept, again.stopped) == ([], [])


async def test_two_daemons_at_once_sleep_each_session_once(
    rt: Runtime, clock: ManualClock, store: RedisSessionStore, session_factory: Factory
) -> None:
    for i in range(60):
        await start_session(
            rt, session_id=f"s-{i:02d}", job_id="j", clerk_user_id=f"u-{i % 6}", tier="partner"
        )
    for u in range(6):
        await charge(rt, f"s-{u:02d}", f"r-{u}", 3_000_000 // 30 // 3 + 1)
    async with session_factory.begin() as s:
        await s.execute(
            text("UPDATE agent_sessions SET started_at = started_at - interval '1 hour'")
        )
    clock.now = START + timedelta(minutes=5)  # silence is measured on the database clock
    daemons = [
        BudgetDaemon(session_factory, store, rt.settings, clock=clock, batch_size=7)
        for _ in range(2)
    ]
    reports = await asyncio.gather(*(d.run_once() for d in daemons))
    slept = reports[0].slept + reports[1].slept
    assert sorted(slept) == [f"s-{i:02d}" for i in range(60)]
    async with session_factory() as s:
        versions = set((await s.scalars(select(AgentSession.version))).all())
    assert versions == {1}


async def test_virtual_clock_crosses_midnight_fast() -> None:
    clock = VirtualClock(datetime(2026, 11, 26, 23, 59, 59, tzinfo=UTC), speed=3600.0)
    await asyncio.sleep(0.01)
    assert clock().date() == date(2026, 11, 27)
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(timedelta(seconds=-1))
