"""The day boundary (DESIGN.md §6b): a decision keeps its day; the daemon never acts on a
day that has ended. Also overflow and naive times, the other edges of issue 13."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import BigInteger, func, literal, select

from app.budget import policy
from app.db.models import AgentCheckpoint, AgentSession
from app.domain import Decision, InvalidInput
from app.lifecycle import Runtime, sleep_session, start_session, top_up
from app.repositories.budget_rules import stops
from app.session_store import RedisSessionStore
from app.settings import ModelPrice, Settings
from app.workers import BudgetDaemon, WakeWorker
from tests.integration.helpers import Factory, ManualClock
from tests.integration.money import (
    ONE_PER_TOKEN,
    SteppingClock,
    add_user,
    charge,
    checkpoint,
    day_row,
    statuses,
)

MIDNIGHT = datetime(2026, 11, 27, 0, 0, tzinfo=UTC)
DAY = MIDNIGHT.date() - timedelta(days=1)  # Nov 26, the day that ends
NEW_DAY = MIDNIGHT.date()
BUDGET = 1_000_000  # $30 a period, no user_settings: $1 a day


@pytest.fixture
def settings() -> Settings:
    return Settings(
        _env_file=None,
        model_prices={ONE_PER_TOKEN: ModelPrice(input_per_mtok=1_000_000, output_per_mtok=0)},
        tier_allowance_partner=30 * BUDGET,
        sleep_grace_seconds=0,
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(MIDNIGHT - timedelta(hours=1))


@pytest.fixture
def rt(
    session_factory: Factory, store: RedisSessionStore, settings: Settings, clock: ManualClock
) -> Runtime:
    return Runtime(session_factory, store, settings, clock)


async def _start(rt: Runtime, *ids: str, user: str = "u-1") -> None:
    for sid in ids:
        await start_session(rt, session_id=sid, job_id="j", clerk_user_id=user, tier="partner")


# ------------------------------------------------------------------------ finding 5


@pytest.mark.parametrize(("percent", "decision"), [(95, "wind_down"), (100, "sleep")])
async def test_a_turn_that_crosses_midnight_does_not_cost_the_new_day(
    rt: Runtime, clock: ManualClock, session_factory: Factory, percent: int, decision: str
) -> None:
    """``wind_down`` (or ``sleep``) at 23:59:50, ``sleep_session`` at 00:00:20: the new
    day has its whole budget, so the session keeps working on it. (The renewal falls on
    the new day here, so the two days' budgets differ: $30 for the old period's last
    day, $1 for the first of 30.)"""
    await add_user(session_factory, renewal=MIDNIGHT)
    await _start(rt, "s-1")
    clock.now = MIDNIGHT - timedelta(seconds=10)
    old_budget = 30 * BUDGET
    assert (await charge(rt, "s-1", "r-1", old_budget * percent // 100)).decision == decision
    clock.now = MIDNIGHT + timedelta(seconds=20)
    session = await sleep_session(rt, checkpoint("s-1", 7))
    assert (session.status, session.wake_at) == ("working", None)
    assert session.daily_budget_microdollars == BUDGET  # the new day's
    assert await statuses(session_factory) == {"s-1": "working"}
    assert await day_row(session_factory, "u-1", NEW_DAY) == (0, BUDGET)
    async with session_factory() as s:
        saved = await s.scalar(select(AgentCheckpoint).where(AgentCheckpoint.session_id == "s-1"))
    assert saved is not None
    assert (saved.iteration_number, saved.agent_state) == (7, "working")
    assert (await charge(rt, "s-1", "r-2", 1_000)).decision is Decision.CONTINUE


async def test_after_midnight_a_spent_new_day_still_sleeps_until_the_next(
    rt: Runtime, clock: ManualClock, session_factory: Factory
) -> None:
    await _start(rt, "s-1", "s-2")
    clock.now = MIDNIGHT - timedelta(seconds=10)
    await charge(rt, "s-1", "r-1", 950_000)
    clock.now = MIDNIGHT + timedelta(seconds=5)
    await charge(rt, "s-2", "r-2", 1_000_000)  # the user's other session spends the new day
    clock.now = MIDNIGHT + timedelta(seconds=20)
    session = await sleep_session(rt, checkpoint("s-1"))
    assert (session.status, session.wake_at) == ("sleeping", MIDNIGHT + timedelta(days=1))


async def test_sleep_on_the_day_of_the_decision_sleeps_until_midnight(
    rt: Runtime, clock: ManualClock
) -> None:
    await _start(rt, "s-1")
    clock.now = MIDNIGHT - timedelta(seconds=10)
    await charge(rt, "s-1", "r-1", 1_000_000)
    session = await sleep_session(rt, checkpoint("s-1"))
    assert (session.status, session.wake_at) == ("sleeping", MIDNIGHT)


async def test_sleep_on_a_stopped_session_saves_and_leaves_it_stopped(
    rt: Runtime, clock: ManualClock, session_factory: Factory
) -> None:
    await _start(rt, "s-1")
    await charge(rt, "s-1", "r-1", 5_000_000)
    session = await sleep_session(rt, checkpoint("s-1", 3))
    assert session.status == "budget_exceeded"
    async with session_factory() as s:
        count = await s.scalar(select(func.count()).select_from(AgentCheckpoint))
    assert count == 1


# ------------------------------------------------------------------------ finding 6


async def _over_110_percent_with_a_sleeper(rt: Runtime) -> None:
    """u-1 ends Nov 26 above 110 %: "runaway" was stopped by its charge; "sleeper" and
    "idle" are the user's other sessions."""
    await _start(rt, "sleeper", "idle", "runaway")
    await charge(rt, "sleeper", "r-1", 1_000_000)
    await sleep_session(rt, checkpoint("sleeper"))
    assert (await charge(rt, "runaway", "r-2", 200_000)).decision is Decision.STOP


