"""What an LLM call costs (BDGT-06, DESIGN.md §6b): integer arithmetic, no I/O, no settings read.

Every token class has its own price in microdollars per million tokens, and each class
is priced and floored on its own; the Batch API halves every class before the floor.
``app.repositories.budget_rules.usage_cost`` is this module's twin in SQL, which the
charge runs so that the effective-dated price is looked up in the same statement.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from app.domain import InvalidInput, UnknownModel
from app.settings import ModelPrice, default_prices
from app.validation import require_int

TOKENS_PER_PRICE_UNIT: Final = 1_000_000
#: A single call above this many tokens in one class is not a real call: bad input.
MAX_TOKENS_PER_CALL: Final = 2**31 - 1
#: A price above $1,000,000 per million tokens is a typo, not a price.
MAX_PRICE_PER_MTOK: Final = 10**12
#: The Batch API bills half of every class.
BATCH_DIVISOR: Final = 2
#: ``usage.service_tier`` values; only "batch" changes the price.
SERVICE_TIERS: Final = frozenset({"standard", "priority", "batch"})


class Rates(NamedTuple):
    """One model's price per token class, in microdollars per million tokens."""

    input: int
    output: int
    cache_write_5m: int
    cache_write_1h: int
    cache_read: int


def rates(
    input_per_mtok: int,
    output_per_mtok: int,
    *,
    cache_write_5m: int | None = None,
    cache_write_1h: int | None = None,
    cache_read: int | None = None,
) -> Rates:
    """Checked rates; a cache class left out takes Anthropic's multiplier of the input
    price (5-minute writes 1.25x, 1-hour writes 2x, reads 0.1x)."""
    i = require_int(input_per_mtok, "input_per_mtok", maximum=MAX_PRICE_PER_MTOK)
    o = require_int(output_per_mtok, "output_per_mtok", maximum=MAX_PRICE_PER_MTOK)
    given = {
        "cache_write_5m": (cache_write_5m, i * 5 // 4),
        "cache_write_1h": (cache_write_1h, i * 2),
        "cache_read": (cache_read, i // 10),
    }
    out = {
        name: default
        if value is None
        else require_int(value, f"{name}_per_mtok", maximum=MAX_PRICE_PER_MTOK)
        for name, (value, default) in given.items()
    }
    return Rates(i, o, **out)


def rates_of(price: ModelPrice) -> Rates:
    """A configured ``ModelPrice`` as ``Rates``."""
    return rates(
        price.input_per_mtok,
        price.output_per_mtok,
        cache_write_5m=price.cache_write_5m_per_mtok,
        cache_write_1h=price.cache_write_1h_per_mtok,
        cache_read=price.cache_read_per_mtok,
    )


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """What one call used, by token class. ``cache_creation_input_tokens`` counts every
    cache write; ``cache_creation_1h_input_tokens`` is the part written with the 1-hour
    TTL (the rest has the 5-minute TTL). Build it with :func:`token_usage`."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_creation_1h_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    batch: bool = False

    @property
    def cache_creation_5m_input_tokens(self) -> int:
        return self.cache_creation_input_tokens - self.cache_creation_1h_input_tokens


def token_usage(
    *,
    input_tokens: Any,
    output_tokens: Any,
    cache_creation_input_tokens: Any = 0,
    cache_creation_1h_input_tokens: Any = 0,
    cache_read_input_tokens: Any = 0,
    batch: Any = False,
    where: str = "",
) -> TokenUsage:
    """A checked ``TokenUsage``; ``InvalidInput`` names the field (prefixed by ``where``)."""

    def count(value: Any, name: str) -> int:
        return require_int(value, where + name, maximum=MAX_TOKENS_PER_CALL)

    writes = count(cache_creation_input_tokens, "cache_creation_input_tokens")
    hour = count(cache_creation_1h_input_tokens, "cache_creation_1h_input_tokens")
    if hour > writes:
        raise InvalidInput(
            f"{where}cache_creation_1h_input_tokens ({hour}) is part of"
            f" {where}cache_creation_input_tokens ({writes}) and cannot exceed it",
            field=where + "cache_creation_1h_input_tokens",
        )
    if not isinstance(batch, bool):
        raise InvalidInput(
            f"{where}batch must be True or False, not {batch!r}", field=where + "batch"
        )
    return TokenUsage(
        input_tokens=count(input_tokens, "input_tokens"),
        output_tokens=count(output_tokens, "output_tokens"),
        cache_creation_input_tokens=writes,
        cache_creation_1h_input_tokens=hour,
        cache_read_input_tokens=count(cache_read_input_tokens, "cache_read_input_tokens"),
        batch=batch,
    )


def _field(source: Any, name: str) -> Any:
    if isinstance(source, Mapping):
        return source.get(name)
    return getattr(source, name, None)


def parse_usage(usage: Any, *, field: str = "usage") -> TokenUsage:
    """The Anthropic SDK's ``Usage`` object, or its dict form, as a ``TokenUsage``.

    Reads ``input_tokens``, ``output_tokens``, ``cache_creation_input_tokens``,
    ``cache_read_input_tokens``, the ``cache_creation`` breakdown
    (``ephemeral_5m_input_tokens`` / ``ephemeral_1h_input_tokens``) and
    ``service_tier`` ("batch" halves the price). Without a breakdown every cache write
    is priced at the 5-minute rate. Missing or ``None`` cache fields count as 0; other
    fields (server tool use, inference geography) are not priced here.
    """
    if usage is None or isinstance(usage, str | bytes | int | float | list | tuple):
        raise InvalidInput(
            f"{field} must be an Anthropic Usage object or its dict form, not"
            f" {type(usage).__name__}",
            field=field,
        )
    where = field + "."
    for required in ("input_tokens", "output_tokens"):
        if _field(usage, required) is None:
            raise InvalidInput(f"{where}{required} is missing", field=where + required)
    tier = _field(usage, "service_tier")
    # A str first: a list or dict here is unhashable, and `in` a frozenset would raise.
    if tier is not None and (not isinstance(tier, str) or tier not in SERVICE_TIERS):
        allowed = ", ".join(sorted(SERVICE_TIERS))
        raise InvalidInput(
            f"unknown {where}service_tier {tier!r}; expected one of: {allowed}",
            field=where + "service_tier",
        )
    speed = _field(usage, "speed")
    if speed is not None and (not isinstance(speed, str) or speed != "standard"):
        # Fast mode has its own price list, which no class here holds: refuse rather
        # than undercharge.
        raise InvalidInput(
            f"{where}speed {speed!r} is not priced (only standard speed is)",
            field=where + "speed",
        )

    def zero(value: Any) -> Any:
        return 0 if value is None else value

    writes = _field(usage, "cache_creation_input_tokens")
    breakdown = _field(usage, "cache_creation")
    hour: Any = 0
    if breakdown is not None:
        if not isinstance(breakdown, Mapping) and not hasattr(
            breakdown, "ephemeral_1h_input_tokens"
        ):
            raise InvalidInput(
                f"{where}cache_creation must be a breakdown of cache writes by TTL, not"
                f" {type(breakdown).__name__}",
                field=where + "cache_creation",
            )
        bwhere = where + "cache_creation."
        five = require_int(
            zero(_field(breakdown, "ephemeral_5m_input_tokens")),
            bwhere + "ephemeral_5m_input_tokens",
            maximum=MAX_TOKENS_PER_CALL,
        )
        hour = require_int(
            zero(_field(breakdown, "ephemeral_1h_input_tokens")),
            bwhere + "ephemeral_1h_input_tokens",
            maximum=MAX_TOKENS_PER_CALL,
        )
        if writes is None:
            writes = five + hour
        elif isinstance(writes, int) and writes != five + hour:
            raise InvalidInput(
                f"{where}cache_creation_input_tokens ({writes}) is not the sum of its"
                f" breakdown ({five} at 5 minutes + {hour} at 1 hour)",
                field=where + "cache_creation",
            )
    return token_usage(
        input_tokens=_field(usage, "input_tokens"),
        output_tokens=_field(usage, "output_tokens"),
        cache_creation_input_tokens=zero(writes),
        cache_creation_1h_input_tokens=hour,
        cache_read_input_tokens=zero(_field(usage, "cache_read_input_tokens")),
        batch=tier == "batch",
        where=where,
    )


def _class_cost(tokens: int, per_mtok: int, divisor: int) -> int:
    return tokens * per_mtok // (TOKENS_PER_PRICE_UNIT * divisor)


def usage_cost(price: Rates, usage: TokenUsage) -> int:
    """Cost of one call in microdollars: each class priced and floored on its own, every
    class halved first for a batch (DESIGN.md §6b)."""
    divisor = BATCH_DIVISOR if usage.batch else 1
    return (
        _class_cost(usage.input_tokens, price.input, divisor)
        + _class_cost(usage.cache_creation_5m_input_tokens, price.cache_write_5m, divisor)
        + _class_cost(usage.cache_creation_1h_input_tokens, price.cache_write_1h, divisor)
        + _class_cost(usage.cache_read_input_tokens, price.cache_read, divisor)
        + _class_cost(usage.output_tokens, price.output, divisor)
    )


def worst_case_cost(
    price: Rates, max_input_tokens: int, max_output_tokens: int, max_cache_creation: int = 0
) -> int:
    """What a reservation books: input at the input price, output at the output price,
    and cache writes at the 1-hour rate, the dearest (DESIGN.md §6b)."""
    return (
        _class_cost(max_input_tokens, price.input, 1)
        + _class_cost(max_output_tokens, price.output, 1)
        + _class_cost(max_cache_creation, price.cache_write_1h, 1)
    )


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
    cache_creation_input_tokens: int = 0,
    cache_creation_1h_input_tokens: int = 0,
    cache_read_input_tokens: int = 0,
    batch: bool = False,
) -> int:
    """Cost of one call in microdollars at a configured price list (the built-in one by
    default), with integer arithmetic only."""
    price = price_of(model, default_prices() if prices is None else prices)
    usage = token_usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_creation_input_tokens=cache_creation_input_tokens,
        cache_creation_1h_input_tokens=cache_creation_1h_input_tokens,
        cache_read_input_tokens=cache_read_input_tokens,
        batch=batch,
    )
    return usage_cost(rates_of(price), usage)
