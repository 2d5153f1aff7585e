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
