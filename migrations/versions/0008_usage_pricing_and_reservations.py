"""prices by token class, effective-dated; the ledger's tokens by class; reservations

* ``prices``: each model's price per token class (input, output, 5-minute and 1-hour
  cache writes, cache reads) in microdollars per million tokens, in force from
  ``effective_from``. Seeded with Anthropic's published prices, the source named on
  each row.
* ``agent_cost_events`` keeps its token counts by class and whether the call was a
  batch, so each row's cost can be audited (rows before this revision get zeros).
* ``budget_reservations`` and ``budget_days.reserved_microdollars``: the worst-case
  cost of calls in flight, for callers that want a hard cap (DESIGN.md §6b).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Where the seeded figures come from: the "Model pricing" table of Anthropic's pricing
#: page (USD per million tokens, here in microdollars per million tokens), and the model
#: overview page for a model that page lists apart.
PRICING_PAGE = (
    "Anthropic, Pricing, 'Model pricing' table (base input, 5m cache writes, 1h cache"
    " writes, cache hits, output): https://platform.claude.com/docs/en/about-claude/pricing"
)
SONNET_5_PAGE = (
    "Anthropic, Claude Sonnet 5 model overview, 'Pricing' (released June 30, 2026):"
    " https://platform.claude.com/docs/en/models/sonnet-5/overview"
)
OPUS_4 = (15_000_000, 75_000_000, 18_750_000, 30_000_000, 1_500_000)
OPUS_45 = (5_000_000, 25_000_000, 6_250_000, 10_000_000, 500_000)
SONNET_4 = (3_000_000, 15_000_000, 3_750_000, 6_000_000, 300_000)
HAIKU_45 = (1_000_000, 5_000_000, 1_250_000, 2_000_000, 100_000)


def _from(year: int, month: int, day: int) -> datetime:
    return datetime(year, month, day, tzinfo=UTC)


# model, in force from (the snapshot date in the model id, or the release date), then
# µ$ per Mtok: input, output, 5-minute cache write, 1-hour cache write, cache read.
SEED: tuple[tuple[str, datetime, tuple[int, int, int, int, int], str], ...] = (
    # The two models the tiers are pinned to (DESIGN.md §6).
    ("claude-opus-4-20250514", _from(2025, 5, 14), OPUS_4, PRICING_PAGE),
    ("claude-sonnet-4-20250514", _from(2025, 5, 14), SONNET_4, PRICING_PAGE),
    # The other Claude models on the page, by their dated ids and the aliases the SDK's
    # Message.model lists for them.
    ("claude-opus-4-1-20250805", _from(2025, 8, 5), OPUS_4, PRICING_PAGE),
    ("claude-sonnet-4-5-20250929", _from(2025, 9, 29), SONNET_4, PRICING_PAGE),
    ("claude-sonnet-4-5", _from(2025, 9, 29), SONNET_4, PRICING_PAGE),
    ("claude-haiku-4-5-20251001", _from(2025, 10, 1), HAIKU_45, PRICING_PAGE),
    ("claude-haiku-4-5", _from(2025, 10, 1), HAIKU_45, PRICING_PAGE),
    ("claude-opus-4-5-20251101", _from(2025, 11, 1), OPUS_45, PRICING_PAGE),
    ("claude-opus-4-5", _from(2025, 11, 1), OPUS_45, PRICING_PAGE),
    ("claude-sonnet-5", _from(2026, 6, 30),
     (2_000_000, 10_000_000, 2_500_000, 4_000_000, 200_000), SONNET_5_PAGE),
    ("claude-3-5-haiku-20241022", _from(2024, 10, 22),
     (800_000, 4_000_000, 1_000_000, 1_600_000, 80_000), PRICING_PAGE),
    # Haiku 3's 5-minute write is 1.2x its input price, not 1.25x: the classes are
    # seeded as published, never derived.
    ("claude-3-haiku-20240307", _from(2024, 3, 7),
     (250_000, 1_250_000, 300_000, 500_000, 30_000), PRICING_PAGE),
)  # fmt: skip

TOKEN_COLUMNS = (
    "cache_creation_input_tokens",
    "cache_creation_1h_input_tokens",
    "cache_read_input_tokens",
)


def upgrade() -> None:
    prices = op.create_table(
        "prices",
        sa.Column("model", sa.String(100), nullable=False),
        sa.Column("effective_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column("input_per_mtok", sa.BigInteger(), nullable=False),
        sa.Column("output_per_mtok", sa.BigInteger(), nullable=False),
        sa.Column("cache_write_5m_per_mtok", sa.BigInteger(), nullable=False),
        sa.Column("cache_write_1h_per_mtok", sa.BigInteger(), nullable=False),
        sa.Column("cache_read_per_mtok", sa.BigInteger(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint(
            "input_per_mtok >= 0 AND output_per_mtok >= 0 AND cache_write_5m_per_mtok >= 0"
            " AND cache_write_1h_per_mtok >= 0 AND cache_read_per_mtok >= 0",
            name=op.f("ck_prices_non_negative"),
        ),
        sa.PrimaryKeyConstraint("model", "effective_from", name=op.f("pk_prices")),
    )
    op.bulk_insert(
        prices,
        [
            {
                "model": model,
                "effective_from": start,
                "input_per_mtok": i,
                "output_per_mtok": o,
                "cache_write_5m_per_mtok": w5,
                "cache_write_1h_per_mtok": w1,
                "cache_read_per_mtok": r,
                "source": source,
            }
            for model, start, (i, o, w5, w1, r), source in SEED
        ],
    )

    for column in TOKEN_COLUMNS:
        op.add_column(
            "agent_cost_events",
            sa.Column(column, sa.Integer(), server_default=sa.text("0"), nullable=False),
        )
    op.add_column(
        "agent_cost_events",
        sa.Column("batch", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    op.create_check_constraint(
        op.f("ck_agent_cost_events_cache_1h_within_writes"),
        "agent_cost_events",
        "cache_creation_1h_input_tokens >= 0"
        " AND cache_creation_1h_input_tokens <= cache_creation_input_tokens",
    )
    op.create_check_constraint(
        op.f("ck_agent_cost_events_cache_read_non_negative"),
        "agent_cost_events",
        "cache_read_input_tokens >= 0",
    )

    op.add_column(
        "budget_days",
        sa.Column(
            "reserved_microdollars", sa.BigInteger(), server_default=sa.text("0"), nullable=False
        ),
    )
    op.create_check_constraint(
        op.f("ck_budget_days_reserved_non_negative"), "budget_days", "reserved_microdollars >= 0"
    )
    op.create_table(
        "budget_reservations",
        sa.Column("request_id", sa.String(255), nullable=False),
        sa.Column("session_id", sa.String(255), nullable=False),
        sa.Column("clerk_user_id", sa.String(255), nullable=False),
        sa.Column("budget_day", sa.Date(), nullable=False),
        sa.Column("model", sa.String(100), nullable=False),
        sa.Column("amount_microdollars", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint(
            "amount_microdollars >= 0", name=op.f("ck_budget_reservations_amount_non_negative")
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["agent_sessions.id"],
            name=op.f("fk_budget_reservations_session_id_agent_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("request_id", name=op.f("pk_budget_reservations")),
    )
    op.create_index(
        op.f("ix_budget_reservations_clerk_user_id_budget_day_expires_at"),
        "budget_reservations",
        ["clerk_user_id", "budget_day", "expires_at"],
    )
    op.create_index(
        op.f("ix_budget_reservations_session_id"), "budget_reservations", ["session_id"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_budget_reservations_session_id"), table_name="budget_reservations")
    op.drop_index(
        op.f("ix_budget_reservations_clerk_user_id_budget_day_expires_at"),
        table_name="budget_reservations",
    )
    op.drop_table("budget_reservations")
    op.drop_constraint(op.f("ck_budget_days_reserved_non_negative"), "budget_days", type_="check")
    op.drop_column("budget_days", "reserved_microdollars")
    op.drop_constraint(
        op.f("ck_agent_cost_events_cache_read_non_negative"), "agent_cost_events", type_="check"
    )
    op.drop_constraint(
        op.f("ck_agent_cost_events_cache_1h_within_writes"), "agent_cost_events", type_="check"
    )
    op.drop_column("agent_cost_events", "batch")
    for column in reversed(TOKEN_COLUMNS):
        op.drop_column("agent_cost_events", column)
    op.drop_table("prices")
