"""Prices as the provider bills them, against a real PostgreSQL (issue 29, DESIGN.md §6b):
bands by prompt size priced in the charge's and the reservation's own statement, web
search priced per use, an unpriced billable field refused with nothing written, the
seed of current models, and migration 0010 up and down."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from anthropic.types import CacheCreation, Message, ServerToolUsage, TextBlock, Usage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.budget import pricing
from app.db.engine import create_engine
from app.db.migrate import downgrade, upgrade
from app.db.models import AgentCostEvent, BudgetDay, BudgetReservation, PriceBand
from app.domain import Decision, InvalidInput, UnknownModel
from app.integrations.anthropic import charge_message
from app.lifecycle import Runtime, set_price
from app.repositories import BudgetRepository, ChargeResult, PriceRepository
from app.repositories.price_sql import call_cost, fallback_params, usage_binds, usage_params
from app.session_store import RedisSessionStore
from app.settings import SONNET, ModelPrice, ModelPriceBand, Settings
from tests.integration.helpers import Factory, ManualClock, make_session
from tests.integration.money import add_user

NOW = datetime(2026, 11, 26, 15, 0, tzinfo=UTC)
SONNET_45 = "claude-sonnet-4-5"

# µ$ per million tokens: input, output, 5-minute write, 1-hour write, read.
SONNET_RATES = (3_000_000, 15_000_000, 3_750_000, 6_000_000, 300_000)
SONNET_LONG = (6_000_000, 22_500_000, 7_500_000, 12_000_000, 600_000)
OPUS_45 = (5_000_000, 25_000_000, 6_250_000, 10_000_000, 500_000)
OPUS_46_LONG = (10_000_000, 37_500_000, 12_500_000, 20_000_000, 1_000_000)
HAIKU_55 = (100_000, 500_000, 125_000, 200_000, 10_000)
HAIKU_55_LONG = (500_000, 2_500_000, 625_000, 1_000_000, 50_000)
BEFORE_FLAT = datetime(2026, 2, 1, tzinfo=UTC)  # the 4.6 models were banded until Mar 13


@pytest.fixture
def no_fallback() -> Settings:
    """No configured prices: every figure comes from the prices table and its bands."""
    return Settings(_env_file=None, model_prices={})


def by_hand(rates: tuple[int, int, int, int, int], i: int, w5: int, w1: int, r: int, o: int) -> int:
    """The §6b rule written out: each class priced and floored on its own."""
    ri, ro, r5, r1, rr = rates
    return i * ri // 10**6 + w5 * r5 // 10**6 + w1 * r1 // 10**6 + r * rr // 10**6 + o * ro // 10**6


async def charge(
    factory: Factory, settings: Settings, request_id: str, **kwargs: Any
) -> ChargeResult:
    async with factory.begin() as s:
        return await BudgetRepository(s, settings).charge(
            session_id=kwargs.pop("session_id", "s-1"),
            request_id=request_id,
            model=kwargs.pop("model", SONNET_45),
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
            model=kwargs.pop("model", SONNET_45),
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


# ----------------------------------------------------------- the worked examples


async def test_the_worked_examples_of_issue_29(
    session_factory: Factory, no_fallback: Settings
) -> None:
    await make_session(session_factory, model=SONNET_45)
    over = await charge(
        session_factory, no_fallback, "r-1", input_tokens=250_000, output_tokens=2_000
    )
    # Above 200k prompt tokens, every token at $6 / $22.50.
    assert over.cost_microdollars == 1_500_000 + 45_000 == 1_545_000
    under = await charge(
        session_factory, no_fallback, "r-2", input_tokens=150_000, output_tokens=2_000
    )
    assert under.cost_microdollars == 450_000 + 30_000 == 480_000
    searched = await charge(
        session_factory,
        no_fallback,
        "r-3",
        input_tokens=150_000,
        output_tokens=2_000,
        web_search_requests=3,
    )
    # 3 web searches at $10 per 1,000, on top of the tokens.
    assert searched.cost_microdollars == 480_000 + 30_000 == 510_000
    assert [
        (r.cost_microdollars, r.web_search_requests) for r in await ledger(session_factory)
    ] == [
        (1_545_000, 0),
        (480_000, 0),
        (510_000, 3),
    ]
    assert await day_spent(session_factory) == 1_545_000 + 480_000 + 510_000


async def test_the_design_example_is_unchanged_on_the_banded_sonnet_4(
    session_factory: Factory, no_fallback: Settings
) -> None:
    """DESIGN.md §6b: 87,000 µ$ (its prompt of 111,000 tokens passes no band)."""
    await make_session(session_factory)
    example = {
        "input_tokens": 1_000,
        "output_tokens": 500,
        "cache_creation_input_tokens": 10_000,
        "cache_creation_1h_input_tokens": 4_000,
        "cache_read_input_tokens": 100_000,
    }
    plain = await charge(session_factory, no_fallback, "r-1", model=SONNET, **example)
    batch = await charge(session_factory, no_fallback, "r-2", model=SONNET, batch=True, **example)
    assert (plain.cost_microdollars, batch.cost_microdollars) == (87_000, 43_500)


# ------------------------------------------------- just under and just over each band

BANDED = [
    ("claude-sonnet-4-20250514", NOW, 200_000, SONNET_RATES, SONNET_LONG),
    ("claude-sonnet-4-0", NOW, 200_000, SONNET_RATES, SONNET_LONG),
    ("claude-sonnet-4-5", NOW, 200_000, SONNET_RATES, SONNET_LONG),
    ("claude-sonnet-4-5-20250929", NOW, 200_000, SONNET_RATES, SONNET_LONG),
    ("claude-sonnet-4-6", BEFORE_FLAT, 200_000, SONNET_RATES, SONNET_LONG),
    ("claude-opus-4-6", BEFORE_FLAT, 200_000, OPUS_45, OPUS_46_LONG),
    ("claude-haiku-5-5", NOW, 100_000, HAIKU_55, HAIKU_55_LONG),
]


@pytest.mark.parametrize(("model", "at", "threshold", "base", "band"), BANDED)
async def test_a_call_just_under_and_just_over_each_threshold(
    session_factory: Factory,
    no_fallback: Settings,
    model: str,
    at: datetime,
    threshold: int,
    base: tuple[int, int, int, int, int],
    band: tuple[int, int, int, int, int],
) -> None:
    """The prompt is input + cache writes + cache reads: a prompt of exactly the
    threshold pays the base rates, one token more pays the band's for every token."""
    await make_session(session_factory, model=model)
    writes, hour, reads, out = 40_000, 10_000, 20_000, 1_000
    results = {}
    for name, extra in (("under", 0), ("over", 1)):
        inp = threshold - writes - reads + extra
        results[name] = await charge(
            session_factory, no_fallback, f"r-{name}", model=model, now=at,
            input_tokens=inp, output_tokens=out, cache_creation_input_tokens=writes,
            cache_creation_1h_input_tokens=hour, cache_read_input_tokens=reads,
        )  # fmt: skip
    inp = threshold - writes - reads
    under = by_hand(base, inp, writes - hour, hour, reads, out)
    over = by_hand(band, inp + 1, writes - hour, hour, reads, out)
    assert results["under"].cost_microdollars == under
    assert results["over"].cost_microdollars == over
    assert over > under
    # Cache reads count towards the prompt too: the same call with one more read.
    more_reads = await charge(
        session_factory, no_fallback, "r-read", model=model, now=at,
        input_tokens=inp, output_tokens=out, cache_creation_input_tokens=writes,
        cache_creation_1h_input_tokens=hour, cache_read_input_tokens=reads + 1,
    )  # fmt: skip
    assert more_reads.cost_microdollars == by_hand(band, inp, writes - hour, hour, reads + 1, out)


