"""Pricing the provider's whole usage against a real PostgreSQL (DESIGN.md §6b): every token
class priced and floored on its own, batch at half, effective-dated prices looked up in
the charge's own statement, the ledger keeping its tokens by class, bad input refused."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from anthropic.types import CacheCreation, Usage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, literal, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.budget import pricing
from app.db.models import AgentCostEvent, BudgetDay, Price
from app.domain import InvalidInput, SessionNotFound, UnknownModel
from app.lifecycle import Runtime, set_price
from app.repositories import BudgetRepository, ChargeResult, PriceRepository
from app.repositories.budget_rules import usage_cost
from app.session_store import RedisSessionStore
from app.settings import OPUS, SONNET, ModelPrice, Settings
from tests.integration.helpers import Factory, ManualClock, make_session
from tests.integration.money import add_user

NOW = datetime(2026, 11, 26, 15, 0, tzinfo=UTC)
DAY = NOW.date()
# DESIGN.md §6b: Sonnet, 1,000 input, 10,000 cache writes of which 4,000 at 1 h,
# 100,000 cache reads and 500 output.
EXAMPLE: dict[str, Any] = {
    "input_tokens": 1_000,
    "output_tokens": 500,
    "cache_creation_input_tokens": 10_000,
    "cache_creation_1h_input_tokens": 4_000,
    "cache_read_input_tokens": 100_000,
}
# The same call as the provider reports it: the writes broken down by TTL.
EXAMPLE_USAGE: dict[str, Any] = {
    "input_tokens": 1_000,
    "output_tokens": 500,
    "cache_creation_input_tokens": 10_000,
    "cache_read_input_tokens": 100_000,
    "cache_creation": {"ephemeral_5m_input_tokens": 6_000, "ephemeral_1h_input_tokens": 4_000},
}


@pytest.fixture
def no_fallback() -> Settings:
    """No configured prices at all: every figure below comes from the prices table."""
    return Settings(_env_file=None, model_prices={}, tier_allowance_partner=3_000_000_000)


async def charge(
    factory: Factory, settings: Settings, request_id: str, **kwargs: Any
) -> ChargeResult:
    async with factory.begin() as s:
        return await BudgetRepository(s, settings).charge(
            session_id=kwargs.pop("session_id", "s-1"),
            request_id=request_id,
            model=kwargs.pop("model", SONNET),
            now=kwargs.pop("now", NOW),
            **kwargs,
        )


async def charge_usage(
    factory: Factory, settings: Settings, request_id: str, usage: Any, **kwargs: Any
) -> ChargeResult:
    async with factory.begin() as s:
        return await BudgetRepository(s, settings).charge_usage(
            session_id="s-1",
            request_id=request_id,
            model=kwargs.pop("model", SONNET),
            usage=usage,
            now=kwargs.pop("now", NOW),
        )


async def ledger(factory: Factory) -> list[AgentCostEvent]:
    async with factory() as s:
        return list(await s.scalars(select(AgentCostEvent).order_by(AgentCostEvent.id)))


async def day_spent(factory: Factory) -> int:
    async with factory() as s:
        total = await s.scalar(select(func.coalesce(func.sum(BudgetDay.spent_microdollars), 0)))
    return int(total or 0)


# ------------------------------------------------------------- the §6b example


async def test_the_example_through_charge(session_factory: Factory, no_fallback: Settings) -> None:
    await make_session(session_factory)
    result = await charge(session_factory, no_fallback, "r-1", **EXAMPLE)
    assert result.cost_microdollars == 3_000 + 22_500 + 24_000 + 30_000 + 7_500 == 87_000
    batch = await charge(session_factory, no_fallback, "r-2", **EXAMPLE, batch=True)
    assert batch.cost_microdollars == 43_500
    assert await day_spent(session_factory) == 130_500
    rows = await ledger(session_factory)
    # The ledger keeps every class, so each row's cost can be audited.
    assert [
        (
            r.input_tokens,
            r.output_tokens,
            r.cache_creation_input_tokens,
            r.cache_creation_1h_input_tokens,
            r.cache_read_input_tokens,
            r.batch,
            r.cost_microdollars,
        )
        for r in rows
    ] == [
        (1_000, 500, 10_000, 4_000, 100_000, False, 87_000),
        (1_000, 500, 10_000, 4_000, 100_000, True, 43_500),
    ]


async def test_the_example_through_charge_usage_as_a_dict(
    session_factory: Factory, no_fallback: Settings
) -> None:
    await make_session(session_factory)
    plain = await charge_usage(session_factory, no_fallback, "r-1", EXAMPLE_USAGE)
    batch = await charge_usage(
        session_factory, no_fallback, "r-2", {**EXAMPLE_USAGE, "service_tier": "batch"}
    )
    assert (plain.cost_microdollars, batch.cost_microdollars) == (87_000, 43_500)
    assert [r.batch for r in await ledger(session_factory)] == [False, True]


async def test_the_example_through_charge_usage_as_an_sdk_usage(
    session_factory: Factory, no_fallback: Settings
) -> None:
    await make_session(session_factory)
    usage = Usage(
        input_tokens=1_000,
        output_tokens=500,
        cache_creation_input_tokens=10_000,
        cache_read_input_tokens=100_000,
        cache_creation=CacheCreation(
            ephemeral_5m_input_tokens=6_000, ephemeral_1h_input_tokens=4_000
        ),
        service_tier="standard",
    )
    assert (
        await charge_usage(session_factory, no_fallback, "r-1", usage)
    ).cost_microdollars == 87_000
    batch = usage.model_copy(update={"service_tier": "batch"})
    assert (
        await charge_usage(session_factory, no_fallback, "r-2", batch)
    ).cost_microdollars == 43_500
    # No breakdown: every cache write at the 5-minute rate, 10,000 x 3.75 = 37,500.
    bare = Usage(
        input_tokens=1_000,
        output_tokens=500,
        cache_creation_input_tokens=10_000,
        cache_read_input_tokens=100_000,
    )
    result = await charge_usage(session_factory, no_fallback, "r-3", bare)
    assert result.cost_microdollars == 3_000 + 37_500 + 30_000 + 7_500 == 78_000
    row = (await ledger(session_factory))[-1]
    assert (row.cache_creation_input_tokens, row.cache_creation_1h_input_tokens) == (10_000, 0)


async def test_an_sdk_usage_without_cache_fields_prices_input_and_output(
    session_factory: Factory, no_fallback: Settings
) -> None:
    await make_session(session_factory)
    usage = Usage(input_tokens=1_000, output_tokens=500)  # the cache fields are None
    result = await charge_usage(session_factory, no_fallback, "r-1", usage, model=OPUS)
    assert result.cost_microdollars == 15_000 + 37_500


async def test_a_duplicate_charges_once_whatever_its_classes(
    session_factory: Factory, no_fallback: Settings
) -> None:
    await make_session(session_factory)
    first = await charge(session_factory, no_fallback, "same", **EXAMPLE)
    again = await charge(session_factory, no_fallback, "same", input_tokens=1, output_tokens=1)
    usage = await charge_usage(
        session_factory, no_fallback, "same", {**EXAMPLE_USAGE, "service_tier": "batch"}
    )
    assert not first.duplicate
    assert again.duplicate
    assert usage.duplicate
    assert again.cost_microdollars == usage.cost_microdollars == 87_000
    assert len(await ledger(session_factory)) == 1
    assert await day_spent(session_factory) == 87_000


# ------------------------------------------------------------ effective dating


async def test_a_price_set_for_a_later_time_changes_later_charges_only(
    session_factory: Factory, store: RedisSessionStore, no_fallback: Settings
) -> None:
    model = f"test-dated-{uuid.uuid4().hex[:8]}"
    clock = ManualClock(NOW - timedelta(days=1))
    rt = Runtime(session_factory, store, no_fallback, clock)
    await set_price(
        rt,
        model=model,
        rates=pricing.rates(1_000_000, 2_000_000),
        effective_from=NOW - timedelta(days=1),
        source="test",
    )
    change = NOW + timedelta(hours=1)
    await set_price(
        rt,
        model=model,
        rates=pricing.rates(3_000_000, 4_000_000, cache_read=0),
        effective_from=change,
        source="test",
    )
    await make_session(session_factory)
    tokens = {"input_tokens": 1_000, "output_tokens": 1_000, "cache_read_input_tokens": 1_000}
    before = await charge(session_factory, no_fallback, "r-1", model=model, now=NOW, **tokens)
    edge = await charge(
        session_factory,
        no_fallback,
        "r-2",
        model=model,
        now=change - timedelta(microseconds=1),
        **tokens,
    )
    at = await charge(session_factory, no_fallback, "r-3", model=model, now=change, **tokens)
    after = await charge(
        session_factory, no_fallback, "r-4", model=model, now=change + timedelta(days=30), **tokens
    )
    # Old price: 1,000 + 2,000 + a read at 0.1x input (100); new: 3,000 + 4,000 + 0.
    assert [r.cost_microdollars for r in (before, edge, at, after)] == [3_100, 3_100, 7_000, 7_000]
    # The rows already written keep their cost: nothing re-prices the past.
    assert [r.cost_microdollars for r in await ledger(session_factory)] == [
        3_100,
        3_100,
        7_000,
        7_000,
    ]


async def test_setting_a_price_in_the_past_or_twice_is_refused(
    session_factory: Factory, store: RedisSessionStore, no_fallback: Settings
) -> None:
    model = f"test-past-{uuid.uuid4().hex[:8]}"
    rt = Runtime(session_factory, store, no_fallback, ManualClock(NOW))
    with pytest.raises(InvalidInput, match="past") as caught:
        await set_price(
            rt, model=model, rates=pricing.rates(1, 1), effective_from=NOW - timedelta(seconds=1),
            source="test",
        )  # fmt: skip
    assert caught.value.field == "effective_from"
    await set_price(rt, model=model, rates=pricing.rates(1, 1), effective_from=NOW, source="test")
    with pytest.raises(InvalidInput, match="never changed in place"):
        await set_price(rt, model=model, rates=pricing.rates(2, 2), effective_from=NOW, source="t")
    async with session_factory() as s:
        rows = await PriceRepository(s).list(model=model)
    assert [e.rates for e in rows] == [pricing.rates(1, 1)]


async def test_the_table_wins_over_the_configured_fallback(session_factory: Factory) -> None:
    """MODEL_PRICES prices only models the table does not know at the charge's time."""
    settings = Settings(
        _env_file=None,
        model_prices={SONNET: ModelPrice(input_per_mtok=1, output_per_mtok=1)},
    )
    await make_session(session_factory)
    result = await charge(session_factory, settings, "r-1", input_tokens=1_000, output_tokens=0)
    assert result.cost_microdollars == 3_000  # the seeded $3 / Mtok, not the fallback
    # Before the model's seeded price takes effect, the fallback applies.
    early = await charge(
        session_factory, settings, "r-2", input_tokens=1_000_000, output_tokens=0,
        now=datetime(2024, 1, 1, tzinfo=UTC),
    )  # fmt: skip
    assert early.cost_microdollars == 1


