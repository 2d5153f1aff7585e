"""Soak: 2 daemons, 2 workers and 32 agents on one database while the clock crosses
midnight several times; then the promises are checked against PostgreSQL.

``make check`` runs it for about 10 s; ``make soak`` for about 60 s (SOAK_SECONDS).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import uuid
from collections import Counter
from datetime import UTC, datetime, time, timedelta

import pytest
from sqlalchemy import func, select, text

from app.budget import policy
from app.clock import VirtualClock
from app.db.models import AgentCostEvent, AgentSession, BudgetDay
from app.demo.fleet import Fleet, agent, on_resume, seed_users
from app.lifecycle import RestoredSession, Runtime
from app.session_store import RedisSessionStore
from app.settings import Settings
from app.workers import BudgetDaemon, WakeWorker
from app.workers.backoff import wait_or_stop
from tests.integration.helpers import Factory
from tests.reliability.recycler import RECYCLED_IDS, check, recycle

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "10"))
REAL_SECONDS_PER_DAY = 3.0


@pytest.mark.timeout(SOAK_SECONDS * 4 + 120)
async def test_soak(
    session_factory: Factory,
    store: RedisSessionStore,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="app.daemon")
    start = datetime.combine(datetime.now(UTC).date(), time(6, 0), tzinfo=UTC)
    clock = VirtualClock(start, speed=86_400 / REAL_SECONDS_PER_DAY)
    end = start + timedelta(seconds=SOAK_SECONDS * clock.speed)
    fleet = Fleet(uuid.uuid4().hex[:6], clock, end, random.Random(11))
    settings = Settings(
        _env_file=None,
        wake_poll_interval=0.2,
        daemon_interval=0.1,
        sleep_grace_seconds=0,  # the daemons race the agents for every over-budget session
        checkpoint_keep_last=3,
        checkpoint_keyframe_every=8,
    )
    rt = Runtime(session_factory, store, settings, clock)
    plan = await seed_users(session_factory, fleet, 32, start)
    # A third of the agents ignore wind_down: their users reach 100 %, where the
    # daemons race the agents (and each other) to put sessions to sleep or stop them.
    fleet.careless = {sid for i, (sid, _, _) in enumerate(plan) if i % 3 == 0}
    # Bigger calls than the demo's, so that agents reach their budget within a
    # simulated day on a slower server too (and sometimes overshoot into `stop`).
    fleet.call_share = (0.04, 0.09)

    wakes: list[tuple[str, int]] = []

    async def hook(restored: RestoredSession) -> None:
        wakes.append((restored.session.id, restored.session.version))
        await on_resume(fleet, restored)

    stop = asyncio.Event()
    workers = [
        WakeWorker(session_factory, store, settings, clock=clock, on_resume=hook, batch_size=7)
        for _ in range(2)
    ]
    daemons = [
        BudgetDaemon(session_factory, store, settings, clock=clock, batch_size=5) for _ in range(2)
    ]
    # The soak runs on a simulated calendar, but how much each agent gets done in a
    # simulated day depends on the machine's speed. So the workload waits for the
    # coverage it is meant to give: while too few sessions have slept, the last day
    # is put off by another day (up to a bound), rather than checking a thin run.
    wanted_sleeps = len(plan) // 2
    latest_end = end + timedelta(days=20)

    async def until_covered() -> None:
        while fleet.events["sleep"] < wanted_sleeps and fleet.end < latest_end:
            if fleet.clock() > fleet.end - timedelta(hours=12):
                fleet.end += timedelta(days=1)
            await wait_or_stop(stop, 0.05)

    background = [asyncio.create_task(w.run_forever(stop)) for w in workers]
    background += [asyncio.create_task(d.run_forever(stop)) for d in daemons]
    background.append(asyncio.create_task(until_covered()))
    # Erasure and id reuse beside the fleet, on users of its own.
    recycler = asyncio.create_task(
        recycle(
            rt, store, stop, random.Random(12), run_id=fleet.run_id, tick=settings.daemon_interval
        )
    )
    try:
        await asyncio.gather(*(agent(fleet, rt, sid, user, tier) for sid, user, tier in plan))
    finally:
        stop.set()
        await asyncio.gather(*background)
    recycled = await recycler
    await check(rt, recycled)

    ids = sorted(fleet.users)
    users = sorted(set(fleet.users.values()))
    sessions_per_user = Counter(fleet.users.values())
    async with session_factory() as s:
        ledger_rows, ledger = (
            await s.execute(
                select(func.count(), func.coalesce(func.sum(AgentCostEvent.cost_microdollars), 0))
            )
        ).one()
        days = await s.scalar(
            select(func.coalesce(func.sum(BudgetDay.spent_microdollars), 0)).where(
                BudgetDay.clerk_user_id.in_(users)
            )
        )
        cumulative = await s.scalar(
            select(func.coalesce(func.sum(AgentSession.cumulative_cost_microdollars), 0))
        )
        biggest_call = await s.scalar(select(func.max(AgentCostEvent.cost_microdollars)))
        day_rows = list(
            await s.scalars(select(BudgetDay).where(BudgetDay.clerk_user_id.in_(users)))
        )
        bad_wake_at = await s.scalar(
            text(
                "SELECT count(*) FROM agent_sessions"
                " WHERE (status = 'sleeping') <> (wake_at IS NOT NULL)"
            )
        )
        statuses = Counter((await s.scalars(select(AgentSession.status))).all())

    # Erasure and reuse: every incarnation served, its events kept, its money counted.
    assert recycled.violations == []
    assert recycled.incarnations >= len(RECYCLED_IDS)
    assert recycled.stale_puts > 0
    # Each session woken at most once per sleep: every wake is a distinct transition.
    assert len(wakes) == len(set(wakes)), Counter(wakes).most_common(3)
    # No charge doubled: one ledger row per distinct call, retries answered as duplicates.
    assert (ledger_rows, ledger) == (fleet.fresh_charges, fleet.fresh_cost)
    assert fleet.duplicate_breaches == []
    assert ledger == days == cumulative
    # No user-day above 110 % plus one in-flight call per session of that user.
    for row in day_rows:
        slack = sessions_per_user[row.clerk_user_id] * (biggest_call or 0)
        assert row.spent_microdollars * 100 <= row.budget_microdollars * 110 + slack * 100, row
    # wake_at set exactly while sleeping (the schema enforces it too).
    assert bad_wake_at == 0
    # Every sleeper got back exactly the history it slept with.
    mismatched = [r.session_id for r in fleet.sleeps if r.restored != r.history]
    assert mismatched == []
    # Nobody woke before its wake time, and every wake time is a UTC midnight. (The
    # agent's own clock reading can postdate a sleep a daemon imposed earlier, so the
    # wake time, not that reading, is what is compared.)
    early = [r.session_id for r in fleet.sleeps if r.woke_at is None or r.woke_at < r.wake_at]
    assert early == []
    assert {r.wake_at.timetz() for r in fleet.sleeps} == {time(0, tzinfo=UTC)}
    assert all(r.wake_at <= policy.next_budget_day_start(r.slept_at) for r in fleet.sleeps)
    assert statuses == {"completed": len(ids)}
    midnights = (fleet.end.date() - start.date()).days
    assert midnights >= 3
    assert fleet.events["sleep"] >= wanted_sleeps, "the soak should have exercised sleeping"
    with capsys.disabled():
        print(
            f"\n  soak {SOAK_SECONDS:g}s: {midnights} midnights, {len(ids)} agents,"
            f" {fleet.fresh_charges} charges (+{fleet.duplicates_seen} retried),"
            f" {fleet.events['iteration']} iterations, {fleet.events['sleep']} sleeps,"
            f" {len(wakes)} worker wakes, {fleet.events.get('stop', 0)} stops,"
            f" {sum('by=daemon' in r.getMessage() for r in caplog.records)} daemon actions,"
            f" {len(users)} users, {recycled.incarnations} recycled incarnations"
            f" ({recycled.stale_puts} erasures that missed Redis); invariant violations: 0"
        )