async def test_the_sonnet_4_5_band_to_the_microdollar(
    session_factory: Factory, no_fallback: Settings
) -> None:
    await make_session(session_factory, model=SONNET_45)
    at = await charge(
        session_factory, no_fallback, "r-1", input_tokens=200_000, output_tokens=2_000
    )
    above = await charge(
        session_factory, no_fallback, "r-2", input_tokens=200_001, output_tokens=2_000
    )
    assert at.cost_microdollars == 600_000 + 30_000
    assert above.cost_microdollars == 1_200_006 + 45_000  # every token, not only the last
    # A batch halves the band's rates too.
    batch = await charge(
        session_factory, no_fallback, "r-3", input_tokens=200_001, output_tokens=2_000, batch=True
    )
    assert batch.cost_microdollars == 600_003 + 22_500


# ------------------------------------------------------------------ effective dating


async def test_a_band_change_effective_at_a_future_time(
    session_factory: Factory, store: RedisSessionStore, no_fallback: Settings
) -> None:
    model = f"test-band-{uuid.uuid4().hex[:8]}"
    rt = Runtime(session_factory, store, no_fallback, ManualClock(NOW - timedelta(days=1)))
    base = pricing.rates(1_000_000, 2_000_000)
    await set_price(
        rt, model=model, rates=base, effective_from=NOW - timedelta(days=1), source="test"
    )
    change = NOW + timedelta(hours=1)
    await set_price(
        rt, model=model, rates=base, effective_from=change, source="test",
        bands=[pricing.band(1_000, base, 10_000_000, 20_000_000)],
    )  # fmt: skip
    await make_session(session_factory, model=model)
    tokens = {"input_tokens": 1_001, "output_tokens": 10}
    before = await charge(session_factory, no_fallback, "r-1", model=model, now=NOW, **tokens)
    edge = await charge(
        session_factory, no_fallback, "r-2", model=model,
        now=change - timedelta(microseconds=1), **tokens,
    )  # fmt: skip
    at = await charge(session_factory, no_fallback, "r-3", model=model, now=change, **tokens)
    exactly = await charge(
        session_factory, no_fallback, "r-4", model=model, now=change,
        input_tokens=1_000, output_tokens=10,
    )  # fmt: skip
    assert [r.cost_microdollars for r in (before, edge, at, exactly)] == [
        1_001 + 20,
        1_001 + 20,
        10_010 + 200,
        1_000 + 20,
    ]
    # The rows already written keep their cost: the band never re-prices the past.
    assert [r.cost_microdollars for r in await ledger(session_factory)] == [
        1_021,
        1_021,
        10_210,
        1_020,
    ]
    # The list shows the band on its own row only.
    async with session_factory() as s:
        rows = await PriceRepository(s).list(model=model)
    assert [(r.effective_from, len(r.bands)) for r in rows] == [
        (NOW - timedelta(days=1), 0),
        (change, 1),
    ]
    assert rows[1].bands[0] == pricing.Band(
        1_000, pricing.Rates(10_000_000, 20_000_000, 12_500_000, 20_000_000, 1_000_000)
    )