async def test_an_unknown_model_is_an_error_and_writes_nothing(
    session_factory: Factory, no_fallback: Settings
) -> None:
    await make_session(session_factory)
    with pytest.raises(UnknownModel) as caught:
        await charge(
            session_factory, no_fallback, "r-1", model="gpt-17", input_tokens=1, output_tokens=1
        )
    assert caught.value.model == "gpt-17"
    # A model the table knows only from a later time is unknown before it.
    with pytest.raises(UnknownModel):
        await charge(
            session_factory, no_fallback, "r-2", input_tokens=1, output_tokens=1,
            now=datetime(2025, 5, 13, 23, 59, tzinfo=UTC),
        )  # fmt: skip
    assert await ledger(session_factory) == []
    assert await day_spent(session_factory) == 0


async def test_seeded_prices_name_their_source_and_match_the_design(
    session_factory: Factory,
) -> None:
    async with session_factory() as s:
        # The seed's rows (other tests add models of their own, named test-...).
        rows = list(await s.scalars(select(Price).where(Price.model.like("claude-%"))))
        pinned = {
            model: (entry.rates.input, entry.rates.output)
            for model in (OPUS, SONNET)
            if (entry := await PriceRepository(s).in_force(model, at=NOW)) is not None
        }
    assert len(rows) >= 2
    assert [r.model for r in rows if "https://" not in r.source] == []
    assert pinned == {OPUS: (15_000_000, 75_000_000), SONNET: (3_000_000, 15_000_000)}


