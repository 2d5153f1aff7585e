"""``prices``: what each model costs per token class, effective from a point in time."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, Microdollars, Str100


class Price(Base):
    """A model's price per token class in microdollars per million tokens, in force from
    ``effective_from`` until the model's next row. Rows are only ever added: a price
    change applies to charges after its time and never to a past one (DESIGN.md §6b).
    ``source`` names where the figures come from."""

    __tablename__ = "prices"
    __table_args__ = (
        CheckConstraint(
            "input_per_mtok >= 0 AND output_per_mtok >= 0 AND cache_write_5m_per_mtok >= 0"
            " AND cache_write_1h_per_mtok >= 0 AND cache_read_per_mtok >= 0",
            name="non_negative",
        ),
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