async def test_the_4_6_models_are_banded_until_march_13_and_flat_after(
    session_factory: Factory, no_fallback: Settings
) -> None:
    await make_session(session_factory, model="claude-opus-4-6")
    flat = datetime(2026, 3, 13, tzinfo=UTC)
    tokens = {"model": "claude-opus-4-6", "input_tokens": 250_000, "output_tokens": 2_000}
    banded = await charge(
        session_factory, no_fallback, "r-1", now=flat - timedelta(microseconds=1), **tokens
    )
    after = await charge(session_factory, no_fallback, "r-2", now=flat, **tokens)
    assert banded.cost_microdollars == 2_500_000 + 75_000
    assert after.cost_microdollars == 1_250_000 + 50_000


# ------------------------------------------------------------------- reservations


async def test_a_reservation_whose_maximum_crosses_the_threshold(
    session_factory: Factory, no_fallback: Settings
) -> None:
    # A day of exactly 1,000,000 µ$ (30,000,000 over a 30-day period): a cap of 1,100,000.
    await add_user(session_factory, override=30_000_000)
    await make_session(session_factory, model=SONNET_45)

    async def reserve(request_id: str, **kwargs: int) -> Any:
        async with session_factory.begin() as s:
            return await BudgetRepository(s, no_fallback).reserve(
                session_id="s-1", request_id=request_id, model=SONNET_45,
                max_output_tokens=2_000, now=NOW, **kwargs,
            )  # fmt: skip

    # 200,001 prompt tokens at most: the band's rates for the whole worst case, 1,245,006
    # µ$, which does not fit (at the flat rate it would have, at 630,003).
    crossing = await reserve("r-cross", max_input_tokens=200_001)
    assert (crossing.granted, crossing.reserved_microdollars) == (False, 0)
    assert crossing.decision is Decision.SLEEP
    # Exactly the threshold: the base rates.
    at = await reserve("r-at", max_input_tokens=200_000)
    assert (at.granted, at.reserved_microdollars) == (True, 600_000 + 30_000)
    # Cache writes count towards the prompt: 150,000 + 50,001 crosses it (1-hour writes).
    writes = await reserve(
        "r-writes", max_input_tokens=150_000, max_cache_creation_input_tokens=50_001
    )
    assert not writes.granted
    async with session_factory() as s:
        booked = list(
            await s.execute(
                select(BudgetReservation.request_id, BudgetReservation.amount_microdollars)
            )
        )
        reserved = await s.scalar(select(BudgetDay.reserved_microdollars))
    assert booked == [("r-at", 630_000)]
    assert reserved == 630_000
    # With room for it, the crossing reservation books the band's worst case.
    async with session_factory.begin() as s:
        await s.execute(text("UPDATE budget_days SET budget_microdollars = 10000000"))
    big = await reserve("r-big", max_input_tokens=150_000, max_cache_creation_input_tokens=50_001)
    assert (big.granted, big.reserved_microdollars) == (True, 900_000 + 45_000 + 600_012)


