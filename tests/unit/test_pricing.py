"""Pricing: integer cost of a call, and the model of each tier (BDGT-05, BDGT-06)."""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction
from typing import Any

import pytest
from anthropic.types import CacheCreation, Usage
from hypothesis import given
from hypothesis import strategies as st

from app.budget.policy import within_cap
from app.budget.pricing import (
    MAX_PRICE_PER_MTOK,
    MAX_TOKENS_PER_CALL,
    Rates,
    cost_microdollars,
    parse_usage,
    rates,
    rates_of,
    token_usage,
    usage_cost,
)
from app.domain import InvalidInput, Tier, UnknownModel
from app.settings import OPUS, SONNET, ModelPrice, Settings, default_prices
from app.validation import parse_enum


def test_default_prices() -> None:
    # One million tokens each way: $15 + $75 for Opus, $3 + $15 for Sonnet.
    assert cost_microdollars(OPUS, 1_000_000, 1_000_000) == 90_000_000
    assert cost_microdollars(SONNET, 1_000_000, 1_000_000) == 18_000_000


def test_opus_output_costs_five_times_sonnet_output() -> None:
    assert cost_microdollars(OPUS, 0, 12_345) == 5 * cost_microdollars(SONNET, 0, 12_345)


def test_each_side_is_floored_on_its_own() -> None:
    # 1 input token of Sonnet is 3 µ$; 1 output token is 15 µ$.
    assert cost_microdollars(SONNET, 1, 1) == 3 + 15
    prices = {"m": ModelPrice(input_per_mtok=1, output_per_mtok=1)}
    assert cost_microdollars("m", 999_999, 999_999, prices=prices) == 0


def test_unknown_model_is_an_error_not_a_guess() -> None:
    with pytest.raises(UnknownModel) as info:
        cost_microdollars("gpt-17", 1, 1)
    assert isinstance(info.value, InvalidInput)
    assert "gpt-17" in str(info.value)


@pytest.mark.parametrize("tokens", [-1, 1.5, True, "10", None])
def test_bad_token_counts_are_typed_errors(tokens: object) -> None:
    with pytest.raises(InvalidInput):
        cost_microdollars(SONNET, tokens, 0)  # type: ignore[arg-type]


def test_model_follows_the_tier() -> None:
    s = Settings(_env_file=None)
    assert s.model_for(parse_enum(Tier, "cto_scale", "tier")) == OPUS
    assert s.model_for(parse_enum(Tier, "partner", "tier")) == SONNET
    assert s.model_for(parse_enum(Tier, "bootstrapper", "tier")) == SONNET
    with pytest.raises(InvalidInput, match="tier"):
        s.model_for(parse_enum(Tier, "enterprise", "tier"))


@given(
    i=st.integers(0, 10**9),
    o=st.integers(0, 10**9),
    pi=st.integers(0, 10**8),
    po=st.integers(0, 10**8),
)
def test_cost_is_exact_integer_arithmetic(i: int, o: int, pi: int, po: int) -> None:
    prices = {"m": ModelPrice(input_per_mtok=pi, output_per_mtok=po)}
    cost = cost_microdollars("m", i, o, prices=prices)
    assert isinstance(cost, int)
    exact = (i * pi + o * po) / 1_000_000
    assert exact - 2 < cost <= exact


# ----------------------------------------------------- every token class (§6b)

EXAMPLE: dict[str, Any] = {
    "input_tokens": 1_000,
    "output_tokens": 500,
    "cache_creation_input_tokens": 10_000,
    "cache_creation_1h_input_tokens": 4_000,
    "cache_read_input_tokens": 100_000,
}


def test_the_design_example() -> None:
    sonnet = rates_of(default_prices()[SONNET])
    assert sonnet == Rates(3_000_000, 15_000_000, 3_750_000, 6_000_000, 300_000)
    assert usage_cost(sonnet, token_usage(**EXAMPLE)) == 87_000
    assert usage_cost(sonnet, token_usage(**EXAMPLE, batch=True)) == 43_500


def test_an_sdk_usage_with_and_without_its_breakdown() -> None:
    sonnet = rates_of(default_prices()[SONNET])
    full = Usage(
        input_tokens=1_000,
        output_tokens=500,
        cache_creation_input_tokens=10_000,
        cache_read_input_tokens=100_000,
        cache_creation=CacheCreation(
            ephemeral_5m_input_tokens=6_000, ephemeral_1h_input_tokens=4_000
        ),
    )
    assert parse_usage(full) == token_usage(**EXAMPLE)
    assert (
        usage_cost(sonnet, parse_usage(full.model_copy(update={"cache_creation": None}))) == 78_000
    )
    # The dict form, and a breakdown without the total.
    as_dict = full.model_dump()
    del as_dict["cache_creation_input_tokens"]
    assert parse_usage(as_dict) == token_usage(**EXAMPLE)


def test_cache_prices_default_to_the_multipliers_of_input() -> None:
    assert rates(1_000_000, 0) == Rates(1_000_000, 0, 1_250_000, 2_000_000, 100_000)
    assert rates(1_000_000, 0, cache_read=7) == Rates(1_000_000, 0, 1_250_000, 2_000_000, 7)
    with pytest.raises(InvalidInput) as caught:
        rates(1, 1, cache_write_1h=-1)
    assert caught.value.field == "cache_write_1h_per_mtok"


TOKENS = st.integers(0, MAX_TOKENS_PER_CALL)
PRICE = st.integers(0, MAX_PRICE_PER_MTOK)


@given(
    counts=st.tuples(TOKENS, TOKENS, TOKENS, TOKENS, TOKENS),
    prices=st.tuples(PRICE, PRICE, PRICE, PRICE, PRICE),
)
def test_each_class_is_floored_on_its_own_and_batch_is_half(
    counts: tuple[int, int, int, int, int], prices: tuple[int, int, int, int, int]
) -> None:
    i, o, writes, hour, reads = counts
    writes = max(writes, hour)
    price = Rates(*prices)
    usage = token_usage(
        input_tokens=i, output_tokens=o, cache_creation_input_tokens=writes,
        cache_creation_1h_input_tokens=hour, cache_read_input_tokens=reads,
    )  # fmt: skip
    cost = usage_cost(price, usage)
    parts = [
        (i, price.input), (writes - hour, price.cache_write_5m), (hour, price.cache_write_1h),
        (reads, price.cache_read), (o, price.output),
    ]  # fmt: skip
    assert cost == sum(t * p // 1_000_000 for t, p in parts)
    exact = sum(Fraction(t * p, 1_000_000) for t, p in parts)
    assert exact - 5 < cost <= exact  # at most one floor per class
    half = usage_cost(price, replace(usage, batch=True))
    assert half == sum(t * p // 2_000_000 for t, p in parts)
    assert (cost - 5) // 2 <= half <= cost // 2 + 5


def test_within_cap_is_110_percent_inclusive() -> None:
    assert within_cap(1_100, 1_000)
    assert not within_cap(1_101, 1_000)
    assert within_cap(0, 0)
    assert not within_cap(1, 0)