# ------------------------------------------------------------------ bad input

BAD_CHARGES: list[tuple[dict[str, Any], str]] = [
    ({"input_tokens": -1, "output_tokens": 0}, "input_tokens"),
    ({"input_tokens": 0, "output_tokens": 0, "cache_read_input_tokens": -5},
     "cache_read_input_tokens"),
    ({"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 1.5},
     "cache_creation_input_tokens"),
    ({"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 10,
      "cache_creation_1h_input_tokens": 11}, "cache_creation_1h_input_tokens"),
    ({"input_tokens": 0, "output_tokens": 0, "batch": "yes"}, "batch"),
    ({"input_tokens": 2**31, "output_tokens": 0}, "input_tokens"),
    ({"input_tokens": 1, "output_tokens": 1, "now": datetime(2026, 11, 26, 15, 0)}, "now"),
]  # fmt: skip

BAD_USAGES: list[tuple[Any, str]] = [
    ({"output_tokens": 1}, "usage.input_tokens"),
    ({"input_tokens": "1000", "output_tokens": 1}, "usage.input_tokens"),
    ({"input_tokens": 1, "output_tokens": -1}, "usage.output_tokens"),
    ({"input_tokens": 1, "output_tokens": 1, "service_tier": "flex"}, "usage.service_tier"),
    ({"input_tokens": 1, "output_tokens": 1, "speed": "fast"}, "usage.speed"),
    (
        {"input_tokens": 1, "output_tokens": 1, "cache_creation_input_tokens": 5,
         "cache_creation": {"ephemeral_5m_input_tokens": 1, "ephemeral_1h_input_tokens": 1}},
        "usage.cache_creation",
    ),
    (
        {"input_tokens": 1, "output_tokens": 1,
         "cache_creation": {"ephemeral_1h_input_tokens": -3}},
        "usage.cache_creation.ephemeral_1h_input_tokens",
    ),
    ({"input_tokens": 1, "output_tokens": 1, "cache_creation": 7}, "usage.cache_creation"),
    ("input_tokens=1", "usage"),
    (None, "usage"),
]  # fmt: skip


@pytest.mark.parametrize(("kwargs", "field"), BAD_CHARGES)
async def test_bad_charges_name_the_field_and_write_nothing(
    session_factory: Factory, no_fallback: Settings, kwargs: dict[str, Any], field: str
) -> None:
    await make_session(session_factory)
    with pytest.raises(InvalidInput) as caught:
        await charge(session_factory, no_fallback, "r-1", **kwargs)
    assert caught.value.field == field
    assert field in str(caught.value)
    assert await ledger(session_factory) == []


@pytest.mark.parametrize(("usage", "field"), BAD_USAGES)
async def test_bad_usages_name_the_field_and_write_nothing(
    session_factory: Factory, no_fallback: Settings, usage: Any, field: str
) -> None:
    await make_session(session_factory)
    with pytest.raises(InvalidInput) as caught:
        await charge_usage(session_factory, no_fallback, "r-1", usage)
    assert caught.value.field == field
    assert await ledger(session_factory) == []


async def test_a_missing_session_is_named(session_factory: Factory, no_fallback: Settings) -> None:
    with pytest.raises(SessionNotFound) as caught:
        await charge(session_factory, no_fallback, "r-1", session_id="ghost", **EXAMPLE)
    assert caught.value.session_id == "ghost"


# ---------------------------------------------- the SQL twin of usage_cost

CLASSES = st.integers(0, pricing.MAX_TOKENS_PER_CALL)
PRICES = st.integers(0, pricing.MAX_PRICE_PER_MTOK)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    tokens=st.tuples(CLASSES, CLASSES, CLASSES, CLASSES, CLASSES),
    prices=st.tuples(PRICES, PRICES, PRICES, PRICES, PRICES),
    batch=st.booleans(),
)
async def test_the_sql_cost_is_the_python_cost(
    engine: AsyncEngine,
    tokens: tuple[int, int, int, int, int],
    prices: tuple[int, int, int, int, int],
    batch: bool,
) -> None:
    """The charge's SQL expression (budget_rules.usage_cost) and pricing.usage_cost agree
    to the microdollar, however large the figures (numeric, no BIGINT overflow)."""
    i, o, writes, hour, reads = tokens
    writes = max(writes, hour)
    usage = pricing.token_usage(
        input_tokens=i, output_tokens=o, cache_creation_input_tokens=writes,
        cache_creation_1h_input_tokens=hour, cache_read_input_tokens=reads, batch=batch,
    )  # fmt: skip
    rates = pricing.Rates(*prices)
    divisor = literal(pricing.TOKENS_PER_PRICE_UNIT * (2 if batch else 1))
    expr = usage_cost(
        [
            (literal(i), literal(rates.input)),
            (literal(writes - hour), literal(rates.cache_write_5m)),
            (literal(hour), literal(rates.cache_write_1h)),
            (literal(reads), literal(rates.cache_read)),
            (literal(o), literal(rates.output)),
        ],
        divisor,
    )
    async with engine.connect() as conn:
        got = await conn.scalar(select(expr))
    assert got == pricing.usage_cost(rates, usage)


async def test_a_first_charge_of_the_day_prices_every_class_too(
    session_factory: Factory, no_fallback: Settings
) -> None:
    """The day's first charge takes the slower path that makes the day's row."""
    await add_user(session_factory)
    await make_session(session_factory)
    first = await charge(session_factory, no_fallback, "r-1", **EXAMPLE)
    second = await charge(
        session_factory, no_fallback, "r-2", **EXAMPLE, now=NOW + timedelta(days=1)
    )
    assert first.cost_microdollars == second.cost_microdollars == 87_000
    assert await day_spent(session_factory) == 174_000