async def test_daemon_never_stops_a_session_woken_for_the_new_day(
    rt: Runtime, clock: ManualClock, session_factory: Factory, store: RedisSessionStore
) -> None:
    """A daemon pass that read its clock at 23:59:59.96 meets a session a worker woke
    at 00:00:00.04 for the new day: it leaves it (and the user's day) alone."""
    await _over_110_percent_with_a_sleeper(rt)
    clock.now = MIDNIGHT + timedelta(milliseconds=40)
    woken = await WakeWorker(session_factory, store, rt.settings, clock=clock).run_once()
    assert woken.woken == 1
    late = ManualClock(MIDNIGHT - timedelta(milliseconds=40))
    report = await BudgetDaemon(session_factory, store, rt.settings, clock=late).run_once()
    assert (report.stopped, report.slept) == ([], [])
    assert await statuses(session_factory) == {
        "sleeper": "working",
        "idle": "working",
        "runaway": "budget_exceeded",
    }


async def test_daemon_pass_that_crosses_midnight_acts_on_no_ended_day(
    rt: Runtime, session_factory: Factory, store: RedisSessionStore
) -> None:
    """The pass starts at 23:59:59.96 and reaches its statements at 00:00:00.04."""
    await _over_110_percent_with_a_sleeper(rt)
    crossing = SteppingClock(
        MIDNIGHT - timedelta(milliseconds=40), MIDNIGHT + timedelta(milliseconds=40)
    )
    report = await BudgetDaemon(session_factory, store, rt.settings, clock=crossing).run_once()
    assert (report.stopped, report.slept) == ([], [])
    assert (await statuses(session_factory))["idle"] == "working"


async def test_daemon_still_stops_a_runaway_on_the_current_day(
    rt: Runtime, clock: ManualClock, session_factory: Factory, store: RedisSessionStore
) -> None:
    """The guards above do not disarm the daemon: on a day that has not ended it stops
    the user's working session (the safety net of BDGT-07)."""
    await _over_110_percent_with_a_sleeper(rt)
    report = await BudgetDaemon(session_factory, store, rt.settings, clock=clock).run_once()
    assert report.stopped == ["idle"]


