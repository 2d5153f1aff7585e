"""Small SQL builders shared by the repositories."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import TableValuedAlias, bindparam, func
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.types import TypeEngine


def given_rows(name: str, **columns: tuple[Sequence[Any], TypeEngine[Any]]) -> TableValuedAlias:
    """A derived table of parallel arrays (``unnest(:a, :b) AS name(a, b)``): many rows
    sent as one bound parameter per column, for one statement over all of them."""
    arrays = [
        bindparam(f"p_{column}", values, type_=ARRAY(sql_type))
        for column, (values, sql_type) in columns.items()
    ]
    return func.unnest(*arrays).table_valued(*columns, name=name).render_derived()
