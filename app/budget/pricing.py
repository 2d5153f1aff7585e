"""What an LLM call costs (BDGT-06, DESIGN.md §6b): integer arithmetic, no I/O, no settings read.

Every token class has its own price in microdollars per million tokens, and each class
is priced and floored on its own; the Batch API halves every class before the floor.
A price may carry bands by prompt size (:class:`Tariff`): a call whose prompt (input +
cache writes + cache reads) passes a band's threshold pays that band's rates for all its
tokens. Server tools are priced per use (web search per 1,000 requests), never halved.
``app.repositories.price_sql`` is this module's twin in SQL, which the charge runs so that
the effective-dated price and its band are looked up in the same statement.
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
#: Web search is priced per this many requests (Anthropic: $10 per 1,000).
SEARCHES_PER_PRICE_UNIT: Final = 1_000
#: ``usage.server_tool_use`` counters the provider does not bill (web fetch costs only
#: the tokens it adds to the prompt); any other non-zero counter without a price is
#: refused rather than ignored.
UNBILLED_SERVER_TOOLS: Final = frozenset({"web_fetch_requests"})
#: ``usage.inference_geo`` values billed at the standard price.
STANDARD_GEOS: Final = frozenset({"global", "not_available"})


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


class Band(NamedTuple):
    """Rates for every token of a call whose prompt has more than ``threshold_tokens``."""

    threshold_tokens: int
    rates: Rates


def band(
    threshold_tokens: int,
    base: Rates,
    input_per_mtok: int,
    output_per_mtok: int,
    *,
    cache_write_5m: int | None = None,
    cache_write_1h: int | None = None,
    cache_read: int | None = None,
) -> Band:
    """A checked band. A cache class left out is the base row's rate for that class scaled
    like the input rate (Sonnet 4.5: input $3 -> $6, so reads $0.30 -> $0.60), which
    keeps a model's own cache ratios; with a base input of 0 every class must be given."""
    threshold = require_int(
        threshold_tokens, "threshold_tokens", minimum=1, maximum=MAX_TOKENS_PER_CALL
    )
    i = require_int(input_per_mtok, "band input_per_mtok", maximum=MAX_PRICE_PER_MTOK)
    o = require_int(output_per_mtok, "band output_per_mtok", maximum=MAX_PRICE_PER_MTOK)
    given = {
        "cache_write_5m": (cache_write_5m, base.cache_write_5m),
        "cache_write_1h": (cache_write_1h, base.cache_write_1h),
        "cache_read": (cache_read, base.cache_read),
    }
    out: dict[str, int] = {}
    for name, (value, base_rate) in given.items():
        if value is not None:
            out[name] = require_int(value, f"band {name}_per_mtok", maximum=MAX_PRICE_PER_MTOK)
        elif base.input > 0:
            out[name] = base_rate * i // base.input
        else:
            raise InvalidInput(
                f"band {name}_per_mtok must be given: the base input price is 0, so it"
                " cannot be scaled from it",
                field=f"{name}_per_mtok",
            )
    return Band(threshold, Rates(i, o, **out))


@dataclass(frozen=True, slots=True)
class Tariff:
    """A model's whole price: ``rates`` for a call whose prompt passes no band, ``bands``
    by ascending threshold, and web search in µ$ per 1,000 requests (None: not priced,
    so a call that used it is refused)."""

    rates: Rates
    bands: tuple[Band, ...] = ()
    web_search_per_1k: int | None = None

    def rates_for(self, prompt_tokens: int) -> Rates:
        """The rates of a call whose prompt has ``prompt_tokens``: the highest band whose
        threshold it passes (has more tokens than), else the base rates."""
        chosen = self.rates
        for each in self.bands:
            if prompt_tokens > each.threshold_tokens:
                chosen = each.rates
        return chosen


