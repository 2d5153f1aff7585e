"""prices by prompt-size band, web search per use, and a seed of current models

* ``price_bands``: a ``prices`` row may carry bands by prompt size. A call whose prompt
  (input + cache writes + cache reads) has more than ``threshold_tokens`` pays the
  band's rates for all its tokens (the highest band it passes). Bands belong to their
  row (same model and ``effective_from``), so they stay effective-dated with it.
* ``prices.web_search_per_1k``: web search requests in µ$ per 1,000 (NULL: not priced;
  a call that used it is refused, never charged as free).
* ``agent_cost_events.web_search_requests``: the ledger keeps what it charged for, so
  each row's cost can still be audited (rows before this revision get 0).
* The rows 0008 seeded get what their source publishes and 0008 left out: web search at
  $10 per 1,000, and the 200k-token band of Sonnet 4 and 4.5 (1M context: $6 / $22.50).
  This fixes the seed, not a price change: ledger rows keep the cost they were charged.
* Current models the seed lacked, from the ``genai-prices`` data (tiered prices and
  per-model cache rates as published), each row naming its source and the date it was
  read. docs/pricing.md says how to refresh it.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Web search on Anthropic's API: $10 per 1,000 requests, as µ$ per 1,000.
WEB_SEARCH = 10_000_000
GENAI = (
    "genai-prices 0.2.3 (PyPI, data of 2026-11), provider 'anthropic', model {id!r};"
    " read 2026-12-02; refs: https://platform.claude.com/docs/en/about-claude/pricing"
)
LONG_CONTEXT = (
    "Anthropic, Pricing, 'Long context pricing' (Sonnet 4 and 4.5 with the 1M context:"
    " a prompt above 200k tokens bills every token at $6 input / $22.50 output, the"
    " cache classes scaled alike); read 2026-12-02:"
    " https://platform.claude.com/docs/en/about-claude/pricing#long-context-pricing"
)


def _at(year: int, month: int, day: int) -> datetime:
    return datetime(year, month, day, tzinfo=UTC)


#: A model whose release date the source does not give is in force from here: before
#: any Claude 4 model existed, so no call of it can fall before its row.
BEFORE_RELEASE = _at(2025, 1, 1)
#: The 4.6 models' 1M context became flat-priced on this date (genai-prices).
FLAT_1M = _at(2026, 3, 13)

Rates = tuple[int, int, int, int, int]  # input, output, 5m write, 1h write, read (µ$/Mtok)
SONNET: Rates = (3_000_000, 15_000_000, 3_750_000, 6_000_000, 300_000)
SONNET_LONG: Rates = (6_000_000, 22_500_000, 7_500_000, 12_000_000, 600_000)
OPUS_4: Rates = (15_000_000, 75_000_000, 18_750_000, 30_000_000, 1_500_000)
OPUS_45: Rates = (5_000_000, 25_000_000, 6_250_000, 10_000_000, 500_000)
OPUS_46_LONG: Rates = (10_000_000, 37_500_000, 12_500_000, 20_000_000, 1_000_000)

#: 0008's rows that get web search, by (model, effective_from).
WEB_SEARCH_ROWS: tuple[tuple[str, datetime], ...] = (
    ("claude-opus-4-20250514", _at(2025, 5, 14)),
    ("claude-sonnet-4-20250514", _at(2025, 5, 14)),
    ("claude-opus-4-1-20250805", _at(2025, 8, 5)),
    ("claude-sonnet-4-5-20250929", _at(2025, 9, 29)),
    ("claude-sonnet-4-5", _at(2025, 9, 29)),
    ("claude-haiku-4-5-20251001", _at(2025, 10, 1)),
    ("claude-haiku-4-5", _at(2025, 10, 1)),
    ("claude-opus-4-5-20251101", _at(2025, 11, 1)),
    ("claude-opus-4-5", _at(2025, 11, 1)),
    ("claude-sonnet-5", _at(2026, 6, 30)),
    ("claude-3-5-haiku-20241022", _at(2024, 10, 22)),
)
#: 0008's rows that get the 200k band.
BANDED_ROWS: tuple[tuple[str, datetime], ...] = (
    ("claude-sonnet-4-20250514", _at(2025, 5, 14)),
    ("claude-sonnet-4-5-20250929", _at(2025, 9, 29)),
    ("claude-sonnet-4-5", _at(2025, 9, 29)),
)

# model, in force from, rates, [(threshold, band rates)], source. Cache rates as the
# source publishes them per model: reads 0.1x input for most, 0.05x (Opus 5.5, Sonnet
# 5.5) or 0.025x (Fable 5.1 and 5.2, Mythos 5.2) for the newer ones.
NEW_ROWS: tuple[tuple[str, datetime, Rates, tuple[tuple[int, Rates], ...], str], ...] = (
    # Aliases of 0008's dated ids.
    ("claude-opus-4-0", _at(2025, 5, 14), OPUS_4, (), GENAI.format(id="claude-opus-4-0")),
    ("claude-sonnet-4-0", _at(2025, 5, 14), SONNET, ((200_000, SONNET_LONG),), LONG_CONTEXT),
    ("claude-opus-4-1", _at(2025, 8, 5), OPUS_4, (), GENAI.format(id="claude-opus-4-1")),
    # The 4.6 models: banded at 200k, then flat over the whole 1M context.
    ("claude-opus-4-6", BEFORE_RELEASE, OPUS_45, ((200_000, OPUS_46_LONG),),
     GENAI.format(id="claude-opus-4-6")),
    ("claude-opus-4-6", FLAT_1M, OPUS_45, (), GENAI.format(id="claude-opus-4-6")),
    ("claude-sonnet-4-6", BEFORE_RELEASE, SONNET, ((200_000, SONNET_LONG),),
     GENAI.format(id="claude-sonnet-4-6")),
    ("claude-sonnet-4-6", FLAT_1M, SONNET, (), GENAI.format(id="claude-sonnet-4-6")),
    ("claude-opus-4-7", BEFORE_RELEASE, OPUS_45, (), GENAI.format(id="claude-opus-4-7")),
    ("claude-opus-4-8", BEFORE_RELEASE, OPUS_45, (), GENAI.format(id="claude-opus-4-8")),
    ("claude-opus-5", BEFORE_RELEASE, OPUS_45, (), GENAI.format(id="claude-opus-5")),
    ("claude-opus-5-5", BEFORE_RELEASE,
     (4_000_000, 20_000_000, 5_000_000, 8_000_000, 200_000), (), GENAI.format(id="claude-opus-5-5")),
    ("claude-sonnet-5-5", BEFORE_RELEASE,
     (2_000_000, 10_000_000, 2_500_000, 4_000_000, 100_000), (),
     GENAI.format(id="claude-sonnet-5-5")),
    # Haiku 5.5: every token of a prompt above 100k at 5x.
    ("claude-haiku-5-5", BEFORE_RELEASE, (100_000, 500_000, 125_000, 200_000, 10_000),
     ((100_000, (500_000, 2_500_000, 625_000, 1_000_000, 50_000)),),
     GENAI.format(id="claude-haiku-5-5")),
    ("claude-fable-5", BEFORE_RELEASE,
     (10_000_000, 50_000_000, 12_500_000, 20_000_000, 1_000_000), (),
     GENAI.format(id="claude-fable-5")),
    ("claude-fable-5-1", BEFORE_RELEASE,
     (10_000_000, 50_000_000, 12_500_000, 20_000_000, 250_000), (),
     GENAI.format(id="claude-fable-5-1")),
    ("claude-fable-5-2", BEFORE_RELEASE,
     (8_000_000, 40_000_000, 10_000_000, 16_000_000, 200_000), (),
     GENAI.format(id="claude-fable-5-2")),
    ("claude-mythos-5-2", BEFORE_RELEASE,
     (8_000_000, 40_000_000, 10_000_000, 16_000_000, 200_000), (),
     GENAI.format(id="claude-mythos-5-2")),
)  # fmt: skip

CLASSES = (
    "input_per_mtok",
    "output_per_mtok",
    "cache_write_5m_per_mtok",
    "cache_write_1h_per_mtok",
    "cache_read_per_mtok",
)
NON_NEGATIVE = " AND ".join(f"{c} >= 0" for c in CLASSES)


def _prices() -> sa.TableClause:
    return sa.table(
        "prices",
        sa.column("model", sa.String),
        sa.column("effective_from", sa.DateTime(timezone=True)),
        sa.column("source", sa.Text),
        sa.column("web_search_per_1k", sa.BigInteger),
        *(sa.column(c, sa.BigInteger) for c in CLASSES),
    )


def _bands() -> sa.TableClause:
    return sa.table(
        "price_bands",
        sa.column("model", sa.String),
        sa.column("effective_from", sa.DateTime(timezone=True)),
        sa.column("threshold_tokens", sa.BigInteger),
        *(sa.column(c, sa.BigInteger) for c in CLASSES),
    )


def _add_band(
    model: str, start: datetime, threshold: int, rates: Rates, source: str | None = None
) -> None:
    """The band, only if the row it belongs to exists (and, given ``source``, is the row
    this revision wrote: never an operator's own row)."""
    prices, bands = _prices(), _bands()
    where = [prices.c.model == model, prices.c.effective_from == start]
    if source is not None:
        where.append(prices.c.source == source)
    op.execute(
        sa.insert(bands).from_select(
            ["model", "effective_from", "threshold_tokens", *CLASSES],
            sa.select(
                prices.c.model,
                prices.c.effective_from,
                sa.literal(threshold, sa.BigInteger),
                *(sa.literal(v, sa.BigInteger) for v in rates),
            ).where(*where),
        )
    )


def upgrade() -> None:
    op.add_column("prices", sa.Column("web_search_per_1k", sa.BigInteger(), nullable=True))
    op.create_check_constraint(
        op.f("ck_prices_web_search_non_negative"), "prices", "web_search_per_1k >= 0"
    )
    op.create_table(
        "price_bands",
        sa.Column("model", sa.String(100), nullable=False),
        sa.Column("effective_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column("threshold_tokens", sa.BigInteger(), nullable=False),
        *(sa.Column(c, sa.BigInteger(), nullable=False) for c in CLASSES),
        sa.CheckConstraint("threshold_tokens > 0", name=op.f("ck_price_bands_threshold_positive")),
        sa.CheckConstraint(NON_NEGATIVE, name=op.f("ck_price_bands_non_negative")),
        sa.ForeignKeyConstraint(
            ["model", "effective_from"],
            ["prices.model", "prices.effective_from"],
            name="fk_price_bands_model_prices",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "model", "effective_from", "threshold_tokens", name=op.f("pk_price_bands")
        ),
    )
    op.add_column(
        "agent_cost_events",
        sa.Column("web_search_requests", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    op.create_check_constraint(
        op.f("ck_agent_cost_events_web_search_requests_non_negative"),
        "agent_cost_events",
        "web_search_requests >= 0",
    )

    prices = _prices()
    for model, start in WEB_SEARCH_ROWS:
        op.execute(
            sa.update(prices)
            .where(prices.c.model == model, prices.c.effective_from == start)
            .values(web_search_per_1k=WEB_SEARCH)
        )
    for model, start in BANDED_ROWS:
        _add_band(model, start, 200_000, SONNET_LONG)
    for model, start, rates, bands, source in NEW_ROWS:
        op.execute(
            postgresql.insert(prices)
            .values(
                model=model,
                effective_from=start,
                source=source,
                web_search_per_1k=WEB_SEARCH,
                **dict(zip(CLASSES, rates, strict=True)),
            )
            .on_conflict_do_nothing(index_elements=["model", "effective_from"])
        )
        for threshold, band_rates in bands:
            _add_band(model, start, threshold, band_rates, source)


def downgrade() -> None:
    prices = _prices()
    for model, start, _, __, source in NEW_ROWS:
        op.execute(
            sa.delete(prices).where(
                prices.c.model == model, prices.c.effective_from == start, prices.c.source == source
            )
        )
    op.drop_constraint(
        op.f("ck_agent_cost_events_web_search_requests_non_negative"),
        "agent_cost_events",
        type_="check",
    )
    op.drop_column("agent_cost_events", "web_search_requests")
    op.drop_table("price_bands")
    op.drop_constraint(op.f("ck_prices_web_search_non_negative"), "prices", type_="check")
    op.drop_column("prices", "web_search_per_1k")
