"""Where two money features meet (issue 24, DESIGN.md §6c): reservations retried after
their TTL, reservations across midnight and a period boundary, erasure and completion
with reservations open, request ids of two users, and top-ups retried by key."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import func, select

from app.bootstrap import UsageError
from app.budget.pricing import MAX_PRICE_PER_MTOK, MAX_TOKENS_PER_CALL
from app.cli import build_parser, cmd_top_up
from app.db.models import (
    AgentCheckpoint,
    AgentCostEvent,
    AgentEvent,
    AgentSession,
    BudgetCredit,
    BudgetDay,
    BudgetReservation,
    UserSettings,
)
from app.domain import (
    Decision,
    EventType,
    InvalidInput,
    InvalidTransition,
    SessionNotFound,
    TransactionConflict,
)
from app.lifecycle import (
    Runtime,
    charge,
    complete_session,
    delete_session,
    enforce_budgets,
    purge_finished,
    reserve,
    sleep_session,
    start_session,
    top_up,
)
from app.repositories import ChargeResult, Reservation
from app.session_store import RedisSessionStore
from app.settings import ModelPrice, Settings
from tests.integration.helpers import Factory, ManualClock
from tests.integration.money import ONE_PER_TOKEN, add_user

NOW = datetime(2026, 11, 26, 15, 0, tzinfo=UTC)
BUDGET = 1_000_000  # a 30,000,000 µ$ override over 30 days (no renewal date)
CAP = BUDGET * 110 // 100
TTL = 600
WORST = 30_000


@pytest.fixture
def settings() -> Settings:
    return Settings(
        _env_file=None,
        model_prices={ONE_PER_TOKEN: ModelPrice(input_per_mtok=1_000_000, output_per_mtok=0)},
        reservation_ttl_seconds=TTL,
        tier_allowance_partner=30 * BUDGET,
    )


@pytest.fixture
def rt(session_factory: Factory, store: RedisSessionStore, settings: Settings) -> Runtime:
    return Runtime(session_factory, store, settings, ManualClock(NOW))


async def start(rt: Runtime, *ids: str, user: str = "u-1") -> None:
    for sid in ids:
        await start_session(rt, session_id=sid, job_id="j", clerk_user_id=user, tier="partner")


async def book(
    rt: Runtime, session_id: str, request_id: str, worst: int, at: datetime
) -> Reservation:
    return await reserve(
        rt,
        session_id=session_id,
        request_id=request_id,
        model=ONE_PER_TOKEN,
        max_input_tokens=worst,
        max_output_tokens=0,
        now=at,
    )


async def pay(
    rt: Runtime, session_id: str, request_id: str, cost: int, at: datetime
) -> ChargeResult:
    return await charge(
        rt,
        session_id=session_id,
        request_id=request_id,
        model=ONE_PER_TOKEN,
        input_tokens=cost,
        output_tokens=0,
        now=at,
    )


async def day(factory: Factory, on: date, user: str = "u-1") -> dict[str, int]:
    """The user's day as the books show it: spend, budget, the reserved total, and the
    sum of the open reservation rows it must equal."""
    async with factory() as s:
        row = (
            await s.execute(
                select(
                    BudgetDay.spent_microdollars,
                    BudgetDay.budget_microdollars,
                    BudgetDay.reserved_microdollars,
                ).where(BudgetDay.clerk_user_id == user, BudgetDay.day == on)
            )
        ).one_or_none()
        rows = await s.scalar(
            select(func.coalesce(func.sum(BudgetReservation.amount_microdollars), 0)).where(
                BudgetReservation.clerk_user_id == user, BudgetReservation.budget_day == on
            )
        )
    spent, budget, reserved = row if row is not None else (0, 0, 0)
    return {"spent": spent, "budget": budget, "reserved": reserved, "rows": int(rows or 0)}


# ----------------------------------------------- finding 2: a retry after the TTL


async def test_a_retried_expired_reservation_that_no_longer_fits_is_refused(
    rt: Runtime, session_factory: Factory
) -> None:
    await add_user(session_factory, override=30 * BUDGET)
    await start(rt, "s-1", "s-2")
    assert (await book(rt, "s-1", "call-1", 500_000, NOW)).granted
    expired = NOW + timedelta(seconds=TTL)
    await pay(rt, "s-2", "other", BUDGET, expired)  # the day fills while it is out
    retried = await book(rt, "s-1", "call-1", 500_000, expired + timedelta(seconds=1))
    assert retried == Reservation(False, 0, Decision.SLEEP)
    figures = await day(session_factory, NOW.date())
    assert (figures["reserved"], figures["rows"]) == (0, 0)  # nothing booked


async def test_a_retried_expired_reservation_that_fits_is_booked_again(
    rt: Runtime, session_factory: Factory
) -> None:
    await add_user(session_factory, override=30 * BUDGET)
    await start(rt, "s-1")
    assert (await book(rt, "s-1", "call-1", 500_000, NOW)).granted
    # Yesterday's expired reservation, retried today: booked anew on today, released
    # from yesterday.
    tomorrow = NOW + timedelta(days=1)
    assert await book(rt, "s-1", "call-1", 200_000, tomorrow) == Reservation(
        True, 200_000, Decision.CONTINUE
    )
    assert await day(session_factory, NOW.date()) == {
        "spent": 0,
        "budget": BUDGET,
        "reserved": 0,
        "rows": 0,
    }
    today = await day(session_factory, tomorrow.date())
    assert (today["reserved"], today["rows"]) == (200_000, 200_000)
    # Its charge settles the new booking.
    await pay(rt, "s-1", "call-1", 150_000, tomorrow + timedelta(seconds=5))
    today = await day(session_factory, tomorrow.date())
    assert (today["spent"], today["reserved"], today["rows"]) == (150_000, 0, 0)


async def test_agents_that_retry_expired_reservations_never_pass_110_percent(
    rt: Runtime, session_factory: Factory
) -> None:
    """32 agents book a call each; every booking expires while another session spends
    the day's budget; then all 32 retry their booking at once and make the call when it
    is granted. Only what fits may be granted: the day ends within 110 %."""
    await add_user(session_factory, override=30 * BUDGET)
    agents = [f"s-{i}" for i in range(32)]
    await start(rt, "spender", *agents)
    first = await asyncio.gather(*(book(rt, sid, f"{sid}-call", WORST, NOW) for sid in agents))
    assert all(r.granted for r in first)
    expired = NOW + timedelta(seconds=TTL)
    await pay(rt, "spender", "spend", BUDGET, expired)

    async def retry_then_call(sid: str) -> bool:
        again = await book(rt, sid, f"{sid}-call", WORST, expired)
        if again.granted:
            await pay(rt, sid, f"{sid}-call", WORST, expired + timedelta(seconds=1))
        return again.granted

    granted = await asyncio.gather(*(retry_then_call(sid) for sid in agents))
    figures = await day(session_factory, NOW.date())
    assert figures["spent"] <= CAP
    assert sum(granted) == (CAP - BUDGET) // WORST  # exactly what fits: 3 calls
    assert (figures["reserved"], figures["rows"]) == (0, 0)


# ---------------------------------- finding 3: reservations across midnight


MIDNIGHT = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)
LAST_DAY = date(2026, 11, 30)
FIRST_DAY = date(2026, 12, 1)


@pytest.mark.parametrize("renewal", [None, MIDNIGHT], ids=["no-renewal", "new-period"])
async def test_reservations_booked_before_midnight_and_charged_after_stay_on_their_day(
    rt: Runtime, session_factory: Factory, renewal: datetime | None
) -> None:
    """A real race across an injected midnight: 32 agents each book a call in the last
    minute of the day (or of the billing period), then, after midnight, book a second
    call on the new day and charge both. Every call is booked before it is made and
    costs what it booked, so no day may pass 110 % of its budget; on 019a53b the first
    calls landed on the new day as well, doubling its spend."""
    await add_user(session_factory, override=30 * BUDGET, renewal=renewal)
    agents = [f"s-{i}" for i in range(32)]
    await start(rt, *agents)

    async def agent(i: int, sid: str) -> None:
        late = MIDNIGHT - timedelta(seconds=60) + timedelta(seconds=i)
        assert (await book(rt, sid, f"{sid}-late", WORST, late)).granted
        after = MIDNIGHT + timedelta(seconds=30 + i)
        second = await book(rt, sid, f"{sid}-next", WORST, after)
        first = await pay(rt, sid, f"{sid}-late", WORST, after)
        if second.granted:
            await pay(rt, sid, f"{sid}-next", WORST, after + timedelta(seconds=1))
        assert first.decision is not Decision.STOP

    await asyncio.gather(*(agent(i, sid) for i, sid in enumerate(agents)))
    old, new = await day(session_factory, LAST_DAY), await day(session_factory, FIRST_DAY)
    assert old["spent"] == 32 * WORST  # every late call on the day it was booked on
    for figures in (old, new):
        assert figures["spent"] * 100 <= figures["budget"] * 110
        assert (figures["reserved"], figures["rows"]) == (0, 0)
    async with session_factory() as s:
        days = dict(
            (
                await s.execute(
                    select(AgentCostEvent.budget_day, func.count()).group_by(
                        AgentCostEvent.budget_day
                    )
                )
            ).all()
        )
    assert days[LAST_DAY] == 32


async def test_a_late_reservation_settles_on_its_day_with_its_days_decision(
    rt: Runtime, session_factory: Factory
) -> None:
    """The decision of a charge that settles yesterday's reservation is yesterday's:
    a day at 95 % answers ``wind_down`` even though the new day is empty."""
    await add_user(session_factory, override=30 * BUDGET)
    await start(rt, "s-1")
    before = MIDNIGHT - timedelta(seconds=30)
    await pay(rt, "s-1", "earlier", 900_000, before)
    assert (await book(rt, "s-1", "late", 50_000, before)).granted
    result = await pay(rt, "s-1", "late", 50_000, MIDNIGHT + timedelta(seconds=5))
    assert (result.spent_microdollars, result.budget_microdollars) == (950_000, BUDGET)
    assert result.decision is Decision.WIND_DOWN
    assert (await day(session_factory, FIRST_DAY))["spent"] == 0


# ------------------------------------------- finding 5: request ids per user


async def test_the_same_request_id_from_two_users_is_two_calls(
    rt: Runtime, session_factory: Factory
) -> None:
    await add_user(session_factory, "u-a", override=30 * BUDGET)
    await add_user(session_factory, "u-b", override=60 * BUDGET)
    await start(rt, "a-1", "a-2", user="u-a")
    await start(rt, "b-1", user="u-b")
    a = await pay(rt, "a-1", "msg_01", 1_000, NOW)
    b = await pay(rt, "b-1", "msg_01", 2_000, NOW)
    assert not b.duplicate
    assert (b.cost_microdollars, b.spent_microdollars, b.budget_microdollars) == (
        2_000,
        2_000,
        2 * BUDGET,
    )
    # A retry by the same user, from another of its sessions, is the same call.
    again = await pay(rt, "a-2", "msg_01", 1_000, NOW)
    assert again.duplicate
    assert (again.cost_microdollars, again.spent_microdollars) == (a.cost_microdollars, 1_000)
    assert (await day(session_factory, NOW.date(), "u-a"))["spent"] == 1_000
    assert (await day(session_factory, NOW.date(), "u-b"))["spent"] == 2_000
    async with session_factory() as s:
        ledger = (
            await s.execute(
                select(AgentCostEvent.clerk_user_id, AgentCostEvent.cost_microdollars).order_by(
                    AgentCostEvent.clerk_user_id
                )
            )
        ).all()
    assert [tuple(r) for r in ledger] == [("u-a", 1_000), ("u-b", 2_000)]


async def test_the_same_request_id_reserved_by_two_users_is_two_reservations(
    rt: Runtime, session_factory: Factory
) -> None:
    await add_user(session_factory, "u-a", override=30 * BUDGET)
    await add_user(session_factory, "u-b", override=30 * BUDGET)
    await start(rt, "a-1", user="u-a")
    await start(rt, "b-1", user="u-b")
    assert (await book(rt, "a-1", "r-1", 500, NOW)).reserved_microdollars == 500
    assert (await book(rt, "b-1", "r-1", 700, NOW)).reserved_microdollars == 700
    await pay(rt, "b-1", "r-1", 600, NOW)  # settles b's reservation, not a's
    a = await day(session_factory, NOW.date(), "u-a")
    b = await day(session_factory, NOW.date(), "u-b")
    assert (a["reserved"], a["rows"], a["spent"]) == (500, 500, 0)
    assert (b["reserved"], b["rows"], b["spent"]) == (0, 0, 600)


# ------------------- finding 4: erasure, purge and completion release reservations


async def _reserved_after(rt: Runtime, session_factory: Factory, end: str) -> dict[str, int]:
    await add_user(session_factory, override=30 * BUDGET)
    await start(rt, "s-1", "s-2")
    assert (await book(rt, "s-1", "whole-day", CAP, NOW)).granted
    if end == "delete":
        await delete_session(rt, "s-1")
    elif end == "cancel":
        # An operator's ``sessions cancel`` is complete_session without a token.
        await complete_session(rt, "s-1")
    else:
        await complete_session(rt, "s-1")
        # A reservation made after completion (reserve takes no token) is purged too.
        assert (await book(rt, "s-1", "after-the-end", CAP, NOW)).granted
        report = await purge_finished(rt, older_than_days=0)
        assert report.session_ids == ["s-1"]
    return await day(session_factory, NOW.date())


@pytest.mark.parametrize("end", ["delete", "cancel", "purge"])
async def test_ending_a_session_releases_its_reservations_at_once(
    rt: Runtime, session_factory: Factory, end: str
) -> None:
    """The day's reserved total drops in the same transaction, before any TTL: the
    user's other session can book the whole day right away."""
    figures = await _reserved_after(rt, session_factory, end)
    assert (figures["reserved"], figures["rows"]) == (0, 0)
    after = await book(rt, "s-2", "next", CAP, NOW + timedelta(seconds=1))
    assert (after.granted, after.reserved_microdollars) == (True, CAP)