def tariff(base: Rates, bands: Any = (), web_search_per_1k: int | None = None) -> Tariff:
    """A checked ``Tariff``: bands with distinct thresholds (sorted here), each a ``Band``."""
    if not isinstance(base, Rates):
        raise InvalidInput(f"rates must be pricing.Rates, not {type(base).__name__}", field="rates")
    found = tuple(bands)
    for each in found:
        if not isinstance(each, Band) or not isinstance(each.rates, Rates):
            raise InvalidInput(
                f"bands must be pricing.Band values, not {type(each).__name__}", field="bands"
            )
    ordered = tuple(sorted(found, key=lambda b: b.threshold_tokens))
    thresholds = [b.threshold_tokens for b in ordered]
    if len(set(thresholds)) != len(thresholds):
        raise InvalidInput(f"two bands share a threshold: {thresholds}", field="bands")
    search = (
        None
        if web_search_per_1k is None
        else require_int(web_search_per_1k, "web_search_per_1k", maximum=MAX_PRICE_PER_MTOK)
    )
    return Tariff(base, ordered, search)


def tariff_of(price: ModelPrice) -> Tariff:
    """A configured ``ModelPrice`` (bands and web search included) as a ``Tariff``."""
    base = rates_of(price)
    return tariff(
        base,
        [
            Band(
                b.threshold_tokens,
                rates(
                    b.input_per_mtok,
                    b.output_per_mtok,
                    cache_write_5m=b.cache_write_5m_per_mtok,
                    cache_write_1h=b.cache_write_1h_per_mtok,
                    cache_read=b.cache_read_per_mtok,
                ),
            )
            for b in price.bands
        ],
        price.web_search_per_1k,
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
    #: ``usage.server_tool_use.web_search_requests``: priced per use, not per token.
    web_search_requests: int = 0

    @property
    def cache_creation_5m_input_tokens(self) -> int:
        return self.cache_creation_input_tokens - self.cache_creation_1h_input_tokens

    @classmethod
    def from_usage(cls, usage: Any) -> TokenUsage:
        """A provider's usage report, whatever its shape (see :func:`parse_usage`)."""
        return parse_usage(usage)

    @property
    def prompt_tokens(self) -> int:
        """The prompt as the provider counts it for bands: input + cache writes + reads."""
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens


def token_usage(
    *,
    input_tokens: Any,
    output_tokens: Any,
    cache_creation_input_tokens: Any = 0,
    cache_creation_1h_input_tokens: Any = 0,
    cache_read_input_tokens: Any = 0,
    batch: Any = False,
    web_search_requests: Any = 0,
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
        web_search_requests=count(web_search_requests, "web_search_requests"),
    )


def _field(source: Any, name: str) -> Any:
    if isinstance(source, Mapping):
        return source.get(name)
    return getattr(source, name, None)


def parse_usage(usage: Any, *, field: str = "usage") -> TokenUsage:
    """A provider's usage report as a ``TokenUsage``, whatever its shape:

    * OpenAI Chat Completions (``prompt_tokens``, ``completion_tokens``,
      ``prompt_tokens_details.cached_tokens``): the cached tokens are part of the
      prompt, and are priced as cache reads;
    * OpenAI Responses (``input_tokens`` with ``input_tokens_details.cached_tokens``):
      likewise;
    * LangChain ``usage_metadata`` (``total_tokens``, ``input_token_details`` with
      ``cache_read`` / ``cache_creation``): its ``input_tokens`` include both;
    * the Anthropic SDK's ``Usage`` or its dict (below), where ``input_tokens`` counts
      neither.

    Output tokens include reasoning tokens, which are billed as output. A part of the
    usage that is billed at a price no class here holds (audio tokens) is refused.
    """
    if usage is None or isinstance(usage, str | bytes | int | float | list | tuple):
        raise InvalidInput(
            f"{field} must be a provider's usage object or its dict form, not"
            f" {type(usage).__name__}",
            field=field,
        )
    where = field + "."
    if _field(usage, "prompt_tokens") is not None or _field(usage, "completion_tokens") is not None:
        return _cached_within_input(
            usage, where, "prompt_tokens", "completion_tokens", "prompt_tokens_details",
            "completion_tokens_details",
        )  # fmt: skip
    if _field(usage, "input_tokens_details") is not None:
        return _cached_within_input(
            usage, where, "input_tokens", "output_tokens", "input_tokens_details",
            "output_tokens_details",
        )  # fmt: skip
    if _field(usage, "input_token_details") is not None or (
        _field(usage, "total_tokens") is not None
        and all(_field(usage, k) is None for k in _ANTHROPIC_ONLY)
    ):
        return _langchain_usage(usage, where)
    return _anthropic_usage(usage, field)


#: Fields only an Anthropic usage has: their presence says the shape.
_ANTHROPIC_ONLY: Final = (
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "cache_creation",
    "server_tool_use",
    "service_tier",
)


def _details(usage: Any, name: str, where: str) -> Any:
    found = _field(usage, name)
    if found is not None and not isinstance(found, Mapping) and not hasattr(found, "__dict__"):
        raise InvalidInput(
            f"{where}{name} must be an object of counts, not {type(found).__name__}",
            field=where + name,
        )
    return found


def _count(owner: Any, name: str, where: str) -> int:
    value = None if owner is None else _field(owner, name)
    return require_int(0 if value is None else value, where + name, maximum=MAX_TOKENS_PER_CALL)


def _refuse_audio(details: Any, where: str) -> None:
    if details is not None and _count(details, "audio_tokens", where) > 0:
        raise InvalidInput(
            f"{where}audio_tokens are not priced (audio has prices of its own)",
            field=where + "audio_tokens",
        )


def _cached_within_input(
    usage: Any, where: str, prompt: str, completion: str, prompt_details: str, output_details: str
) -> TokenUsage:
    """OpenAI's shapes: the prompt count includes its cached tokens."""
    for required in (prompt, completion):
        if _field(usage, required) is None:
            raise InvalidInput(f"{where}{required} is missing", field=where + required)
    details = _details(usage, prompt_details, where)
    dwhere = f"{where}{prompt_details}."
    total = _count(usage, prompt, where)
    cached = _count(details, "cached_tokens", dwhere)
    if cached > total:
        raise InvalidInput(
            f"{dwhere}cached_tokens ({cached}) is more than {where}{prompt} ({total})",
            field=dwhere + "cached_tokens",
        )
    _refuse_audio(details, dwhere)
    _refuse_audio(_details(usage, output_details, where), f"{where}{output_details}.")
    return token_usage(
        input_tokens=total - cached,
        output_tokens=_field(usage, completion),
        cache_read_input_tokens=cached,
        where=where,
    )


def _langchain_usage(usage: Any, where: str) -> TokenUsage:
    """LangChain's ``usage_metadata``: ``input_tokens`` include cache reads and writes."""
    for required in ("input_tokens", "output_tokens"):
        if _field(usage, required) is None:
            raise InvalidInput(f"{where}{required} is missing", field=where + required)
    details = _details(usage, "input_token_details", where)
    dwhere = where + "input_token_details."
    total = _count(usage, "input_tokens", where)
    reads = _count(details, "cache_read", dwhere)
    writes = _count(details, "cache_creation", dwhere)
    hour = _count(details, "ephemeral_1h_input_tokens", dwhere)
    if reads + writes > total:
        raise InvalidInput(
            f"{dwhere}cache_read + cache_creation ({reads + writes}) is more than"
            f" {where}input_tokens ({total})",
            field=dwhere + "cache_read",
        )
    if details is not None and _count(details, "audio", dwhere) > 0:
        raise InvalidInput(f"{dwhere}audio is not priced", field=dwhere + "audio")
    return token_usage(
        input_tokens=total - reads - writes,
        output_tokens=_field(usage, "output_tokens"),
        cache_creation_input_tokens=writes,
        cache_creation_1h_input_tokens=min(hour, writes),
        cache_read_input_tokens=reads,
        where=where,
    )


def _anthropic_usage(usage: Any, field: str) -> TokenUsage:
    """The Anthropic SDK's ``Usage`` object, or its dict form, as a ``TokenUsage``.

    Reads ``input_tokens``, ``output_tokens``, ``cache_creation_input_tokens``,
    ``cache_read_input_tokens``, the ``cache_creation`` breakdown
    (``ephemeral_5m_input_tokens`` / ``ephemeral_1h_input_tokens``) and
    ``service_tier`` ("batch" halves the price). Without a breakdown every cache write
    is priced at the 5-minute rate. Missing or ``None`` cache fields count as 0.
    ``server_tool_use.web_search_requests`` is priced per use; a field that would change
    the bill and has no price here (``speed: "fast"``, an ``inference_geo`` other than
    "global", a server tool counter other than web search and web fetch) is refused.
    """
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

    _check_geo(usage, where)
    searches = _web_searches(usage, where)

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
        web_search_requests=searches,
        where=where,
    )


