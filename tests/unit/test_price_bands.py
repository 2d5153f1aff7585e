"""Bands by prompt size, web search per use and unpriced billable fields, as pure logic
(issue 29): pricing.Tariff and call_cost, parse_usage, ModelPrice bands, the CLI's --band."""

from __future__ import annotations

import argparse
from types import SimpleNamespace
from typing import Any

import pytest
from anthropic.types import ServerToolUsage, Usage
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from app.budget.pricing import (
    Band,
    Rates,
    Tariff,
    band,
    call_cost,
    cost_microdollars,
    parse_usage,
    rates,
    tariff,
    token_usage,
    usage_cost,
    worst_case_call_cost,
)
from app.cli import parse_band
from app.domain import InvalidInput
from app.settings import ModelPrice, ModelPriceBand

BASE = rates(3_000_000, 15_000_000)
SONNET_45 = tariff(BASE, [band(200_000, BASE, 6_000_000, 22_500_000)], 10_000_000)


def test_the_worked_examples() -> None:
    over = token_usage(input_tokens=250_000, output_tokens=2_000)
    under = token_usage(input_tokens=150_000, output_tokens=2_000)
    searched = token_usage(input_tokens=150_000, output_tokens=2_000, web_search_requests=3)
    assert call_cost(SONNET_45, over) == 1_500_000 + 45_000 == 1_545_000
    assert call_cost(SONNET_45, under) == 450_000 + 30_000 == 480_000
    assert call_cost(SONNET_45, searched) == 480_000 + 30_000


def test_a_band_scales_the_cache_classes_like_its_input() -> None:
    assert SONNET_45.bands == (
        Band(200_000, Rates(6_000_000, 22_500_000, 7_500_000, 12_000_000, 600_000)),
    )
    # A model with its own cache ratio keeps it in the band (0.05x reads).
    own = rates(2_000_000, 10_000_000, cache_read=100_000)
    assert band(1, own, 4_000_000, 20_000_000).rates.cache_read == 200_000
    with pytest.raises(InvalidInput) as caught:
        band(1, rates(0, 1), 1, 1)
    assert caught.value.field == "cache_write_5m_per_mtok"


def test_the_prompt_passes_a_threshold_only_above_it() -> None:
    low = rates(1_000_000, 0)
    two = tariff(
        low, [band(5_000, low, 3_000_000, 0), band(1_000, low, 2_000_000, 0)]
    )  # sorted here
    assert [b.threshold_tokens for b in two.bands] == [1_000, 5_000]
    assert [two.rates_for(n).input for n in (0, 1_000, 1_001, 5_000, 5_001)] == [
        1_000_000,
        1_000_000,
        2_000_000,
        2_000_000,
        3_000_000,
    ]
    with pytest.raises(InvalidInput, match="share a threshold"):
        tariff(low, [band(5, low, 1, 1), band(5, low, 2, 2)])


def test_the_prompt_counts_cache_writes_and_reads() -> None:
    usage = token_usage(
        input_tokens=100_000, output_tokens=0, cache_creation_input_tokens=50_000,
        cache_read_input_tokens=50_001,
    )  # fmt: skip
    assert usage.prompt_tokens == 200_001
    assert call_cost(SONNET_45, usage) == usage_cost(SONNET_45.bands[0].rates, usage)


def test_a_reservation_uses_the_band_of_its_largest_prompt() -> None:
    assert worst_case_call_cost(SONNET_45, 200_000, 2_000) == 630_000
    assert worst_case_call_cost(SONNET_45, 200_001, 2_000) == 1_245_006
    assert worst_case_call_cost(SONNET_45, 150_000, 2_000, 50_001) == 900_000 + 45_000 + 600_012


def test_web_search_is_not_halved_for_a_batch_and_needs_a_price() -> None:
    batch = token_usage(input_tokens=0, output_tokens=0, web_search_requests=3, batch=True)
    assert call_cost(SONNET_45, batch) == 30_000
    with pytest.raises(InvalidInput) as caught:
        call_cost(Tariff(BASE), batch, model="m")
    assert caught.value.field == "web_search_requests"
    assert call_cost(Tariff(BASE), token_usage(input_tokens=1, output_tokens=0)) == 3