# -------------------------------------------------------------------- web search

SEARCH_USAGE: dict[str, Any] = {
    "input_tokens": 150_000,
    "output_tokens": 2_000,
    "server_tool_use": {"web_search_requests": 3, "web_fetch_requests": 2},
}


async def test_web_search_is_priced_per_use(
    session_factory: Factory, no_fallback: Settings
) -> None:
    await make_session(session_factory, model=SONNET_45)
    as_dict = await charge_usage(session_factory, no_fallback, "r-1", SEARCH_USAGE)
    sdk = Usage(
        input_tokens=150_000,
        output_tokens=2_000,
        server_tool_use=ServerToolUsage(web_search_requests=3, web_fetch_requests=2),
    )
    as_sdk = await charge_usage(session_factory, no_fallback, "r-2", sdk)
    # Tokens halved for a batch; the searches are not (no batch rate is published).
    batch = await charge_usage(
        session_factory, no_fallback, "r-3", {**SEARCH_USAGE, "service_tier": "batch"}
    )
    # Web fetch is billed by its tokens only.
    fetch_only = await charge_usage(
        session_factory, no_fallback, "r-4",
        {**SEARCH_USAGE, "server_tool_use": {"web_search_requests": 0, "web_fetch_requests": 9}},
    )  # fmt: skip
    assert [r.cost_microdollars for r in (as_dict, as_sdk, batch, fetch_only)] == [
        510_000,
        510_000,
        240_000 + 30_000,
        480_000,
    ]
    assert [r.web_search_requests for r in await ledger(session_factory)] == [3, 3, 3, 0]


async def test_a_message_with_web_searches_is_charged_in_full(
    session_factory: Factory, store: RedisSessionStore, no_fallback: Settings
) -> None:
    """``integrations.anthropic.charge_message``: the response's usage as the SDK gives it,
    its server tool use included."""
    rt = Runtime(session_factory, store, no_fallback, ManualClock(NOW))
    await make_session(session_factory, model=SONNET_45)
    message = Message(
        id="msg_search",
        type="message",
        role="assistant",
        model=SONNET_45,
        content=[TextBlock(type="text", text="Found it.")],
        stop_reason="end_turn",
        stop_sequence=None,
        usage=Usage(
            input_tokens=250_000,
            output_tokens=2_000,
            server_tool_use=ServerToolUsage(web_search_requests=3, web_fetch_requests=1),
            service_tier="standard",
        ),
    )
    result = await charge_message(rt, session_id="s-1", message=message)
    assert result.cost_microdollars == 1_545_000 + 30_000
    [row] = await ledger(session_factory)
    assert (row.request_id, row.web_search_requests) == ("msg_search", 3)