async def test_sessions_ended_while_others_reserve_leave_the_books_exact(
    rt: Runtime, session_factory: Factory
) -> None:
    """A real race: 8 sessions keep booking calls while 4 of them are deleted and 4
    completed under them. Afterwards the day's reserved total is exactly the sum of the
    reservations still open: nothing an ended session held is left counted."""
    await add_user(session_factory, override=30 * BUDGET)
    sessions = [f"s-{i}" for i in range(8)]
    await start(rt, *sessions)

    async def keep_booking(sid: str) -> None:
        for n in range(40):
            try:
                await book(rt, sid, f"{sid}-{n}", 1_000, NOW)
            except (SessionNotFound, InvalidTransition, TransactionConflict):
                return
            await asyncio.sleep(0)

    async def end(i: int, sid: str) -> None:
        await asyncio.sleep(0.01 * i)
        # PostgreSQL may pick either side of a three-way lock cycle as a deadlock's
        # victim: TransactionConflict, nothing changed, run it again
        # (BudgetRepository.release_reservations).
        for _ in range(5):
            try:
                if i % 2:
                    await delete_session(rt, sid)
                else:
                    await complete_session(rt, sid)
                return
            except TransactionConflict:
                continue
        raise AssertionError(f"{sid} could not be ended")

    await asyncio.gather(
        *(keep_booking(sid) for sid in sessions), *(end(i, sid) for i, sid in enumerate(sessions))
    )
    figures = await day(session_factory, NOW.date())
    assert figures["reserved"] == figures["rows"]
    async with session_factory() as s:
        left = await s.scalar(select(func.count()).select_from(BudgetReservation))
    assert left == figures["rows"] // 1_000


