"""PriceRepository: the effective-dated price list that charges look up (DESIGN.md §6b)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.budget.pricing import Rates
from app.db import tables
from app.domain import InvalidInput
from app.repositories.errors import translated
from app.validation import MAX_MODEL_LENGTH, require_aware, require_text

MAX_SOURCE_LENGTH = 1_000


@dataclass(frozen=True, slots=True)
class PriceEntry:
    """One row of the price list: ``rates`` in µ$ per Mtok for ``model`` from
    ``effective_from`` on (until the model's next row), and where they come from."""

    model: str
    effective_from: datetime
    rates: Rates
    source: str


def _entry(row: Any) -> PriceEntry:
    return PriceEntry(
        model=row.model,
        effective_from=row.effective_from,
        rates=Rates(*(int(getattr(row, name)) for name in CLASSES)),
        source=row.source,
    )


CLASSES = (
    "input_per_mtok",
    "output_per_mtok",
    "cache_write_5m_per_mtok",
    "cache_write_1h_per_mtok",
    "cache_read_per_mtok",
)


@translated
class PriceRepository:
    """Reads and adds rows of the ``prices`` table. Rows are never changed or deleted: a
    new price is a new row from its time on. Never commits."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def list(self, *, model: str | None = None) -> list[PriceEntry]:
        """Every price row (of ``model`` only, if given), by model and time."""
        p = tables.prices.c
        query = select(tables.prices).order_by(p.model, p.effective_from)
        if model is not None:
            query = query.where(
                p.model == require_text(model, "model", max_length=MAX_MODEL_LENGTH)
            )
        return [_entry(row) for row in await self.session.execute(query)]

    async def in_force(self, model: str, *, at: datetime) -> PriceEntry | None:
        """The row of ``model`` in force at ``at`` (the newest from ``at`` or before)."""
        require_text(model, "model", max_length=MAX_MODEL_LENGTH)
        moment = require_aware(at, "at")
        p = tables.prices.c
        row = (
            await self.session.execute(
                select(tables.prices)
                .where(p.model == model, p.effective_from <= moment)
                .order_by(p.effective_from.desc())
                .limit(1)
            )
        ).one_or_none()
        return None if row is None else _entry(row)

    async def add(
        self, *, model: str, rates: Rates, effective_from: datetime, source: str
    ) -> PriceEntry:
        """Add ``model``'s price from ``effective_from`` on. A row for the same model and
        time already exists: ``InvalidInput`` (prices are never changed in place)."""
        require_text(model, "model", max_length=MAX_MODEL_LENGTH)
        moment = require_aware(effective_from, "effective_from")
        require_text(source, "source", max_length=MAX_SOURCE_LENGTH)
        if not isinstance(rates, Rates):
            raise InvalidInput(f"rates must be pricing.Rates, not {type(rates).__name__}")
        stmt = (
            insert(tables.prices)
            .values(
                model=model,
                effective_from=moment,
                source=source,
                **dict(zip(CLASSES, rates, strict=True)),
            )
            .on_conflict_do_nothing(index_elements=["model", "effective_from"])
            .returning(tables.prices.c.model)
        )
        if await self.session.scalar(stmt) is None:
            raise InvalidInput(
                f"model {model!r} already has a price from {moment.isoformat()}: prices are"
                " never changed in place; add one from a later time",
                field="effective_from",
            )
        return PriceEntry(model, moment, rates, source)
