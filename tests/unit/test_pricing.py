"""Pricing: integer cost of a call, and the model of each tier (BDGT-05, BDGT-06)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.budget.pricing import cost_microdollars
from app.domain import InvalidInput, Tier, UnknownModel
from app.settings import OPUS, SONNET, ModelPrice, Settings
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