# --------------------------------------------------------- finding 6: overflow

HUGE = "largest-prices"
MAX = 2**63 - 1


async def test_charges_after_the_largest_top_up_are_all_recorded_at_their_exact_cost(
    session_factory: Factory, store: RedisSessionStore
) -> None:
    """The largest prices and token counts, after a 2**63-1 top-up: on 019a53b about the
    1,073rd call failed with SQLSTATE 22003 and was not recorded. Every call is recorded
    at its exact cost; the day's spend and the session's total hold at 2**63-1."""
    settings = Settings(
        _env_file=None,
        model_prices={
            HUGE: ModelPrice(
                input_per_mtok=MAX_PRICE_PER_MTOK,
                output_per_mtok=MAX_PRICE_PER_MTOK,
                cache_write_5m_per_mtok=MAX_PRICE_PER_MTOK,
                cache_write_1h_per_mtok=MAX_PRICE_PER_MTOK,
                cache_read_per_mtok=MAX_PRICE_PER_MTOK,
            )
        },
    )
    rt = Runtime(session_factory, store, settings, ManualClock(NOW))
    await add_user(session_factory)
    await start(rt, "s-1")
    await top_up(rt, clerk_user_id="u-1", amount_microdollars=MAX, now=NOW)
    calls = 1_100
    for n in range(calls):
        result = await charge(
            rt,
            session_id="s-1",
            request_id=f"r-{n}",
            model=HUGE,
            input_tokens=MAX_TOKENS_PER_CALL,
            output_tokens=MAX_TOKENS_PER_CALL,
            cache_creation_input_tokens=MAX_TOKENS_PER_CALL,
            cache_creation_1h_input_tokens=MAX_TOKENS_PER_CALL,
            cache_read_input_tokens=MAX_TOKENS_PER_CALL,
            now=NOW,
        )
    per_class = MAX_TOKENS_PER_CALL * MAX_PRICE_PER_MTOK // 1_000_000
    one_call = 4 * per_class  # in, out, cache writes (all 1 h), cache reads
    assert result.cost_microdollars == one_call
    assert (result.spent_microdollars, result.budget_microdollars) == (MAX, MAX)
    async with session_factory() as s:
        recorded, total = (
            await s.execute(select(func.count(), func.sum(AgentCostEvent.cost_microdollars)))
        ).one()
        cumulative = await s.scalar(
            select(AgentSession.cumulative_cost_microdollars).where(AgentSession.id == "s-1")
        )
    assert (recorded, int(total)) == (calls, calls * one_call)  # exact, past 2**63
    assert cumulative == MAX
    # The first charge of the next day (which makes the day's row) works too.
    next_day = await charge(
        rt,
        session_id="s-1",
        request_id="tomorrow",
        model=HUGE,
        input_tokens=MAX_TOKENS_PER_CALL,
        output_tokens=0,
        now=NOW + timedelta(days=1),
    )
    assert next_day.cost_microdollars == per_class
    # A reservation and a daemon pass over these figures work too.
    booked = await reserve(
        rt,
        session_id="s-1",
        request_id="one-more",
        model=HUGE,
        max_input_tokens=MAX_TOKENS_PER_CALL,
        max_output_tokens=MAX_TOKENS_PER_CALL,
        max_cache_creation_input_tokens=MAX_TOKENS_PER_CALL,
        now=NOW,
    )
    # 2**63-1 spent of 2**63-1 is 100 %: the worst case still fits under 110 %.
    worst = 3 * per_class  # in, out, 1-hour cache writes
    assert (booked.granted, booked.reserved_microdollars) == (True, worst)
    assert (await day(session_factory, NOW.date()))["reserved"] == worst
    await enforce_budgets(rt, limit=100)


