"""Reservations against a real PostgreSQL (DESIGN.md §6b): a call's worst case is booked
before it is made, its charge settles it, an unsettled one expires after its TTL, and
callers that reserve before every call never take a user's day above 110 %."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from app.db.models import AgentCostEvent, BudgetDay, BudgetReservation
from app.domain import Decision, InvalidInput, SessionNotFound, UnknownModel
from app.repositories import BudgetRepository, ChargeResult, Reservation
from app.settings import ModelPrice, Settings
from tests.integration.helpers import Factory, make_session
from tests.integration.money import add_user

NOW = datetime(2026, 11, 26, 15, 0, tzinfo=UTC)
DAY = NOW.date()
MODEL = "test-reserve-one-per-token"  # 1 µ$ a token in and out, 2 µ$ a 1-hour cache write
BUDGET = 1_000_000  # the day's budget: a 30,000,000 µ$ override over 30 days
CAP = BUDGET * 110 // 100
TTL = 600


@pytest.fixture
def settings() -> Settings:
    return Settings(
        _env_file=None,
        model_prices={MODEL: ModelPrice(input_per_mtok=1_000_000, output_per_mtok=1_000_000)},
        reservation_ttl_seconds=TTL,
    )


@pytest.fixture(autouse=True)
async def user(session_factory: Factory) -> None:
    await add_user(session_factory, "u-1", override=30 * BUDGET)
    for i in range(4):
        await make_session(session_factory, f"s-{i}", user="u-1")


async def reserve(
    factory: Factory,
    settings: Settings,
    request_id: str,
    worst_in: int,
    worst_out: int = 0,
    **kw: Any,
) -> Reservation:
    async with factory.begin() as s:
        return await BudgetRepository(s, settings).reserve(
            session_id=kw.pop("session_id", "s-0"),
            request_id=request_id,
            model=kw.pop("model", MODEL),
            max_input_tokens=worst_in,
            max_output_tokens=worst_out,
            now=kw.pop("now", NOW),
            **kw,
        )


async def charge(
    factory: Factory, settings: Settings, request_id: str, tokens: int, **kw: Any
) -> ChargeResult:
    async with factory.begin() as s:
        return await BudgetRepository(s, settings).charge(
            session_id=kw.pop("session_id", "s-0"),
            request_id=request_id,
            model=MODEL,
            input_tokens=tokens,
            output_tokens=0,
            now=kw.pop("now", NOW),
            **kw,
        )


async def day(factory: Factory, on: Any = DAY) -> tuple[int, int, int]:
    """(spent, reserved, sum of the day's open reservation rows) of u-1's day."""
    async with factory() as s:
        row = (
            await s.execute(
                select(BudgetDay.spent_microdollars, BudgetDay.reserved_microdollars).where(
                    BudgetDay.clerk_user_id == "u-1", BudgetDay.day == on
                )
            )
        ).one()
        rows = await s.scalar(
            select(func.coalesce(func.sum(BudgetReservation.amount_microdollars), 0)).where(
                BudgetReservation.clerk_user_id == "u-1", BudgetReservation.budget_day == on
            )
        )
    return int(row[0]), int(row[1]), int(rows or 0)


async def test_a_reservation_books_the_worst_case_and_its_charge_settles_it(
    session_factory: Factory, settings: Settings
) -> None:
    granted = await reserve(
        session_factory, settings, "r-1", 1_000, 500, max_cache_creation_input_tokens=100
    )
    # 1,000 in at 1 µ$, 500 out at 1 µ$, 100 cache writes at the 1-hour rate (2 µ$).
    assert granted == Reservation(True, 1_700, Decision.CONTINUE)
    assert await day(session_factory) == (0, 1_700, 1_700)
    charged = await charge(session_factory, settings, "r-1", 600)
    assert charged.cost_microdollars == 600
    assert await day(session_factory) == (600, 0, 0)  # settled at the real cost


async def test_a_cost_above_its_booking_is_still_charged_in_full(
    session_factory: Factory, settings: Settings
) -> None:
    await reserve(session_factory, settings, "r-1", 100)
    assert (await charge(session_factory, settings, "r-1", 5_000)).cost_microdollars == 5_000
    assert await day(session_factory) == (5_000, 0, 0)


async def test_a_reservation_that_would_pass_110_percent_is_refused_and_books_nothing(
    session_factory: Factory, settings: Settings
) -> None:
    await charge(session_factory, settings, "spent", 1_000_000)
    assert await reserve(session_factory, settings, "a", 60_000) == Reservation(
        True, 60_000, Decision.SLEEP
    )
    # 1,000,000 spent + 60,000 open + 40,001 = 1,100,001: one microdollar too many.
    assert await reserve(session_factory, settings, "b", 40_001) == Reservation(
        False, 0, Decision.SLEEP
    )
    assert await day(session_factory) == (1_000_000, 60_000, 60_000)
    # Exactly 110 % is allowed.
    assert (await reserve(session_factory, settings, "c", 40_000)).granted
    assert await day(session_factory) == (1_000_000, 100_000, 100_000)


async def test_reserving_the_same_request_twice_books_it_once(
    session_factory: Factory, settings: Settings
) -> None:
    first = await reserve(session_factory, settings, "r-1", 500)
    again = await reserve(session_factory, settings, "r-1", 500)
    assert first == again == Reservation(True, 500, Decision.CONTINUE)
    assert await day(session_factory) == (0, 500, 500)
    await charge(session_factory, settings, "r-1", 100)
    with pytest.raises(InvalidInput, match="already charged") as caught:
        await reserve(session_factory, settings, "r-1", 500)
    assert caught.value.field == "request_id"
    assert await day(session_factory) == (100, 0, 0)


async def test_an_unsettled_reservation_stops_counting_after_its_ttl(
    session_factory: Factory, settings: Settings
) -> None:
    """Injected times only: the reservation's expiry and the check are both the caller's."""
    assert (await reserve(session_factory, settings, "lost", 1_000_000)).granted
    just_before = NOW + timedelta(seconds=TTL - 1)
    refused = await reserve(session_factory, settings, "next", 200_000, now=just_before)
    assert refused == Reservation(False, 0, Decision.SLEEP)
    at_ttl = NOW + timedelta(seconds=TTL)
    granted = await reserve(session_factory, settings, "next", 200_000, now=at_ttl)
    assert granted == Reservation(True, 200_000, Decision.CONTINUE)
    # The expired one is gone from the books, rows and total alike.
    assert await day(session_factory) == (0, 200_000, 200_000)
    # Its late charge is still recorded (the money was spent) and frees nothing twice.
    await charge(session_factory, settings, "lost", 300_000, now=at_ttl)
    assert await day(session_factory) == (300_000, 200_000, 200_000)


async def test_a_call_across_midnight_counts_on_the_day_it_was_booked_on(
    session_factory: Factory, settings: Settings
) -> None:
    """DESIGN.md §6c: the charge that settles a reservation counts on the reservation's
    day (its spend, its ledger row), even after midnight; others count on their own."""
    late = datetime.combine(DAY, datetime.max.time(), tzinfo=UTC).replace(microsecond=0)
    await reserve(session_factory, settings, "r-1", 5_000, now=late)
    assert await day(session_factory) == (0, 5_000, 5_000)
    await charge(session_factory, settings, "r-2", 10, now=late + timedelta(seconds=1))
    await charge(session_factory, settings, "r-1", 4_000, now=late + timedelta(seconds=2))
    assert await day(session_factory) == (4_000, 0, 0)
    assert await day(session_factory, DAY + timedelta(days=1)) == (10, 0, 0)
    async with session_factory() as s:
        days = dict(
            (await s.execute(select(AgentCostEvent.request_id, AgentCostEvent.budget_day))).all()
        )
    assert days == {"r-1": DAY, "r-2": DAY + timedelta(days=1)}


async def test_the_charge_of_an_expired_reservation_counts_on_its_own_day(
    session_factory: Factory, settings: Settings
) -> None:
    late = datetime.combine(DAY, datetime.max.time(), tzinfo=UTC).replace(microsecond=0)
    await reserve(session_factory, settings, "r-1", 5_000, now=late)
    after_ttl = late + timedelta(seconds=TTL)
    await charge(session_factory, settings, "r-1", 4_000, now=after_ttl)
    # The reservation is gone from its own day, and the late call counts on today.
    assert await day(session_factory) == (0, 0, 0)
    assert await day(session_factory, DAY + timedelta(days=1)) == (4_000, 0, 0)


@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        ({"model": "gpt-17"}, UnknownModel, "model"),
        ({"session_id": "ghost"}, SessionNotFound, None),
        ({"max_cache_creation_input_tokens": -1}, InvalidInput, "max_cache_creation_input_tokens"),
        ({"now": datetime(2026, 11, 26, 15, 0)}, InvalidInput, "now"),
    ],
)
async def test_bad_reservations_raise_and_book_nothing(
    session_factory: Factory,
    settings: Settings,
    kwargs: dict[str, Any],
    error: type[Exception],
    field: str | None,
) -> None:
    with pytest.raises(error) as caught:
        await reserve(session_factory, settings, "r-1", 10, **kwargs)
    assert getattr(caught.value, "field", None) == field
    async with session_factory() as s:
        assert await s.scalar(select(func.count()).select_from(BudgetReservation)) == 0


async def test_a_negative_worst_case_is_refused(
    session_factory: Factory, settings: Settings
) -> None:
    with pytest.raises(InvalidInput) as caught:
        await reserve(session_factory, settings, "r-1", -10)
    assert caught.value.field == "max_input_tokens"


# ----------------------------------------------------------------- the race

TASKS = 32
WORST = 30_000  # each call books 20,000 in + 10,000 out


async def run_agents(
    factory: Factory, settings: Settings, *, reserve_first: bool, seed: int
) -> tuple[int, int]:
    """32 concurrent agents of one user, each calling until the day says stop (or, with
    reservations, until one is refused). Returns (refused reservations, charges)."""
    rng = random.Random(seed)
    refused = 0
    charges = 0

    async def agent(task: int) -> None:
        nonlocal refused, charges
        for call in range(1_000):
            request_id = f"t{task}-c{call}"
            if reserve_first:
                booked = await reserve(
                    factory, settings, request_id, 20_000, 10_000, session_id=f"s-{task % 4}"
                )
                if not booked.granted:
                    refused += 1
                    return
            # The real cost is anything up to the worst case.
            await asyncio.sleep(0)
            result = await charge(
                factory, settings, request_id, rng.randint(5_000, WORST), session_id=f"s-{task % 4}"
            )
            charges += 1
            if result.decision in (Decision.SLEEP, Decision.STOP):
                return

    await asyncio.gather(*(agent(t) for t in range(TASKS)))
    return refused, charges


async def test_32_agents_that_reserve_never_take_the_day_above_110_percent(
    session_factory: Factory, settings: Settings
) -> None:
    refused, charges = await run_agents(session_factory, settings, reserve_first=True, seed=1)
    spent, reserved, open_rows = await day(session_factory)
    assert spent <= CAP
    assert (reserved, open_rows) == (0, 0)  # every reservation settled
    # The race was real: the day was filled close to the cap and calls were turned away.
    assert spent > CAP - TASKS * WORST
    assert refused > 0
    assert charges > 40


async def test_without_reservations_the_same_agents_overshoot(
    session_factory: Factory, settings: Settings
) -> None:
    """The control: the same 32 agents, deciding after each charge, pass 110 % (by up to
    one call in flight per agent), which is what reservations prevent."""
    await charge(session_factory, settings, "warm", CAP - WORST)  # near the cap, as above
    await run_agents(session_factory, settings, reserve_first=False, seed=1)
    spent, _, _ = await day(session_factory)
    assert spent > CAP
