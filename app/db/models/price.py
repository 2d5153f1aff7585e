"""``prices``: what each model costs per token class, effective from a point in time, and
``price_bands``: the dearer rates of calls whose prompt passes a size."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKeyConstraint, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, Microdollars, Str100


class Price(Base):
    """A model's price per token class in microdollars per million tokens, in force from
    ``effective_from`` until the model's next row. Rows are only ever added: a price
    change applies to charges after its time and never to a past one (DESIGN.md §6b).
    ``source`` names where the figures come from. ``web_search_per_1k`` is the price of
    1,000 web search requests (NULL: not priced, so a call that used it is refused)."""

    __tablename__ = "prices"
    __table_args__ = (
        CheckConstraint(
            "input_per_mtok >= 0 AND output_per_mtok >= 0 AND cache_write_5m_per_mtok >= 0"
            " AND cache_write_1h_per_mtok >= 0 AND cache_read_per_mtok >= 0",
            name="non_negative",
        ),
        CheckConstraint("web_search_per_1k >= 0", name="web_search_non_negative"),
    )

    model: Mapped[Str100] = mapped_column(primary_key=True)
    effective_from: Mapped[datetime] = mapped_column(primary_key=True)
    input_per_mtok: Mapped[Microdollars]
    output_per_mtok: Mapped[Microdollars]
    cache_write_5m_per_mtok: Mapped[Microdollars]
    cache_write_1h_per_mtok: Mapped[Microdollars]
    cache_read_per_mtok: Mapped[Microdollars]
    source: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now(), init=False, repr=False)
    web_search_per_1k: Mapped[Microdollars | None] = mapped_column(default=None)


class PriceBand(Base):
    """A band of one ``prices`` row: a call whose prompt (input + cache writes + cache
    reads) has more than ``threshold_tokens`` pays these rates for all its tokens (the
    highest band it passes). Added with its row, never changed; deleted with it."""

    __tablename__ = "price_bands"
    __table_args__ = (
        ForeignKeyConstraint(
            ["model", "effective_from"],
            ["prices.model", "prices.effective_from"],
            name="fk_price_bands_model_prices",
            ondelete="CASCADE",
        ),
        CheckConstraint("threshold_tokens > 0", name="threshold_positive"),
        CheckConstraint(
            "input_per_mtok >= 0 AND output_per_mtok >= 0 AND cache_write_5m_per_mtok >= 0"
            " AND cache_write_1h_per_mtok >= 0 AND cache_read_per_mtok >= 0",
            name="non_negative",
        ),
    )

    model: Mapped[Str100] = mapped_column(primary_key=True)
    effective_from: Mapped[datetime] = mapped_column(primary_key=True)
    threshold_tokens: Mapped[Microdollars] = mapped_column(primary_key=True)
    input_per_mtok: Mapped[Microdollars]
    output_per_mtok: Mapped[Microdollars]
    cache_write_5m_per_mtok: Mapped[Microdollars]
    cache_write_1h_per_mtok: Mapped[Microdollars]
    cache_read_per_mtok: Mapped[Microdollars]