async def test_figures_that_cannot_be_stored_are_refused_where_they_enter(
    rt: Runtime, session_factory: Factory
) -> None:
    with pytest.raises(InvalidInput) as caught:
        UserSettings(clerk_user_id="u-x", tier="partner", budget_override_microdollars=MAX + 1)
    assert caught.value.field == "budget_override_microdollars"
    await add_user(session_factory)
    with pytest.raises(InvalidInput) as caught:
        await top_up(rt, clerk_user_id="u-1", amount_microdollars=MAX + 1, now=NOW)
    assert caught.value.field == "amount_microdollars"
    async with session_factory() as s:
        assert await s.scalar(select(func.count()).select_from(BudgetCredit)) == 0


# ---------------------------------------------- top-ups are idempotent by key


async def _credits(factory: Factory) -> list[tuple[str, int]]:
    async with factory() as s:
        rows = await s.execute(
            select(BudgetCredit.clerk_user_id, BudgetCredit.amount_microdollars).order_by(
                BudgetCredit.clerk_user_id
            )
        )
        return [(user, int(amount)) for user, amount in rows]


async def _topped_up_events(factory: Factory) -> int:
    async with factory() as s:
        return int(
            await s.scalar(
                select(func.count())
                .select_from(AgentEvent)
                .where(AgentEvent.type == EventType.TOPPED_UP.value)
            )
            or 0
        )


