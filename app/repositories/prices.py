"""PriceRepository: the effective-dated price list that charges look up (DESIGN.md §6b)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.budget.pricing import Band, Rates, Tariff, tariff
from app.db import tables
from app.domain import InvalidInput
from app.repositories.errors import translated
from app.validation import MAX_MODEL_LENGTH, require_aware, require_text

MAX_SOURCE_LENGTH = 1_000


@dataclass(frozen=True, slots=True)
class PriceEntry:
    """One row of the price list: ``rates`` in µ$ per Mtok for ``model`` from
    ``effective_from`` on (until the model's next row), where they come from, its bands
    by prompt size (ascending threshold) and its web search price per 1,000 requests."""

    model: str
    effective_from: datetime
    rates: Rates
    source: str
    bands: tuple[Band, ...] = ()
    web_search_per_1k: int | None = None

    @property
    def tariff(self) -> Tariff:
        """The row's whole price, as ``pricing.call_cost`` takes it."""
        return Tariff(self.rates, self.bands, self.web_search_per_1k)


CLASSES = (
    "input_per_mtok",
    "output_per_mtok",
    "cache_write_5m_per_mtok",
    "cache_write_1h_per_mtok",
    "cache_read_per_mtok",
)


def _rates(row: Any) -> Rates:
    return Rates(*(int(getattr(row, name)) for name in CLASSES))


def _entry(row: Any, bands: tuple[Band, ...] = ()) -> PriceEntry:
    search = row.web_search_per_1k
    return PriceEntry(
        model=row.model,
        effective_from=row.effective_from,
        rates=_rates(row),
        source=row.source,
        bands=bands,
        web_search_per_1k=None if search is None else int(search),
    )


@translated
class PriceRepository:
    """Reads and adds rows of the ``prices`` table and their bands. Rows are never
    changed or deleted: a new price is a new row from its time on. Never commits."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def _bands(self, rows: list[Any]) -> dict[tuple[str, datetime], tuple[Band, ...]]:
        if not rows:
            return {}
        b = tables.price_bands.c
        keys = [(row.model, row.effective_from) for row in rows]
        found: dict[tuple[str, datetime], list[Band]] = defaultdict(list)
        result = await self.session.execute(
            select(tables.price_bands)
            .where(tuple_(b.model, b.effective_from).in_(keys))
            .order_by(b.model, b.effective_from, b.threshold_tokens)
        )
        for band in result:
            found[(band.model, band.effective_from)].append(
                Band(int(band.threshold_tokens), _rates(band))
            )
        return {key: tuple(value) for key, value in found.items()}

    async def list(self, *, model: str | None = None) -> list[PriceEntry]:
        """Every price row (of ``model`` only, if given), by model and time."""
        p = tables.prices.c
        query = select(tables.prices).order_by(p.model, p.effective_from)
        if model is not None:
            query = query.where(
                p.model == require_text(model, "model", max_length=MAX_MODEL_LENGTH)
            )
        rows = list(await self.session.execute(query))
        bands = await self._bands(rows)
        return [_entry(row, bands.get((row.model, row.effective_from), ())) for row in rows]

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
        if row is None:
            return None
        bands = await self._bands([row])
        return _entry(row, bands.get((row.model, row.effective_from), ()))

    async def add(
        self,
        *,
        model: str,
        rates: Rates,
        effective_from: datetime,
        source: str,
        bands: Any = (),
        web_search_per_1k: int | None = None,
    ) -> PriceEntry:
        """Add ``model``'s price from ``effective_from`` on, with its bands (``pricing.band``)
        and web search price. A row for the same model and time already exists:
        ``InvalidInput`` (prices are never changed in place)."""
        require_text(model, "model", max_length=MAX_MODEL_LENGTH)
        moment = require_aware(effective_from, "effective_from")
        require_text(source, "source", max_length=MAX_SOURCE_LENGTH)
        if not isinstance(rates, Rates):
            raise InvalidInput(f"rates must be pricing.Rates, not {type(rates).__name__}")
        whole = tariff(rates, bands, web_search_per_1k)
        stmt = (
            insert(tables.prices)
            .values(
                model=model,
                effective_from=moment,
                source=source,
                web_search_per_1k=whole.web_search_per_1k,
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
        if whole.bands:
            await self.session.execute(
                insert(tables.price_bands),
                [
                    {
                        "model": model,
                        "effective_from": moment,
                        "threshold_tokens": band.threshold_tokens,
                        **dict(zip(CLASSES, band.rates, strict=True)),
                    }
                    for band in whole.bands
                ],
            )
        return PriceEntry(model, moment, rates, source, whole.bands, whole.web_search_per_1k)