async def test_web_search_on_a_banded_call(session_factory: Factory, no_fallback: Settings) -> None:
    await make_session(session_factory, model=SONNET_45)
    usage = Usage(
        input_tokens=100_000,
        output_tokens=2_000,
        cache_read_input_tokens=100_000,
        cache_creation_input_tokens=1,
        cache_creation=CacheCreation(ephemeral_5m_input_tokens=0, ephemeral_1h_input_tokens=1),
        server_tool_use=ServerToolUsage(web_search_requests=1, web_fetch_requests=0),
    )
    result = await charge_usage(session_factory, no_fallback, "r-1", usage)
    # 200,001 prompt tokens: the band, plus one search at 10,000 µ$.
    assert result.cost_microdollars == 600_000 + 60_000 + 12 + 45_000 + 10_000


async def test_the_configured_fallback_prices_bands_and_search(session_factory: Factory) -> None:
    """MODEL_PRICES with a band and a search price, for a model the table does not know."""
    model = f"test-fallback-{uuid.uuid4().hex[:8]}"
    configured = Settings(
        _env_file=None,
        model_prices={
            model: ModelPrice(
                input_per_mtok=1_000_000, output_per_mtok=1_000_000, web_search_per_1k=5_000_000,
                bands=(
                    ModelPriceBand(
                        threshold_tokens=100, input_per_mtok=2_000_000, output_per_mtok=3_000_000
                    ),
                ),
            )
        },
    )  # fmt: skip
    await make_session(session_factory, model=model)
    under = await charge(
        session_factory, configured, "r-1", model=model, input_tokens=100, output_tokens=10
    )
    over = await charge(
        session_factory, configured, "r-2", model=model, input_tokens=101, output_tokens=10,
        web_search_requests=2,
    )  # fmt: skip
    assert (under.cost_microdollars, over.cost_microdollars) == (110, 202 + 30 + 10_000)


# --------------------------------------------- unpriced billable fields: refused


@pytest.mark.parametrize(
    ("model", "usage", "field"),
    [
        # Claude 3 Haiku has no published web search price.
        (
            "claude-3-haiku-20240307",
            {
                "input_tokens": 10,
                "output_tokens": 10,
                "server_tool_use": {"web_search_requests": 1},
            },
            "web_search_requests",
        ),
        (
            SONNET_45,
            {
                "input_tokens": 10,
                "output_tokens": 10,
                "server_tool_use": {"web_search_requests": 1, "code_execution_requests": 2},
            },
            "usage.server_tool_use.code_execution_requests",
        ),
        (
            SONNET_45,
            {"input_tokens": 10, "output_tokens": 10, "inference_geo": "us"},
            "usage.inference_geo",
        ),
        (SONNET_45, {"input_tokens": 10, "output_tokens": 10, "speed": "fast"}, "usage.speed"),
    ],
)
async def test_an_unpriced_billable_field_is_refused_and_nothing_written(
    session_factory: Factory, no_fallback: Settings, model: str, usage: Any, field: str
) -> None:
    await add_user(session_factory)
    await make_session(session_factory, model=model)
    with pytest.raises(InvalidInput) as caught:
        await charge_usage(session_factory, no_fallback, "r-1", usage, model=model)
    assert caught.value.field == field
    assert await ledger(session_factory) == []
    assert await day_spent(session_factory) == 0
    # The same call without that field is charged.
    plain = await charge_usage(
        session_factory, no_fallback, "r-1", {"input_tokens": 10, "output_tokens": 10}, model=model
    )
    assert not plain.duplicate
    assert len(await ledger(session_factory)) == 1