async def test_a_retried_top_up_credits_once_and_moves_nothing(
    rt: Runtime, session_factory: Factory
) -> None:
    await add_user(session_factory, override=30 * BUDGET)
    await start(rt, "s-1")
    await pay(rt, "s-1", "all-of-it", BUDGET, NOW)
    asleep = await sleep_session(rt, AgentCheckpoint(session_id="s-1", job_id="j"), now=NOW)
    assert asleep.status == "sleeping"
    first = await top_up(
        rt, clerk_user_id="u-1", amount_microdollars=BUDGET, now=NOW, idempotency_key="pay_1"
    )
    assert first == 1  # the sleeper was made due
    again = await top_up(
        rt, clerk_user_id="u-1", amount_microdollars=BUDGET, now=NOW, idempotency_key="pay_1"
    )
    assert again == 0
    assert await _credits(session_factory) == [("u-1", BUDGET)]
    assert (await day(session_factory, NOW.date()))["budget"] == 2 * BUDGET
    assert await _topped_up_events(session_factory) == 1
    # The same key with another amount is a mistake, not a retry.
    with pytest.raises(InvalidInput) as caught:
        await top_up(
            rt, clerk_user_id="u-1", amount_microdollars=5, now=NOW, idempotency_key="pay_1"
        )
    assert caught.value.field == "idempotency_key"
    assert await _credits(session_factory) == [("u-1", BUDGET)]


async def test_concurrent_retries_of_one_top_up_credit_once_and_keys_belong_to_a_user(
    rt: Runtime, session_factory: Factory
) -> None:
    await add_user(session_factory, "u-a")
    await add_user(session_factory, "u-b")

    async def buy(user: str) -> int:
        return await top_up(
            rt, clerk_user_id=user, amount_microdollars=700, now=NOW, idempotency_key="k"
        )

    await asyncio.gather(*(buy("u-a") for _ in range(8)), *(buy("u-b") for _ in range(8)))
    assert await _credits(session_factory) == [("u-a", 700), ("u-b", 700)]
    assert await _topped_up_events(session_factory) == 2


async def test_the_cli_top_up_takes_an_idempotency_key(
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
    argv = ["top-up", "cli-user", "2.50", "--idempotency-key", "invoice-7"]
    for _ in range(2):
        assert await cmd_top_up(settings, build_parser().parse_args(argv)) == 0
    assert await _credits(session_factory) == [("cli-user", 2_500_000)]
    other = build_parser().parse_args(["top-up", "cli-user", "3", "--idempotency-key", "invoice-7"])
    with pytest.raises(UsageError, match="idempotency_key"):
        await cmd_top_up(settings, other)
    capsys.readouterr()
