"""BudgetRepository against a real PostgreSQL: idempotent charges under real concurrency."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import event, func, select

from app.budget import policy
from app.budget.pricing import cost_microdollars
from app.db.models import AgentCostEvent, AgentSession, BudgetDay
from app.domain import Decision, InvalidInput, SessionNotFound, SessionStatus, UnknownModel
from app.repositories import BudgetRepository, SessionRepository
from app.settings import ModelPrice, Settings
from tests.integration.helpers import OPUS, SONNET, Factory, make_session
from tests.integration.money import add_user

NOW = datetime(2026, 11, 26, 15, 0, tzinfo=UTC)
# Models of these tests only, priced by the settings' fallback (the prices table has no
# row for them): round figures that are easy to check by hand.
ONE = "test-one-per-token"
FIVE = "test-five-per-token"
TODAY = NOW.date()


@pytest.fixture
def settings() -> Settings:
    # A round price so the figures below are easy to check by hand: 1 µ$ per token.
    return Settings(
        _env_file=None,
        model_prices={
            ONE: ModelPrice(input_per_mtok=1_000_000, output_per_mtok=1_000_000),
            FIVE: ModelPrice(input_per_mtok=5_000_000, output_per_mtok=5_000_000),
        },
        tier_allowance_partner=300_000,
    )


async def _charge(
    factory: Factory,
    settings: Settings,
    request_id: str,
    tokens: int = 1_000,
    *,
    session_id: str = "s-1",
    now: datetime = NOW,
    model: str = ONE,
) -> object:
    async with factory.begin() as s:
        return await BudgetRepository(s, settings).charge(
            session_id=session_id,
            request_id=request_id,
            model=model,
            input_tokens=tokens,
            output_tokens=0,
            now=now,
        )


async def _totals(factory: Factory, user: str = "u-1") -> tuple[int, int, int]:
    async with factory() as s:
        ledger = await s.scalar(
            select(func.coalesce(func.sum(AgentCostEvent.cost_microdollars), 0)).where(
                AgentCostEvent.clerk_user_id == user
            )
        )
        days = await s.scalar(
            select(func.coalesce(func.sum(BudgetDay.spent_microdollars), 0)).where(
                BudgetDay.clerk_user_id == user
            )
        )
        sessions = await s.scalar(
            select(func.coalesce(func.sum(AgentSession.cumulative_cost_microdollars), 0)).where(
                AgentSession.clerk_user_id == user
            )
        )
    return int(ledger or 0), int(days or 0), int(sessions or 0)


# -------------------------------------------------------------------------- basics


async def test_charge_records_the_call_and_returns_the_decision(
    session_factory: Factory, settings: Settings
) -> None:
    await make_session(session_factory)
    result = await _charge(session_factory, settings, "req-1", 1_000)
    # No user_settings row: the tier's allowance over 30 days, never zero.
    budget = settings.tier_allowance_partner // 30
    assert result.cost_microdollars == 1_000  # type: ignore[attr-defined]
    assert result.spent_microdollars == 1_000  # type: ignore[attr-defined]
    assert result.budget_microdollars == budget == 10_000  # type: ignore[attr-defined]
    assert result.decision is Decision.CONTINUE  # type: ignore[attr-defined]
    assert result.duplicate is False  # type: ignore[attr-defined]
    async with session_factory() as s:
        ev = (await s.scalars(select(AgentCostEvent))).one()
        assert (ev.request_id, ev.model, ev.input_tokens, ev.cost_microdollars) == (
            "req-1",
            ONE,
            1_000,
            1_000,
        )
        assert (ev.clerk_user_id, ev.budget_day) == ("u-1", TODAY)
    assert await _totals(session_factory) == (1_000, 1_000, 1_000)


async def test_decisions_follow_the_days_spend(
    session_factory: Factory, settings: Settings
) -> None:
    await make_session(session_factory)
    seen = [
        (await _charge(session_factory, settings, f"r-{i}", 1_000)).decision  # type: ignore[attr-defined]
        for i in range(10)
    ]
    # budget 10_000: 1k..8k continue, 9k wind down, 10k sleep.
    assert seen == [Decision.CONTINUE] * 8 + [Decision.WIND_DOWN, Decision.SLEEP]


async def test_common_charge_is_one_statement(session_factory: Factory, settings: Settings) -> None:
    await make_session(session_factory)
    await _charge(session_factory, settings, "first")  # creates the day's row
    statements: list[str] = []
    async with session_factory.begin() as s:
        sync_engine = s.bind.sync_engine  # type: ignore[union-attr]

        def record(*args: object) -> None:
            statements.append(str(args[2]))

        event.listen(sync_engine, "before_cursor_execute", record)
        try:
            await BudgetRepository(s, settings).charge(
                session_id="s-1", request_id="second", model=ONE,
                input_tokens=1, output_tokens=1, now=NOW,
            )  # fmt: skip
        finally:
            event.remove(sync_engine, "before_cursor_execute", record)
    data_statements = [q for q in statements if not q.startswith(("BEGIN", "COMMIT"))]
    assert len(data_statements) == 1, data_statements


# ---------------------------------------------------------------- idempotency races


async def test_fifty_concurrent_duplicates_count_once(
    session_factory: Factory, settings: Settings
) -> None:
    await make_session(session_factory)
    await _charge(session_factory, settings, "warm-up", 500)
    start = asyncio.Event()

    async def attempt() -> object:
        async with session_factory.begin() as s:
            await s.connection()
            await start.wait()
            return await BudgetRepository(s, settings).charge(
                session_id="s-1", request_id="same", model=ONE,
                input_tokens=700, output_tokens=0, now=NOW,
            )  # fmt: skip

    tasks = [asyncio.create_task(attempt()) for _ in range(50)]
    await asyncio.sleep(0.1)
    start.set()
    results = await asyncio.gather(*tasks)
    fresh = [r for r in results if not r.duplicate]  # type: ignore[attr-defined]
    dupes = [r for r in results if r.duplicate]  # type: ignore[attr-defined]
    assert len(fresh) == 1
    assert len(dupes) == 49
    assert {(r.cost_microdollars, r.spent_microdollars, r.budget_microdollars) for r in dupes} == {  # type: ignore[attr-defined]
        (700, 1_200, 10_000)
    }
    assert await _totals(session_factory) == (1_200, 1_200, 1_200)


async def test_duplicate_reports_the_days_current_figures(
    session_factory: Factory, settings: Settings
) -> None:
    await make_session(session_factory)
    await _charge(session_factory, settings, "a", 1_000)
    await _charge(session_factory, settings, "b", 8_500)
    again = await _charge(session_factory, settings, "a", 999_999)
    assert again.duplicate is True  # type: ignore[attr-defined]
    assert again.cost_microdollars == 1_000  # type: ignore[attr-defined]
    assert again.spent_microdollars == 9_500  # type: ignore[attr-defined]
    assert again.decision is Decision.WIND_DOWN  # type: ignore[attr-defined]
    assert await _totals(session_factory) == (9_500, 9_500, 9_500)


async def test_two_hundred_concurrent_charges_over_four_sessions_add_up(
    session_factory: Factory, settings: Settings
) -> None:
    for i in range(4):
        await make_session(session_factory, f"s-{i}")
    gate = asyncio.Semaphore(32)

    async def one(n: int) -> None:
        async with gate:
            await _charge(session_factory, settings, f"req-{n}", 10 + n, session_id=f"s-{n % 4}")

    await asyncio.gather(*(one(n) for n in range(200)))
    ledger, days, sessions = await _totals(session_factory)
    assert ledger == days == sessions == sum(10 + n for n in range(200))
    async with session_factory() as s:
        assert await s.scalar(select(func.count()).select_from(AgentCostEvent)) == 200
        assert await s.scalar(select(func.count()).select_from(BudgetDay)) == 1


async def test_concurrent_first_charges_of_a_day_make_one_row(
    session_factory: Factory, settings: Settings
) -> None:
    for i in range(8):
        await make_session(session_factory, f"s-{i}")
    start = asyncio.Event()

    async def first(i: int) -> None:
        async with session_factory.begin() as s:
            await s.connection()
            await start.wait()
            await BudgetRepository(s, settings).charge(
                session_id=f"s-{i}", request_id=f"r-{i}", model=ONE,
                input_tokens=100, output_tokens=0, now=NOW,
            )  # fmt: skip

    tasks = [asyncio.create_task(first(i)) for i in range(8)]
    await asyncio.sleep(0.1)
    start.set()
    await asyncio.gather(*tasks)
    async with session_factory() as s:
        rows = list(await s.scalars(select(BudgetDay)))
    assert len(rows) == 1
    assert rows[0].spent_microdollars == 800
    assert await _totals(session_factory) == (800, 800, 800)


# -------------------------------------------------------------------- the budget


async def test_budget_follows_allowance_period_spend_and_renewal(
    session_factory: Factory, settings: Settings
) -> None:
    renewal = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)  # 10 days after TODAY
    await add_user(session_factory, renewal=renewal)
    await make_session(session_factory)
    # Spend earlier in the period (and one day before it, which must not count).
    async with session_factory.begin() as s:
        s.add_all(
            [
                BudgetDay(clerk_user_id="u-1", day=day, budget_microdollars=1, spent_microdollars=v)
                for day, v in [
                    (date(2026, 11, 10), 40_000),
                    (date(2026, 11, 20), 60_000),
                    (date(2026, 11, 5), 99_999),  # before the period: not counted
                ]
            ]
        )
    result = await _charge(session_factory, settings, "r-1", 1)
    expected = (300_000 - 100_000) // 10
    assert result.budget_microdollars == expected  # type: ignore[attr-defined]
    assert policy.period_start(TODAY, renewal) == date(2026, 11, 6)


async def test_override_beats_the_tier_allowance(
    session_factory: Factory, settings: Settings
) -> None:
    await add_user(session_factory, override=3_000_000)
    await make_session(session_factory)
    result = await _charge(session_factory, settings, "r-1", 1)
    assert result.budget_microdollars == 100_000  # type: ignore[attr-defined]


async def test_a_new_day_gets_a_new_row_and_the_old_one_is_kept(
    session_factory: Factory, settings: Settings
) -> None:
    await make_session(session_factory)
    await _charge(session_factory, settings, "d1", 9_000)
    tomorrow = NOW + timedelta(days=1)
    result = await _charge(session_factory, settings, "d2", 1_000, now=tomorrow)
    assert result.spent_microdollars == 1_000  # type: ignore[attr-defined]
    async with session_factory() as s:
        rows = {r.day: r.spent_microdollars for r in await s.scalars(select(BudgetDay))}
        repo = BudgetRepository(s, settings)
        assert await repo.spent("u-1", TODAY) == 9_000
        assert await repo.spent("u-1", tomorrow.date()) == 1_000
    assert rows == {TODAY: 9_000, tomorrow.date(): 1_000}


async def test_daily_budget_creates_the_row_once(
    session_factory: Factory, settings: Settings
) -> None:
    await make_session(session_factory)
    async with session_factory.begin() as s:
        repo = BudgetRepository(s, settings)
        first = await repo.daily_budget("u-1", TODAY)
        again = await repo.daily_budget("u-1", TODAY)
    assert first == again == 10_000
    async with session_factory() as s:
        assert await s.scalar(select(func.count()).select_from(BudgetDay)) == 1


# ------------------------------------------------------------------ runaway guard


async def test_crossing_110_percent_stops_the_session_in_the_same_transaction(
    session_factory: Factory, settings: Settings
) -> None:
    await make_session(session_factory)
    await _charge(session_factory, settings, "a", 11_000)  # exactly 110 %: sleep
    async with session_factory() as s:
        assert (await s.get_one(AgentSession, "s-1")).status == SessionStatus.WORKING
    async with session_factory.begin() as s:
        result = await BudgetRepository(s, settings).charge(
            session_id="s-1", request_id="b", model=ONE,
            input_tokens=1, output_tokens=0, now=NOW,
        )  # fmt: skip
        # Inside the charge's own transaction the session has already moved.
        status = await s.scalar(select(AgentSession.status).where(AgentSession.id == "s-1"))
    assert result.decision is Decision.STOP
    assert status == SessionStatus.BUDGET_EXCEEDED
    async with session_factory() as s:
        row = await s.get_one(AgentSession, "s-1")
        assert (row.status, row.version) == ("budget_exceeded", 1)


async def test_first_charge_of_the_day_can_stop_too(
    session_factory: Factory, settings: Settings
) -> None:
    await make_session(session_factory)
    result = await _charge(session_factory, settings, "huge", 50_000)
    assert result.decision is Decision.STOP  # type: ignore[attr-defined]
    async with session_factory() as s:
        assert (await s.get_one(AgentSession, "s-1")).status == "budget_exceeded"


async def test_charges_after_sleep_or_stop_are_recorded_and_status_kept(
    session_factory: Factory, settings: Settings
) -> None:
    await make_session(session_factory, "sleeper")
    await make_session(session_factory, "done")
    async with session_factory.begin() as s:
        repo = SessionRepository(s)
        await repo.transition(
            "sleeper", "sleeping", expected="working", wake_at=NOW + timedelta(hours=9)
        )
        await repo.transition("done", "completed", expected="working")
    await _charge(session_factory, settings, "late-1", 50_000, session_id="sleeper")
    await _charge(session_factory, settings, "late-2", 50_000, session_id="done")
    async with session_factory() as s:
        assert (await s.get_one(AgentSession, "sleeper")).status == "sleeping"
        assert (await s.get_one(AgentSession, "done")).status == "completed"
    assert await _totals(session_factory) == (100_000, 100_000, 100_000)


# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("input_tokens", -1, InvalidInput),
        ("input_tokens", 1.5, InvalidInput),
        ("output_tokens", True, InvalidInput),
        ("output_tokens", "9", InvalidInput),
        ("request_id", "", InvalidInput),
        ("request_id", None, InvalidInput),
        ("model", "gpt-17", UnknownModel),
        ("session_id", "ghost", SessionNotFound),
        ("now", datetime(2026, 11, 26), InvalidInput),
    ],
)
async def test_bad_charges_raise_and_write_nothing(
    session_factory: Factory, settings: Settings, field: str, value: object, error: type
) -> None:
    await make_session(session_factory)
    kwargs: dict[str, object] = {
        "session_id": "s-1", "request_id": "r", "model": ONE,
        "input_tokens": 10, "output_tokens": 10, "now": NOW,
    }  # fmt: skip
    kwargs[field] = value
    with pytest.raises(error):
        async with session_factory.begin() as s:
            await BudgetRepository(s, settings).charge(**kwargs)  # type: ignore[arg-type]
    assert await _totals(session_factory) == (0, 0, 0)
    async with session_factory() as s:
        assert await s.scalar(select(func.count()).select_from(BudgetDay)) == 0


def test_default_prices_match_the_design() -> None:
    assert cost_microdollars(OPUS, 1_000_000, 0) == 15_000_000
    assert cost_microdollars(SONNET, 0, 1_000_000) == 15_000_000