async def test_a_set_price_without_web_search_refuses_searches(
    session_factory: Factory, store: RedisSessionStore, no_fallback: Settings
) -> None:
    model = f"test-nosearch-{uuid.uuid4().hex[:8]}"
    rt = Runtime(session_factory, store, no_fallback, ManualClock(NOW - timedelta(days=1)))
    await set_price(
        rt, model=model, rates=pricing.rates(1_000_000, 1_000_000),
        effective_from=NOW - timedelta(days=1), source="test",
    )  # fmt: skip
    await make_session(session_factory, model=model)
    with pytest.raises(InvalidInput, match="web search") as caught:
        await charge(
            session_factory, no_fallback, "r-1", model=model, input_tokens=1, output_tokens=1,
            web_search_requests=1,
        )  # fmt: skip
    assert caught.value.field == "web_search_requests"
    assert await ledger(session_factory) == []
    # An unknown model stays UnknownModel, searches or not.
    with pytest.raises(UnknownModel):
        await charge(
            session_factory, no_fallback, "r-2", model="gpt-17", input_tokens=1, output_tokens=1,
            web_search_requests=1,
        )  # fmt: skip


# ------------------------------------------------------------------- the seed


async def test_the_seed_lists_current_models_with_their_source_and_own_cache_rates(
    session_factory: Factory,
) -> None:
    async with session_factory() as s:
        repo = PriceRepository(s)
        rows = {(r.model, r.effective_from): r for r in await repo.list()}
        now = {
            m: await repo.in_force(m, at=NOW)
            for m in (
                "claude-opus-4-1", "claude-opus-4-6", "claude-opus-4-8", "claude-opus-5-5",
                "claude-sonnet-4-6", "claude-sonnet-5-5", "claude-haiku-4-5", "claude-haiku-5-5",
                "claude-fable-5-1",
            )
        }  # fmt: skip
    assert all(entry is not None for entry in now.values())
    seeded = [r for r in rows.values() if r.model.startswith("claude-")]
    assert all("https://" in r.source for r in seeded)
    read = {m: (e.rates.cache_read, e.rates.input) for m, e in now.items() if e is not None}
    assert read["claude-opus-4-8"] == (500_000, 5_000_000)  # 0.1x
    assert read["claude-opus-5-5"] == (200_000, 4_000_000)  # 0.05x
    assert read["claude-sonnet-5-5"] == (100_000, 2_000_000)  # 0.05x
    assert read["claude-fable-5-1"] == (250_000, 10_000_000)  # 0.025x
    assert all(e is not None and e.web_search_per_1k == 10_000_000 for e in now.values())
    haiku = now["claude-haiku-5-5"]
    assert haiku is not None
    assert [b.threshold_tokens for b in haiku.bands] == [100_000]
    sonnet_45 = rows[(SONNET_45, datetime(2025, 9, 29, tzinfo=UTC))]
    assert sonnet_45.bands == (pricing.Band(200_000, pricing.Rates(*SONNET_LONG)),)


# ------------------------------------------------------- the SQL twin of call_cost

BAND_MODEL_RATES = pricing.Rates(3_000_000, 15_000_000, 3_750_000, 6_000_000, 300_000)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    prompt_offset=st.integers(-3, 3),
    split=st.tuples(st.integers(0, 100), st.integers(0, 100), st.integers(0, 100)),
    output=st.integers(0, 10**6),
    searches=st.integers(0, 50),
    batch=st.booleans(),
    at_threshold=st.sampled_from([1_000, 5_000]),
)
async def test_the_sql_price_is_the_python_price(
    engine: AsyncEngine,
    prompt_offset: int,
    split: tuple[int, int, int],
    output: int,
    searches: int,
    batch: bool,
    at_threshold: int,
) -> None:
    """``price_sql.call_cost`` (the charge's expression: row, band, searches) and
    ``pricing.call_cost`` agree to the microdollar around every threshold."""
    model = "test-twin-two-bands"
    base = BAND_MODEL_RATES
    async with engine.begin() as conn:
        exists = await conn.scalar(
            text("SELECT count(*) FROM prices WHERE model = :m"), {"m": model}
        )
    if not exists:
        async with AsyncSession(engine) as s, s.begin():
            await PriceRepository(s).add(
                model=model, rates=base, effective_from=NOW - timedelta(days=1), source="test",
                bands=[
                    pricing.band(1_000, base, 6_000_000, 22_500_000),
                    pricing.band(5_000, base, 9_000_000, 30_000_000, cache_read=1),
                ],
                web_search_per_1k=10_000_000,
            )  # fmt: skip
    async with AsyncSession(engine) as s:
        entry = await PriceRepository(s).in_force(model, at=NOW)
    assert entry is not None
    prompt = at_threshold + prompt_offset
    weights = [w + 1 for w in split]
    total = sum(weights)
    writes = prompt * weights[1] // total
    reads = prompt * weights[2] // total
    usage = pricing.token_usage(
        input_tokens=prompt - writes - reads, output_tokens=output,
        cache_creation_input_tokens=writes, cache_creation_1h_input_tokens=writes // 3,
        cache_read_input_tokens=reads, batch=batch, web_search_requests=searches,
    )  # fmt: skip
    params = {
        "p_model": model,
        "p_at": NOW,
        **usage_params(usage),
        **fallback_params(None, usage.prompt_tokens),
    }
    params.pop("p_batch")
    async with engine.connect() as conn:
        got = await conn.scalar(select(call_cost(usage_binds())), params)
    assert got == pricing.call_cost(entry.tariff, usage)