def _check_geo(usage: Any, where: str) -> None:
    # US-only inference is billed at a multiple of every class on the models that offer
    # it; no price here holds that multiple, so refuse rather than undercharge.
    geo = _field(usage, "inference_geo")
    if geo is not None and geo not in STANDARD_GEOS:
        raise InvalidInput(
            f"{where}inference_geo {geo!r} is not priced (only global inference is)",
            field=where + "inference_geo",
        )


def _web_searches(usage: Any, where: str) -> int:
    """``usage.server_tool_use.web_search_requests`` (0 when absent), after checking that
    no other counter bills something that has no price here."""
    tools = _field(usage, "server_tool_use")
    if tools is None:
        return 0
    twhere = where + "server_tool_use."
    if isinstance(tools, Mapping):
        counters = dict(tools)
    elif hasattr(tools, "web_search_requests"):
        # An SDK model: its declared fields, and any the SDK did not know yet; another
        # object: its attributes.
        declared = getattr(type(tools), "model_fields", None)
        names = (
            [*declared, *(getattr(tools, "model_extra", None) or {})]
            if isinstance(declared, Mapping)
            else [n for n in getattr(tools, "__dict__", {"web_search_requests": 0})]
        )
        counters = {name: getattr(tools, name) for name in names}
    else:
        raise InvalidInput(
            f"{where}server_tool_use must be the counts of server tool requests, not"
            f" {type(tools).__name__}",
            field=where + "server_tool_use",
        )
    searches = 0
    for name, value in counters.items():
        if not isinstance(name, str):
            raise InvalidInput(
                f"{twhere[:-1]} has a key that is not a name: {name!r}", field=twhere[:-1]
            )
        count = require_int(
            0 if value is None else value, twhere + name, maximum=MAX_TOKENS_PER_CALL
        )
        if name == "web_search_requests":
            searches = count
        elif name not in UNBILLED_SERVER_TOOLS and count:
            raise InvalidInput(
                f"{twhere}{name} ({count}) is not priced: only web search requests are"
                " billed per use here",
                field=twhere + name,
            )
    return searches


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


