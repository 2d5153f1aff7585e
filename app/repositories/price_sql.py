"""The price of a call as SQL: the SQL twin of ``pricing.Tariff`` (DESIGN.md §6b).

The charge and the reservation look the price up in their own single statement: the
model's ``prices`` row in force at the call's time, the highest of its ``price_bands``
that the call's prompt passes, else the configured fallback (bound per call, its band
already chosen in Python). Each class is then priced and floored on its own
(``budget_rules.usage_cost``), and web searches are priced per 1,000 requests.
"""

from __future__ import annotations

from typing import Any, Final

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    DateTime,
    Integer,
    Numeric,
    String,
    bindparam,
    case,
    cast,
    exists,
    func,
    literal,
    select,
)

from app.budget.pricing import (
    BATCH_DIVISOR,
    SEARCHES_PER_PRICE_UNIT,
    TOKENS_PER_PRICE_UNIT,
    Tariff,
    TokenUsage,
)
from app.db import tables
from app.repositories.budget_rules import usage_cost

#: The price classes, in the order the statements bind their fallbacks.
PRICE_CLASSES: Final = (
    "input_per_mtok",
    "output_per_mtok",
    "cache_write_5m_per_mtok",
    "cache_write_1h_per_mtok",
    "cache_read_per_mtok",
)
#: The token counts a charge binds (``p_<name>``), also the ledger's columns.
USAGE_COLUMNS: Final = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_creation_1h_input_tokens",
    "cache_read_input_tokens",
    "web_search_requests",
)


class Price:
    """The price expressions of one statement: ``rate[class]`` for the call's band, and
    ``web_search_per_1k`` (NULL when not priced)."""

    def __init__(
        self, model: ColumnElement[Any], at: ColumnElement[Any], prompt: ColumnElement[Any]
    ) -> None:
        p, b = tables.prices.c, tables.price_bands.c
        newest = (
            select(p.model, p.effective_from, p.web_search_per_1k, *(p[n] for n in PRICE_CLASSES))
            .where(p.model == model, p.effective_from <= at)
            .order_by(p.effective_from.desc())
            .limit(1)
            .cte("price")
        )
        band = (
            select(*(b[n] for n in PRICE_CLASSES))
            .where(
                b.model == newest.c.model,
                b.effective_from == newest.c.effective_from,
                b.threshold_tokens < prompt,
            )
            .order_by(b.threshold_tokens.desc())
            .limit(1)
            .cte("band")
        )
        # A band's classes, else the row's, else the configured fallback (NULL: unknown).
        self.rate: dict[str, ColumnElement[Any]] = {
            name: func.coalesce(
                select(band.c[name]).scalar_subquery(),
                select(newest.c[name]).scalar_subquery(),
                bindparam(f"p_fallback_{name}", type_=BigInteger),
            )
            for name in PRICE_CLASSES
        }
        # The table's row wins whole: its NULL web search price is not the fallback's.
        self.web_search_per_1k: ColumnElement[Any] = case(
            (
                exists(select(newest.c.model)),
                select(newest.c.web_search_per_1k).scalar_subquery(),
            ),
            else_=bindparam("p_fallback_web_search_per_1k", type_=BigInteger),
        )


def _price() -> Price:
    return Price(
        bindparam("p_model", type_=String),
        bindparam("p_at", type_=DateTime(True)),
        bindparam("p_prompt_tokens", type_=BigInteger),
    )


def usage_binds() -> dict[str, Any]:
    """The call's counts as bind parameters ``p_<column>``, keyed by ledger column."""
    return {name: bindparam(f"p_{name}", type_=Integer) for name in USAGE_COLUMNS}


def call_cost(tokens: dict[str, Any]) -> ColumnElement[Any]:
    """What the call bound by ``usage_binds`` costs, at the price in force at ``p_at``
    for the band of its prompt ``p_prompt_tokens``: NULL when the model has no price,
    or when it used web search that has none (the charge then writes nothing)."""
    price = _price()
    rate = price.rate
    tokens_cost = usage_cost(
        [
            (tokens["input_tokens"], rate["input_per_mtok"]),
            (
                tokens["cache_creation_input_tokens"] - tokens["cache_creation_1h_input_tokens"],
                rate["cache_write_5m_per_mtok"],
            ),
            (tokens["cache_creation_1h_input_tokens"], rate["cache_write_1h_per_mtok"]),
            (tokens["cache_read_input_tokens"], rate["cache_read_per_mtok"]),
            (tokens["output_tokens"], rate["output_per_mtok"]),
        ],
        bindparam("p_divisor", type_=Numeric),
    )
    searches = tokens["web_search_requests"]
    # Per 1,000 requests; a batch pays searches in full (no batch rate is published).
    search_cost = case(
        (searches == 0, literal(0, BigInteger)),
        else_=cast(
            func.div(
                cast(searches, Numeric) * cast(price.web_search_per_1k, Numeric),
                literal(SEARCHES_PER_PRICE_UNIT, Numeric),
            ),
            BigInteger,
        ),
    )
    return tokens_cost + search_cost


def worst_cost() -> ColumnElement[Any]:
    """What a reservation books: ``p_max_input_tokens`` at the input rate,
    ``p_max_output_tokens`` at the output rate and ``p_max_cache_tokens`` at the 1-hour
    write rate, all at the band that its largest prompt ``p_prompt_tokens`` (input +
    cache writes) falls into. NULL when the model has no price."""
    rate = _price().rate
    return usage_cost(
        [
            (bindparam("p_max_input_tokens", type_=Integer), rate["input_per_mtok"]),
            (bindparam("p_max_output_tokens", type_=Integer), rate["output_per_mtok"]),
            (bindparam("p_max_cache_tokens", type_=Integer), rate["cache_write_1h_per_mtok"]),
        ],
        literal(TOKENS_PER_PRICE_UNIT, Numeric()),
    )


def fallback_params(price: Tariff | None, prompt_tokens: int) -> dict[str, int | None]:
    """The configured fallback as ``p_fallback_*`` parameters, at the band of a prompt of
    ``prompt_tokens`` (all None when there is no configured price)."""
    chosen = None if price is None else price.rates_for(prompt_tokens)
    params: dict[str, int | None] = {
        f"p_fallback_{name}": None if chosen is None else chosen[i]
        for i, name in enumerate(PRICE_CLASSES)
    }
    params["p_fallback_web_search_per_1k"] = None if price is None else price.web_search_per_1k
    return params


def usage_params(usage: TokenUsage) -> dict[str, Any]:
    """A call's counts as the parameters of ``usage_binds`` and ``call_cost``."""
    return {
        **{f"p_{name}": getattr(usage, name) for name in USAGE_COLUMNS},
        "p_batch": usage.batch,
        "p_prompt_tokens": usage.prompt_tokens,
        "p_divisor": TOKENS_PER_PRICE_UNIT * (BATCH_DIVISOR if usage.batch else 1),
    }