# ------------------------------------------------------------------------ finding 7


async def test_the_largest_override_breaks_no_charge_and_no_daemon_tick(
    rt: Runtime, clock: ManualClock, session_factory: Factory, store: RedisSessionStore
) -> None:
    """An override of 2**63-1 (budget * 110 beyond BIGINT) works for its user, and the
    daemon still stops another user's runaway in the same tick."""
    big = 2**63 - 1
    await add_user(session_factory, "rich", override=big)
    await _start(rt, "r-1", user="rich")
    first = await charge(rt, "r-1", "rich-1", 1_000)  # creates the day's row
    second = await charge(rt, "r-1", "rich-2", 1_000)  # the one-statement path
    assert first.budget_microdollars == second.budget_microdollars == big // 30
    assert second.decision is Decision.CONTINUE
    # A top-up on top of the largest budget saturates instead of overflowing.
    await top_up(rt, clerk_user_id="rich", amount_microdollars=big)
    third = await charge(rt, "r-1", "rich-3", 1_000)
    assert third.budget_microdollars == big
    assert third.decision is Decision.CONTINUE

    await _start(rt, "poor-1", "poor-2", user="poor")
    assert (await charge(rt, "poor-1", "p-1", 1_200_000)).decision is Decision.STOP
    report = await BudgetDaemon(session_factory, store, rt.settings, clock=clock).run_once()
    assert report.stopped == ["poor-2"]
    assert (await statuses(session_factory))["r-1"] == "working"


# ------------------------------------------------------------------------ finding 8


async def test_naive_times_are_refused_and_nothing_is_written(
    rt: Runtime, session_factory: Factory
) -> None:
    await _start(rt, "s-1")
    naive = datetime(2026, 11, 26, 23, 0)
    with pytest.raises(InvalidInput) as caught:
        await sleep_session(rt, checkpoint("s-1"), now=naive)
    assert caught.value.field == "now"
    async with session_factory() as s:
        assert await s.scalar(select(func.count()).select_from(AgentCheckpoint)) == 0
        session = await s.get_one(AgentSession, "s-1")
    assert (session.status, session.wake_at) == ("working", None)


async def test_a_naive_clock_is_refused(
    session_factory: Factory, store: RedisSessionStore, settings: Settings
) -> None:
    rt = Runtime(session_factory, store, settings, lambda: datetime(2026, 11, 26, 12, 0))
    with pytest.raises(InvalidInput):
        await start_session(rt, session_id="s-1", job_id="j", clerk_user_id="u", tier="partner")
    assert await statuses(session_factory) == {}
    assert policy.budget_day(MIDNIGHT) == NEW_DAY


@pytest.mark.parametrize(
    ("spent", "budget"),
    [
        (0, 0),
        (5, 0),
        (11_000, 10_000),
        (11_001, 10_000),
        (2**63 - 1, 2**63 - 1),
        (2**63 - 1, (2**63 - 1) // 30),
        (2**62 // 100 * 110, 2**62 // 100 * 100),  # exactly 110 %: sleep
        (2**62 // 100 * 110 + 1, 2**62 // 100 * 100),  # a hair above: stop
        (1, 2**63 - 1),
    ],
)
async def test_the_sql_stop_rule_agrees_with_decide_up_to_bigint_max(
    session_factory: Factory, spent: int, budget: int
) -> None:
    """ "Above 110 %" is one Python function and one SQL expression; they agree on every
    BIGINT, where ``budget * 110`` in BIGINT arithmetic would overflow."""
    async with session_factory() as s:
        in_sql = await s.scalar(
            select(stops(literal(spent, BigInteger()), literal(budget, BigInteger())))
        )
    assert in_sql is (policy.decide(spent, budget) is Decision.STOP)