def test_configured_prices_carry_bands_and_search() -> None:
    price = ModelPrice(
        input_per_mtok=1_000_000, output_per_mtok=1_000_000, cache_read_per_mtok=50_000,
        web_search_per_1k=10_000_000,
        bands=(ModelPriceBand(threshold_tokens=10, input_per_mtok=2_000_000, output_per_mtok=2),),
    )  # fmt: skip
    assert price.bands[0].cache_read_per_mtok == 100_000  # scaled from 0.05x, not 0.1x
    prices = {"m": price}
    assert cost_microdollars("m", 10, 0, prices=prices) == 10
    assert cost_microdollars("m", 11, 0, prices=prices, web_search_requests=1) == 22 + 10_000
    with pytest.raises(ValidationError):
        ModelPrice(
            input_per_mtok=1, output_per_mtok=1,
            bands=(
                ModelPriceBand(threshold_tokens=5, input_per_mtok=1, output_per_mtok=1),
                ModelPriceBand(threshold_tokens=5, input_per_mtok=2, output_per_mtok=2),
            ),
        )  # fmt: skip


# ------------------------------------------------------------------ parse_usage


def test_server_tool_use_as_a_dict_and_as_an_sdk_object() -> None:
    as_dict = parse_usage(
        {"input_tokens": 1, "output_tokens": 1, "server_tool_use": {"web_search_requests": 4}}
    )
    sdk = parse_usage(
        Usage(
            input_tokens=1,
            output_tokens=1,
            server_tool_use=ServerToolUsage(web_search_requests=4, web_fetch_requests=7),
        )
    )
    assert as_dict.web_search_requests == sdk.web_search_requests == 4
    absent = parse_usage({"input_tokens": 1, "output_tokens": 1, "server_tool_use": None})
    assert absent.web_search_requests == 0
    # Any object with the counters as attributes, unknown ones checked too.
    plain = SimpleNamespace(input_tokens=1, output_tokens=1)
    plain.server_tool_use = SimpleNamespace(web_search_requests=2, web_fetch_requests=1)
    assert parse_usage(plain).web_search_requests == 2
    plain.server_tool_use.code_execution_requests = 1
    with pytest.raises(InvalidInput) as caught:
        parse_usage(plain)
    assert caught.value.field == "usage.server_tool_use.code_execution_requests"


TOOLS = "usage.server_tool_use."


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"server_tool_use": {"code_execution_requests": 1}}, TOOLS + "code_execution_requests"),
        ({"server_tool_use": {"web_search_requests": -1}}, TOOLS + "web_search_requests"),
        ({"server_tool_use": {"web_search_requests": "3"}}, TOOLS + "web_search_requests"),
        ({"server_tool_use": [3]}, "usage.server_tool_use"),
        ({"inference_geo": "us"}, "usage.inference_geo"),
        ({"speed": "fast"}, "usage.speed"),
    ],
)
def test_a_billable_field_without_a_price_is_refused(extra: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_usage({"input_tokens": 1, "output_tokens": 1, **extra})
    assert caught.value.field == field


def test_fields_that_do_not_change_the_bill_are_accepted() -> None:
    usage = parse_usage(
        {
            "input_tokens": 1,
            "output_tokens": 1,
            "inference_geo": "global",
            "server_tool_use": {"web_fetch_requests": 9, "code_execution_requests": 0},
            "output_tokens_details": {"thinking_tokens": 1},
        }
    )
    assert usage == token_usage(input_tokens=1, output_tokens=1)


@given(
    threshold=st.integers(1, 10**6),
    prompt=st.integers(0, 2 * 10**6),
    out=st.integers(0, 10**5),
)
def test_a_banded_call_is_all_or_nothing(threshold: int, prompt: int, out: int) -> None:
    """Every token of the call pays one set of rates: the base's, or the band's."""
    low = rates(1_000_000, 2_000_000)
    priced = tariff(low, [band(threshold, low, 3_000_000, 5_000_000)])
    usage = token_usage(input_tokens=prompt, output_tokens=out)
    expected = prompt * 3 + out * 5 if prompt > threshold else prompt + out * 2
    assert call_cost(priced, usage) == expected


@pytest.mark.parametrize(
    "text", ["200000:$6", "x:$6:$22.50", "0:$6:$22.50", "200000:$6:$22.50:1", "5:$-1:1"]
)
def test_the_cli_refuses_a_bad_band(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_band(text)


def test_the_cli_reads_a_band() -> None:
    assert parse_band("200_000:$6:$22.50") == (200_000, [6_000_000, 22_500_000])
    assert parse_band("100000:1:2:3:4:5") == (100_000, [1, 2, 3, 4, 5])