def web_search_cost(price: Tariff, requests: int, *, model: str = "") -> int:
    """What ``requests`` web searches cost at ``price`` (floored; a batch pays in full:
    no batch rate is published for them). Searches without a price: ``InvalidInput``."""
    if requests == 0:
        return 0
    if price.web_search_per_1k is None:
        raise InvalidInput(
            f"web search has no price{f' for model {model!r}' if model else ''}: add one"
            " (`python -m app prices set ... --web-search-per-1k`) before charging"
            f" {requests} search(es)",
            field="web_search_requests",
        )
    return requests * price.web_search_per_1k // SEARCHES_PER_PRICE_UNIT


def call_cost(price: Tariff, usage: TokenUsage, *, model: str = "") -> int:
    """Cost of one call: its tokens at the rates of the band its prompt falls into (every
    token, not only those above the threshold), plus its web searches."""
    return usage_cost(price.rates_for(usage.prompt_tokens), usage) + web_search_cost(
        price, usage.web_search_requests, model=model
    )


def worst_case_call_cost(
    price: Tariff, max_input_tokens: int, max_output_tokens: int, max_cache_creation: int = 0
) -> int:
    """What a reservation books under a tariff: ``worst_case_cost`` at the band that the
    largest prompt it allows (input + cache writes) falls into."""
    return worst_case_cost(
        price.rates_for(max_input_tokens + max_cache_creation),
        max_input_tokens,
        max_output_tokens,
        max_cache_creation,
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
    web_search_requests: int = 0,
) -> int:
    """Cost of one call in microdollars at a configured price list (the built-in one by
    default), bands and web search included, with integer arithmetic only."""
    price = price_of(model, default_prices() if prices is None else prices)
    usage = token_usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_creation_input_tokens=cache_creation_input_tokens,
        cache_creation_1h_input_tokens=cache_creation_1h_input_tokens,
        cache_read_input_tokens=cache_read_input_tokens,
        batch=batch,
        web_search_requests=web_search_requests,
    )
    return call_cost(tariff_of(price), usage, model=model)