# --------------------------------------------------------------- migration 0010


async def test_migration_0010_up_and_down_keeps_the_ledger(
    make_database: Callable[[], Awaitable[str]],
) -> None:
    engine = create_engine(await make_database())
    try:
        await upgrade(engine, "0009")
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO agent_sessions (id, job_id, clerk_user_id, tier, model_used,"
                    " status) VALUES ('s-1', 'j', 'u-1', 'partner', :m, 'working')"
                ),
                {"m": SONNET_45},
            )
            await conn.execute(
                text(
                    "INSERT INTO agent_cost_events (request_id, session_id, clerk_user_id,"
                    " model, input_tokens, output_tokens, cost_microdollars, budget_day)"
                    " VALUES ('r-old', 's-1', 'u-1', :m, 250000, 2000, 780000, '2026-11-01')"
                ),
                {"m": SONNET_45},
            )
            # An operator's own row for a model 0010 seeds, at another time.
            await conn.execute(
                text(
                    "INSERT INTO prices VALUES ('claude-haiku-5-5', '2024-06-01T00:00:00Z',"
                    " 1, 1, 1, 1, 1, 'operator')"
                )
            )
        await upgrade(engine)
        async with engine.connect() as conn:
            old = (
                await conn.execute(
                    text("SELECT cost_microdollars, web_search_requests FROM agent_cost_events")
                )
            ).one()
            bands = (
                await conn.execute(
                    text(
                        "SELECT model, threshold_tokens, input_per_mtok FROM price_bands"
                        " WHERE model LIKE 'claude-sonnet-4-5%' ORDER BY model"
                    )
                )
            ).all()
            search = await conn.scalar(
                text("SELECT web_search_per_1k FROM prices WHERE model = :m"), {"m": SONNET_45}
            )
            operator = (
                await conn.execute(
                    text(
                        "SELECT p.source, count(b.model) FROM prices p LEFT JOIN price_bands b"
                        " USING (model, effective_from) WHERE p.source = 'operator'"
                        " GROUP BY p.source"
                    )
                )
            ).one()
        # The past ledger row keeps the cost it was charged (nothing re-prices it).
        assert tuple(old) == (780_000, 0)
        assert [tuple(b) for b in bands] == [
            ("claude-sonnet-4-5", 200_000, 6_000_000),
            ("claude-sonnet-4-5-20250929", 200_000, 6_000_000),
        ]
        assert search == 10_000_000
        assert tuple(operator) == ("operator", 0)  # no band attached to an operator's row

        await downgrade(engine, "0009")
        async with engine.connect() as conn:
            tables = set(
                await conn.scalars(
                    text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
                )
            )
            models = set(await conn.scalars(text("SELECT model FROM prices")))
            kept = await conn.scalar(text("SELECT cost_microdollars FROM agent_cost_events"))
        assert "price_bands" not in tables
        assert "claude-opus-4-6" not in models
        assert {"claude-haiku-5-5", SONNET_45} <= models  # the operator's row and 0008's
        assert kept == 780_000
        await upgrade(engine)
        async with engine.connect() as conn:
            again = await conn.scalar(select(func.count()).select_from(PriceBand))
        assert again == 7  # 0008's three Sonnet rows, and four of the rows 0010 adds
    finally:
        await engine.dispose()
