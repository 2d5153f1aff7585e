"""What an LLM call costs (BDGT-06): integer arithmetic, no I/O, no settings read."""

from __future__ import annotations

from collections.abc import Mapping

from app.domain import UnknownModel
from app.settings import ModelPrice, default_prices
from app.validation import require_int

TOKENS_PER_PRICE_UNIT = 1_000_000
#: A single call above this many tokens is not a real call; refuse it as bad input.
MAX_TOKENS_PER_CALL = 2**31 - 1


def price_of(model: str, prices: Mapping[str, ModelPrice]) -> ModelPrice:
    """The configured price of ``model``; an unknown model is an error, never a guess."""
    try:
        return prices[model]
    except (KeyError, TypeError):
        raise UnknownModel(model) from None


def cost_microdollars(
    model: str,
    input_tokens: int,
    output_tokens: int,
    *,
    prices: Mapping[str, ModelPrice] | None = None,
) -> int:
    """Cost of one call in microdollars, with integer arithmetic only."""
    price = price_of(model, default_prices() if prices is None else prices)
    i = require_int(input_tokens, "input_tokens", maximum=MAX_TOKENS_PER_CALL)
    o = require_int(output_tokens, "output_tokens", maximum=MAX_TOKENS_PER_CALL)
    return (
        i * price.input_per_mtok // TOKENS_PER_PRICE_UNIT
        + o * price.output_per_mtok // TOKENS_PER_PRICE_UNIT
    )
