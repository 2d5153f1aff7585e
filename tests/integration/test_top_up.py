"""Top-ups (DESIGN.md §6b): at once, for the charge, the daemon and the worker alike."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, func, select

from app.bootstrap import UsageError
from app.cli import build_parser, cmd_top_up
from app.db.models import AgentCheckpoint, BudgetCredit, BudgetDay
from app.domain import Decision, InvalidInput
from app.lifecycle import RestoredSession, Runtime, sleep_session, start_session, top_up
from app.repositories import BudgetRepository
from app.session_store import RedisSessionStore
from app.settings import ModelPrice, Settings
from app.workers import BudgetDaemon, WakeWorker
from tests.integration.helpers import Factory, ManualClock
from tests.integration.money import (
    ONE_PER_TOKEN,
    LogWatch,
    add_user,
    charge,
    checkpoint,
    day_row,
    statuses,
    wait_for,
)

NOW = datetime(2026, 11, 26, 15, 0, tzinfo=UTC)
TODAY = NOW.date()
RENEWAL = datetime(2026, 12, 6, tzinfo=UTC)  # 10 days left: $100 -> $10 a day
TEN = 10_000_000


@pytest.fixture
def settings() -> Settings:
    return Settings(
        _env_file=None,
        model_prices={ONE_PER_TOKEN: ModelPrice(input_per_mtok=1_000_000, output_per_mtok=0)},
        sleep_grace_seconds=0,  # every over-budget session counts as silent to the daemon
        wake_poll_interval=3600.0,  # only a NOTIFY can wake a sleeper within a test
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


@pytest.fixture
def rt(
    session_factory: Factory, store: RedisSessionStore, settings: Settings, clock: ManualClock
) -> Runtime:
    return Runtime(session_factory, store, settings, clock)


@contextlib.asynccontextmanager
async def running_worker(rt: Runtime, resumed: list[RestoredSession]) -> AsyncIterator[WakeWorker]:
    """A wake worker in the background, yielded once it LISTENs for NOTIFY."""
    worker = WakeWorker(
        rt.session_factory, rt.store, rt.settings, clock=rt.clock, on_resume=resumed.append
    )
    stop = asyncio.Event()
    with LogWatch("app.worker") as watch:
        task = asyncio.create_task(worker.run_forever(stop))
        try:
            await wait_for(
                lambda: _true(watch.seen("listening channel=")), what="the worker's LISTEN"
            )
            yield worker
        finally:
            stop.set()
            await task


async def _true(value: bool) -> bool:
    return value


async def test_top_up_takes_effect_at_once(
    rt: Runtime, session_factory: Factory, store: RedisSessionStore
) -> None:
    """Finding 4 and the acceptance: after a top-up the stopped session works, the
    sleeping one is woken by a worker (NOTIFY), the daemon touches neither, and the
    next charge sees the raised budget and says ``continue``."""
    await add_user(session_factory, renewal=RENEWAL)
    for sid in ("stopped", "sleeper"):
        await start_session(rt, session_id=sid, job_id="j", clerk_user_id="u-1", tier="partner")
    assert (await charge(rt, "sleeper", "r-1", 10_000_000)).decision is Decision.SLEEP
    await sleep_session(rt, checkpoint("sleeper"))
    assert (await charge(rt, "stopped", "r-2", 1_500_000)).decision is Decision.STOP
    assert await statuses(session_factory) == {"stopped": "budget_exceeded", "sleeper": "sleeping"}

    resumed: list[RestoredSession] = []
    async with running_worker(rt, resumed):
        made_due = await top_up(rt, clerk_user_id="u-1", amount_microdollars=TEN)
        assert made_due == 2
        assert (await statuses(session_factory))["stopped"] == "working"
        await wait_for(
            lambda: _true(any(r.session.id == "sleeper" for r in resumed)),
            what="the worker to wake the sleeper",
        )
    assert await statuses(session_factory) == {"stopped": "working", "sleeper": "working"}
    assert resumed[0].checkpoint is not None
    assert (await store.get("stopped"))["status"] == "working"  # type: ignore[index]
    assert await day_row(session_factory, "u-1", TODAY) == (11_500_000, 20_000_000)

    report = await BudgetDaemon(session_factory, store, rt.settings, clock=rt.clock).run_once()
    assert (report.slept, report.stopped) == ([], [])
    assert await statuses(session_factory) == {"stopped": "working", "sleeper": "working"}

    after = await charge(rt, "stopped", "r-3", 100_000)
    assert (after.budget_microdollars, after.spent_microdollars) == (20_000_000, 11_600_000)
    assert after.decision is Decision.CONTINUE


async def test_unspent_top_up_stays_in_the_period(
    rt: Runtime, session_factory: Factory, settings: Settings
) -> None:
    await add_user(session_factory, renewal=RENEWAL)
    await top_up(rt, clerk_user_id="u-1", amount_microdollars=TEN)
    assert await day_row(session_factory, "u-1", TODAY) == (0, 20_000_000)
    # Nov 27: $110 for the period, nothing spent, 9 days left.
    async with session_factory.begin() as s:
        later = await BudgetRepository(s, settings).daily_budget("u-1", TODAY + timedelta(days=1))
    assert later == 110_000_000 // 9
    # Dec 6 opens a new period: the credit belongs to the old one.
    async with session_factory.begin() as s:
        renewal_day = await BudgetRepository(s, settings).daily_budget("u-1", RENEWAL.date())
    assert renewal_day == 100_000_000 // 31


async def test_the_top_up_is_not_counted_twice_on_a_day_without_a_row(
    rt: Runtime, session_factory: Factory
) -> None:
    await add_user(session_factory, renewal=RENEWAL)
    await top_up(rt, clerk_user_id="u-1", amount_microdollars=3_000_000)
    await top_up(rt, clerk_user_id="u-1", amount_microdollars=2_000_000)
    assert await day_row(session_factory, "u-1", TODAY) == (0, TEN + 5_000_000)


async def test_without_a_renewal_date_a_top_up_raises_only_its_day(
    rt: Runtime, session_factory: Factory, settings: Settings
) -> None:
    await add_user(session_factory)
    await top_up(rt, clerk_user_id="u-1", amount_microdollars=TEN)
    assert await day_row(session_factory, "u-1", TODAY) == (0, 100_000_000 // 30 + TEN)
    async with session_factory.begin() as s:
        tomorrow = await BudgetRepository(s, settings).daily_budget("u-1", TODAY + timedelta(1))
    assert tomorrow == 100_000_000 // 30


async def test_a_stopped_session_still_over_stays_stopped(
    rt: Runtime, session_factory: Factory
) -> None:
    await add_user(session_factory, renewal=RENEWAL)
    await start_session(rt, session_id="s-1", job_id="j", clerk_user_id="u-1", tier="partner")
    await charge(rt, "s-1", "r-1", 30_000_000)  # 300 % of $10
    assert await top_up(rt, clerk_user_id="u-1", amount_microdollars=5_000_000) == 0
    assert await statuses(session_factory) == {"s-1": "budget_exceeded"}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"amount_microdollars": 0}, "amount_microdollars"),
        ({"amount_microdollars": -5}, "amount_microdollars"),
        ({"amount_microdollars": 1.5}, "amount_microdollars"),
        ({"amount_microdollars": True}, "amount_microdollars"),
        ({"amount_microdollars": "5"}, "amount_microdollars"),
        ({"amount_microdollars": 2**63}, "amount_microdollars"),
        ({"clerk_user_id": "nobody"}, "clerk_user_id"),
        ({"clerk_user_id": ""}, "clerk_user_id"),
        ({"now": datetime(2026, 11, 26, 15, 0)}, "now"),
    ],
)
async def test_bad_top_ups_raise_and_write_nothing(
    rt: Runtime, session_factory: Factory, kwargs: dict[str, object], field: str
) -> None:
    await add_user(session_factory, renewal=RENEWAL)
    await start_session(rt, session_id="s-1", job_id="j", clerk_user_id="u-1", tier="partner")
    await charge(rt, "s-1", "r-1", 20_000_000)
    async with session_factory() as s:
        rows_before = await s.scalar(select(func.count()).select_from(BudgetDay))
    arguments: dict[str, object] = {"clerk_user_id": "u-1", "amount_microdollars": TEN, **kwargs}
    with pytest.raises(InvalidInput) as caught:
        await top_up(rt, **arguments)  # type: ignore[arg-type]
    assert caught.value.field == field
    async with session_factory() as s:
        assert await s.scalar(select(func.count()).select_from(BudgetCredit)) == 0
        assert await s.scalar(select(func.count()).select_from(BudgetDay)) == rows_before
        assert await s.scalar(select(func.count()).select_from(AgentCheckpoint)) == 0
    assert await day_row(session_factory, "u-1", TODAY) == (20_000_000, TEN)
    assert await statuses(session_factory) == {"s-1": "budget_exceeded"}


async def test_a_user_without_settings_cannot_top_up_even_with_sessions(
    rt: Runtime, session_factory: Factory
) -> None:
    await start_session(rt, session_id="s-1", job_id="j", clerk_user_id="u-9", tier="partner")
    with pytest.raises(InvalidInput, match="user_settings") as caught:
        await top_up(rt, clerk_user_id="u-9", amount_microdollars=TEN)
    assert caught.value.field == "clerk_user_id"


async def test_the_cli_command_tops_up(
    session_factory: Factory,
    database_url: str,
    redis_url: str,
    key_prefix: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await add_user(session_factory, "cli-user")
    settings = Settings(
        _env_file=None, database_url=database_url, redis_url=redis_url, redis_prefix=key_prefix
    )
    args = build_parser().parse_args(["top-up", "cli-user", "2.50"])
    assert await cmd_top_up(settings, args) == 0
    assert "topped up cli-user by $2.50" in capsys.readouterr().out
    async with session_factory() as s:
        amounts = list(await s.scalars(select(BudgetCredit.amount_microdollars)))
    assert amounts == [2_500_000]
    unknown = build_parser().parse_args(["top-up", "nobody", "1"])
    with pytest.raises(UsageError, match="user_settings"):
        await cmd_top_up(settings, unknown)


async def test_concurrent_top_ups_and_first_charges_count_every_dollar_once(
    rt: Runtime, session_factory: Factory
) -> None:
    """Ten $1 top-ups race eight first charges of the day: one row, every credit added
    to it exactly once, every charge booked."""
    await add_user(session_factory, renewal=RENEWAL)
    for i in range(8):
        await start_session(
            rt, session_id=f"s-{i}", job_id="j", clerk_user_id="u-1", tier="partner"
        )
    async with session_factory.begin() as s:  # start_session made today's row: drop it
        await s.execute(delete(BudgetDay))
    gate = asyncio.Event()

    async def one_top_up() -> None:
        await gate.wait()
        await top_up(rt, clerk_user_id="u-1", amount_microdollars=1_000_000)

    async def one_charge(i: int) -> None:
        await gate.wait()
        await charge(rt, f"s-{i}", f"r-{i}", 1_000)

    tasks = [asyncio.create_task(one_top_up()) for _ in range(10)]
    tasks += [asyncio.create_task(one_charge(i)) for i in range(8)]
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(*tasks)
    assert await day_row(session_factory, "u-1", TODAY) == (8_000, TEN + 10_000_000)
    async with session_factory() as s:
        assert await s.scalar(select(func.count()).select_from(BudgetCredit)) == 10
