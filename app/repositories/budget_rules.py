"""The budget rules as SQL expressions: one twin of each ``policy`` rule, overflow-free."""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, ColumnElement, Numeric, and_, cast, func, literal

from app.budget.policy import MAX_MICRODOLLARS, STOP_ABOVE


def _numeric(value: ColumnElement[Any] | int) -> ColumnElement[Any]:
    # numeric has no 64-bit limit: ``budget * 110`` of a 2**63-1 override stays exact.
    if isinstance(value, int):
        return literal(value, Numeric())
    return cast(value, Numeric())


def stops(spent: ColumnElement[Any] | int, budget: ColumnElement[Any] | int) -> ColumnElement[bool]:
    """SQL twin of ``policy.decide(spent, budget) is STOP``: above 110 % of a non-zero
    budget, compared in ``numeric`` so that no figure overflows BIGINT."""
    b = _numeric(budget)
    return and_(b > 0, _numeric(spent) * 100 > b * STOP_ABOVE)


def saturating_add(
    column: ColumnElement[Any], amount: ColumnElement[Any] | int
) -> ColumnElement[Any]:
    """``column + amount`` as BIGINT, held at ``MAX_MICRODOLLARS`` instead of overflowing."""
    total = _numeric(column) + _numeric(amount)
    return cast(func.least(total, literal(MAX_MICRODOLLARS, Numeric())), BigInteger())


def class_cost(
    tokens: ColumnElement[Any] | int, per_mtok: ColumnElement[Any], divisor: ColumnElement[Any]
) -> ColumnElement[Any]:
    """SQL twin of one class of ``pricing.usage_cost``: ``tokens * price // divisor`` in
    ``numeric`` (no BIGINT overflow on the way), floored (``div`` truncates, and every
    figure is non-negative)."""
    return func.div(_numeric(tokens) * _numeric(per_mtok), divisor)


def usage_cost(
    pairs: list[tuple[ColumnElement[Any] | int, ColumnElement[Any]]], divisor: ColumnElement[Any]
) -> ColumnElement[Any]:
    """SQL twin of ``pricing.usage_cost``: each (tokens, price per Mtok) class priced and
    floored on its own, then summed, as BIGINT. ``divisor`` is 1,000,000, or 2,000,000
    for a batch (half of every class). NULL when a price is NULL (no price known)."""
    total: ColumnElement[Any] | None = None
    for tokens, per_mtok in pairs:
        term = class_cost(tokens, per_mtok, divisor)
        total = term if total is None else total + term
    assert total is not None
    return cast(total, BigInteger())


def within_cap(total: ColumnElement[Any], budget: ColumnElement[Any]) -> ColumnElement[bool]:
    """``total`` stays within 110 % of ``budget``: what a reservation may book up to (the
    complement of ``stops``, for a non-zero budget; a zero budget admits only zero)."""
    return _numeric(total) * 100 <= _numeric(budget) * STOP_ABOVE


def exact(value: ColumnElement[Any] | int) -> ColumnElement[Any]:
    """``value`` as ``numeric``, for sums of money that may pass BIGINT on the way."""
    return _numeric(value)
