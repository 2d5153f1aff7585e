"""Resume delivery is at least once and fenced; the Redis mirror converges (DESIGN.md §8).

Leases and signs of life are measured on the database clock, so these tests move time
by shifting the stamps in SQL, never by sleeping; the budget day comes from the
injected clock.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text

from app.budget import policy
from app.db.models import AgentCheckpoint, AgentSession
from app.domain import Decision, SessionNotFound, SessionStatus, StaleRunner
from app.lifecycle import (
    RestoredSession,
    Runtime,
    heartbeat,
    session_state,
    sleep_session,
    start_session,
    stop_session,
)
from app.lifecycle import charge as lifecycle_charge
from app.repositories import BudgetRepository, CheckpointRepository, SessionRepository
from app.session_store import RedisSessionStore
from app.settings import Settings
from app.workers import BudgetDaemon, WakeWorker
from tests.integration.helpers import SONNET, Factory, ManualClock, eventually

START = datetime(2027, 3, 14, 9, 0, tzinfo=UTC)
NEXT_DAY = policy.next_budget_day_start(START) + timedelta(seconds=1)


@pytest.fixture
def settings() -> Settings:
    # Retries come back after at most 50 ms; a delivery's lease is long, so only an
    # explicit failure (or a test moving the stamps) makes it due again.
    return Settings(
        _env_file=None,
        backoff_max_seconds=0.05,
        resume_lease_seconds=60.0,
        resume_max_attempts=3,
        runner_timeout_seconds=600.0,
        sleep_grace_seconds=0,
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def rt(
    session_factory: Factory, store: RedisSessionStore, settings: Settings, clock: ManualClock
) -> Runtime:
    return Runtime(session_factory, store, settings, clock)


def checkpoint(session_id: str, iteration: int, n: int = 2) -> AgentCheckpoint:
    return AgentCheckpoint(
        session_id=session_id,
        job_id="j",
        message_history=[{"role": "user", "n": i} for i in range(n)],
        iteration_number=iteration,
        sandbox_id="sb-1",
    )


async def asleep_and_due(rt: Runtime, clock: ManualClock, *ids: str) -> None:
    for sid in ids:
        await start_session(
            rt, session_id=sid, job_id="j", clerk_user_id=f"u-{sid}", tier="partner"
        )
        await sleep_session(rt, checkpoint(sid, 3))
    clock.now = NEXT_DAY


async def row(factory: Factory, session_id: str) -> AgentSession:
    async with factory() as s:
        return await SessionRepository(s).get(session_id)


async def age_signs_of_life(factory: Factory, session_id: str, by: timedelta) -> None:
    """What a runner that went silent ``by`` ago leaves behind."""
    async with factory.begin() as s:
        await s.execute(
            text(
                "UPDATE agent_sessions SET last_seen_at = last_seen_at - CAST(:by AS interval),"
                " started_at = started_at - CAST(:by AS interval),"
                " last_checkpoint_at = last_checkpoint_at - CAST(:by AS interval)"
                " WHERE id = :id"
            ),
            {"by": by, "id": session_id},
        )


async def expire_lease(factory: Factory, session_id: str) -> None:
    async with factory.begin() as s:
        await s.execute(
            text("UPDATE agent_sessions SET resume_due_at = now() - interval '1 s' WHERE id = :id"),
            {"id": session_id},
        )


# ----------------------------------------------------------------- delivery


async def test_a_hook_that_raises_is_called_again_with_the_same_token_then_never(
    rt: Runtime, clock: ManualClock, store: RedisSessionStore
) -> None:
    await asleep_and_due(rt, clock, "s-1")
    calls: list[str] = []

    async def hook(restored: RestoredSession) -> None:
        calls.append(restored.resume_token)
        if len(calls) == 1:
            raise RuntimeError("the runner could not start")

    worker = WakeWorker(rt.session_factory, store, rt.settings, clock=clock, on_resume=hook)
    first = await worker.run_once()
    assert (first.woken, first.resume_errors) == (1, 1)

    async def delivered_twice() -> bool:
        await worker.run_once()
        return len(calls) == 2

    await eventually(delivered_twice)
    for _ in range(3):
        await worker.run_once()
    assert len(calls) == 2
    assert calls[0] == calls[1]
    done = await row(rt.session_factory, "s-1")
    assert done.resume_token == calls[0]
    assert (done.resume_due_at, done.resume_attempts, done.resume_parked_at) == (None, 0, None)


async def test_each_wake_has_its_own_token(
    rt: Runtime, clock: ManualClock, store: RedisSessionStore
) -> None:
    tokens: list[str] = []

    def hook(restored: RestoredSession) -> None:
        tokens.append(restored.resume_token)

    started = await start_session(
        rt, session_id="s-1", job_id="j", clerk_user_id="u-1", tier="partner"
    )
    worker = WakeWorker(rt.session_factory, store, rt.settings, clock=clock, on_resume=hook)
    for day in range(3):
        await sleep_session(rt, checkpoint("s-1", day + 1), now=clock.now)
        clock.now = policy.next_budget_day_start(clock.now) + timedelta(seconds=1)
        await worker.run_once()
    assert len(set(tokens)) == 3
    assert started.resume_token not in tokens


async def test_a_lost_worker_is_replaced_after_its_lease_with_the_same_token(
    rt: Runtime, clock: ManualClock, store: RedisSessionStore
) -> None:
    await asleep_and_due(rt, clock, "s-1")
    entered = asyncio.Event()
    first_tokens: list[str] = []

    async def hangs(restored: RestoredSession) -> None:
        first_tokens.append(restored.resume_token)
        entered.set()
        await asyncio.Event().wait()  # the process dies in here

    lost = WakeWorker(rt.session_factory, store, rt.settings, clock=clock, on_resume=hangs)
    doomed = asyncio.create_task(lost.run_once())
    await asyncio.wait_for(entered.wait(), 30)
    doomed.cancel()  # nothing acknowledges, nothing renews: as if killed
    with pytest.raises(asyncio.CancelledError):
        await doomed

    second: list[str] = []
    other = WakeWorker(
        rt.session_factory,
        store,
        rt.settings,
        clock=clock,
        on_resume=lambda r: second.append(r.resume_token),
    )
    assert (await other.run_once()).delivered == 0  # the lease still holds
    await expire_lease(rt.session_factory, "s-1")
    assert (await other.run_once()).acknowledged == 1
    assert second == first_tokens


async def test_a_running_hook_keeps_its_lease(
    session_factory: Factory, store: RedisSessionStore, clock: ManualClock
) -> None:
    settings = Settings(_env_file=None, resume_lease_seconds=1.5)
    rt = Runtime(session_factory, store, settings, clock)
    await asleep_and_due(rt, clock, "s-1")
    calls: list[str] = []

    async def slow(restored: RestoredSession) -> None:
        calls.append(restored.resume_token)
        await asyncio.sleep(3.0)  # two leases long: renewed meanwhile

    one = WakeWorker(session_factory, store, settings, clock=clock, on_resume=slow)
    two = WakeWorker(session_factory, store, settings, clock=clock, on_resume=slow)
    task = asyncio.create_task(one.run_once())

    async def started() -> bool:
        return bool(calls)

    await eventually(started)
    while not task.done():
        await two.run_once()  # would take the delivery if the lease had lapsed
        await asyncio.sleep(0.05)
    assert (await task).acknowledged == 1
    assert len(calls) == 1


async def test_deliveries_run_out_and_park(
    rt: Runtime, clock: ManualClock, store: RedisSessionStore
) -> None:
    await asleep_and_due(rt, clock, "s-1")
    calls = 0

    def always_fails(_: RestoredSession) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("no runner")

    worker = WakeWorker(rt.session_factory, store, rt.settings, clock=clock, on_resume=always_fails)

    async def parked() -> bool:
        report = await worker.run_once()
        return report.parked == 1

    await eventually(parked)
    assert calls == rt.settings.resume_max_attempts
    stuck = await row(rt.session_factory, "s-1")
    assert stuck.resume_parked_at is not None
    assert stuck.status == "working"
    for _ in range(3):
        await worker.run_once()
    assert calls == rt.settings.resume_max_attempts  # parked: nobody tries again


# ------------------------------------------------------------------ fencing


async def test_an_orphaned_run_is_delivered_again_and_the_old_runner_is_fenced(
    rt: Runtime, clock: ManualClock, store: RedisSessionStore
) -> None:
    old = await start_session(rt, session_id="s-1", job_id="j", clerk_user_id="u-1", tier="partner")
    assert old.resume_token is not None
    async with rt.session_factory.begin() as s:
        await CheckpointRepository(s).save(checkpoint("s-1", 1), resume_token=old.resume_token)
    await heartbeat(rt, "s-1", resume_token=old.resume_token)
    got: list[RestoredSession] = []
    worker = WakeWorker(rt.session_factory, store, rt.settings, clock=clock, on_resume=got.append)
    assert (await worker.run_once()).delivered == 0  # alive: left alone

    await age_signs_of_life(rt.session_factory, "s-1", by=timedelta(minutes=11))
    report = await worker.run_once()
    assert (report.orphans, report.acknowledged) == (1, 1)
    new_token = got[0].resume_token
    assert new_token != old.resume_token
    assert got[0].checkpoint is not None
    assert got[0].checkpoint.iteration_number == 1

    with pytest.raises(StaleRunner):
        await heartbeat(rt, "s-1", resume_token=old.resume_token)
    with pytest.raises(StaleRunner):
        async with rt.session_factory.begin() as s:
            await CheckpointRepository(s).save(checkpoint("s-1", 2), resume_token=old.resume_token)
    with pytest.raises(StaleRunner):  # appending is fenced the same way
        async with rt.session_factory.begin() as s:
            await CheckpointRepository(s).append(
                checkpoint("s-1", 2, n=3), new_messages=1, resume_token=old.resume_token
            )
    # The stale runner's money was spent: its charge is recorded all the same.
    async with rt.session_factory.begin() as s:
        charged = await BudgetRepository(s, rt.settings).charge(
            session_id="s-1", request_id="late-1", model=SONNET,
            input_tokens=10, output_tokens=1, now=clock.now,
        )  # fmt: skip
    assert charged.cost_microdollars > 0
    # The new runner carries on.
    await heartbeat(rt, "s-1", resume_token=new_token)
    async with rt.session_factory.begin() as s:
        saved = await CheckpointRepository(s).save(checkpoint("s-1", 2), resume_token=new_token)
        assert saved.iteration_number == 2
        latest = await CheckpointRepository(s).load_latest("s-1")
    assert latest is not None
    assert latest.iteration_number == 2


async def test_a_charge_or_a_checkpoint_counts_as_a_sign_of_life(
    rt: Runtime, clock: ManualClock, store: RedisSessionStore
) -> None:
    await start_session(rt, session_id="s-1", job_id="j", clerk_user_id="u-1", tier="partner")
    await age_signs_of_life(rt.session_factory, "s-1", by=timedelta(minutes=11))
    async with rt.session_factory.begin() as s:
        await BudgetRepository(s, rt.settings).charge(
            session_id="s-1", request_id="r-1", model=SONNET,
            input_tokens=10, output_tokens=1, now=clock.now,
        )  # fmt: skip
    worker = WakeWorker(rt.session_factory, store, rt.settings, clock=clock)
    assert (await worker.run_once()).orphans == 0


async def test_a_stale_token_for_a_missing_session_is_not_found(rt: Runtime) -> None:
    with pytest.raises(SessionNotFound):
        await heartbeat(rt, "nobody", resume_token="t")


# ------------------------------------------------------------ sleep vs stop


async def test_sleep_after_a_stop_keeps_the_last_turn(rt: Runtime) -> None:
    await start_session(rt, session_id="s-1", job_id="j", clerk_user_id="u-1", tier="partner")
    await stop_session(rt, "s-1")  # the daemon, or a charge, moved first
    returned = await sleep_session(rt, checkpoint("s-1", 7, n=5))
    assert returned.status == SessionStatus.BUDGET_EXCEEDED
    async with rt.session_factory() as s:
        latest = await CheckpointRepository(s).load_latest("s-1")
    assert latest is not None
    assert (latest.iteration_number, len(latest.message_history)) == (7, 5)


# ------------------------------------------------------- unrestorable sessions


async def corrupt(factory: Factory, *ids: str) -> None:
    async with factory.begin() as s:
        await s.execute(
            text(
                "UPDATE agent_checkpoints SET base_message_count = 1, parent_iteration = 0,"
                " delta_depth = 1 WHERE session_id = ANY(:ids)"
            ),
            {"ids": list(ids)},
        )


async def test_broken_sessions_neither_spin_nor_starve_a_batch(
    rt: Runtime, clock: ManualClock, store: RedisSessionStore
) -> None:
    # Five broken sessions fall due first and fill a whole batch by themselves.
    broken = [f"a-{i}" for i in range(5)]
    good = [f"b-{i:02d}" for i in range(10)]
    await asleep_and_due(rt, clock, *broken, *good)
    await corrupt(rt.session_factory, *broken)
    woken: list[str] = []
    worker = WakeWorker(
        rt.session_factory, store, rt.settings, clock=clock,
        on_resume=lambda r: woken.append(r.session.id), batch_size=5,
    )  # fmt: skip
    report = await worker.run_once()
    assert sorted(woken) == good  # all ten in one pass
    assert report.failed == 5
    # The broken ones wait out a backoff on the worker's clock: no retry until then.
    again = await worker.run_once()
    assert (again.claimed, again.failed) == (0, 0)
    assert await worker._idle_delay() >= 0.05
    clock.now += timedelta(seconds=1)
    assert (await worker.run_once()).failed == 5
    rows = [await row(rt.session_factory, sid) for sid in broken]
    assert {(r.status, r.wake_failures) for r in rows} == {("sleeping", 2)}
    assert {r.wake_at for r in rows} == {clock.now + timedelta(seconds=0.05)}


# ------------------------------------------------------------------ the mirror


async def test_session_state_rebuilds_a_deleted_key(rt: Runtime, store: RedisSessionStore) -> None:
    await start_session(rt, session_id="s-1", job_id="j", clerk_user_id="u-1", tier="partner")
    await sleep_session(rt, checkpoint("s-1", 4))
    before = await store.get("s-1")
    assert await store.delete("s-1")
    state = await session_state(rt, "s-1")
    assert state == before
    assert await store.get("s-1") == before
    with pytest.raises(SessionNotFound):
        await session_state(rt, "nobody")


async def test_a_race_of_daemon_and_worker_converges_after_one_more_daemon_tick(
    session_factory: Factory, store: RedisSessionStore, settings: Settings
) -> None:
    """Two daemons sleep silent over-budget sessions while top-ups make them due at once
    and a worker wakes them: every key is written by several processes, out of order."""
    clock = ManualClock(START.replace(hour=23))
    rt = Runtime(session_factory, store, settings, clock)
    ids = [f"s-{i:03d}" for i in range(200)]
    for sid in ids:
        await start_session(
            rt, session_id=sid, job_id="j", clerk_user_id=f"u-{sid[-1]}", tier="partner"
        )
    async with session_factory.begin() as s:
        await s.execute(text("UPDATE budget_days SET spent_microdollars = budget_microdollars"))
        await s.execute(
            text("UPDATE agent_sessions SET started_at = started_at - interval '1 hour'")
        )
    daemons = [
        BudgetDaemon(session_factory, store, settings, clock=clock, batch_size=17) for _ in range(2)
    ]
    worker = WakeWorker(session_factory, store, settings, clock=clock, batch_size=13)

    async def top_ups() -> None:
        for user in sorted({f"u-{i}" for i in range(10)}):
            async with session_factory.begin() as s:
                await SessionRepository(s).request_wake(clerk_user_id=user, now=clock.now)
            await asyncio.sleep(0)

    for _ in range(4):
        await asyncio.gather(*(d.run_once() for d in daemons), worker.run_once(), top_ups())
    await daemons[0].run_once()  # the one more tick; its own moves are mirrored too

    async with session_factory() as s:
        rows = await s.execute(select(AgentSession.id, AgentSession.version))
        pg = {sid: version for sid, version in rows}
    mirrored: dict[str, Any] = {
        sid: (await store.get(sid, refresh=False) or {}).get("version") for sid in ids
    }
    assert max(pg.values()) > 2  # they really went back and forth
    assert mirrored == pg


async def test_a_charge_that_stops_a_session_updates_its_key(
    rt: Runtime, clock: ManualClock, store: RedisSessionStore, settings: Settings
) -> None:
    for sid in ("via-lifecycle", "via-repository"):
        await start_session(
            rt, session_id=sid, job_id="j", clerk_user_id=f"u-{sid}", tier="partner"
        )
        assert (await store.get(sid) or {}).get("status") == "working"
    # 10 M Sonnet input tokens cost $30: far above 110 % of a partner's day.
    # Through lifecycle: at once.
    stopped = await lifecycle_charge(
        rt, session_id="via-lifecycle", request_id="r-1", model=SONNET,
        input_tokens=10_000_000, output_tokens=0, now=clock.now,
    )  # fmt: skip
    assert stopped.decision is Decision.STOP
    key = await store.get("via-lifecycle")
    assert key is not None
    assert (key["status"], key["version"]) == (
        "budget_exceeded",
        (await row(rt.session_factory, "via-lifecycle")).version,
    )
    # Straight through the repository (which never touches Redis): within one daemon tick.
    async with rt.session_factory.begin() as s:
        await BudgetRepository(s, settings).charge(
            session_id="via-repository", request_id="r-2", model=SONNET,
            input_tokens=10_000_000, output_tokens=0, now=clock.now,
        )  # fmt: skip
    assert (await store.get("via-repository") or {}).get("status") == "working"
    await BudgetDaemon(rt.session_factory, store, settings, clock=clock).run_once()
    assert (await store.get("via-repository") or {}).get("status") == "budget_exceeded"
