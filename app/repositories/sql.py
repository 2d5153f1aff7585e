"""Small SQL builders shared by the repositories."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from sqlalchemy import (
    ColumnElement,
    Executable,
    ScalarResult,
    TableValuedAlias,
    Update,
    bindparam,
    func,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.types import TypeEngine

from app.db.base import Base

#: Rows a statement returns overwrite the objects the session already holds for them.
FRESH: Final = {"populate_existing": True}


async def fresh_scalars(
    session: AsyncSession, stmt: Executable, params: Mapping[str, Any] | None = None
) -> ScalarResult[Any]:
    """Run an ORM statement whose returned objects replace any the session loaded
    earlier in the transaction: a guarded ``UPDATE ... RETURNING`` or a locking read
    hands back each row as the database has it now, never a stale copy."""
    return await session.scalars(stmt, params, execution_options=FRESH)


async def core_connection(session: AsyncSession) -> AsyncConnection:
    """The session's connection, in its transaction, for Core statements over tables:
    no ORM bookkeeping per execution. Pending ORM objects are flushed first, as
    ``Session.execute``'s autoflush would, and only then: an empty flush is still a
    trip through the greenlet bridge, which the hot paths cannot spare."""
    if session.new or session.dirty or session.deleted:
        await session.flush()
    return await session.connection()


def given_rows(name: str, **columns: tuple[Sequence[Any], TypeEngine[Any]]) -> TableValuedAlias:
    """A derived table of parallel arrays (``unnest(:a, :b) AS name(a, b)``): many rows
    sent as one bound parameter per column, for one statement over all of them."""
    arrays = [
        bindparam(f"p_{column}", values, type_=ARRAY(sql_type))
        for column, (values, sql_type) in columns.items()
    ]
    return func.unnest(*arrays).table_valued(*columns, name=name).render_derived()


def claim_due(
    entity: type[Base],
    *,
    due: Sequence[ColumnElement[bool]],
    order_by: Sequence[ColumnElement[Any]],
    limit: int,
    values: Mapping[str, Any],
) -> Update:
    """``UPDATE`` of up to ``limit`` rows of ``entity`` that are ``due``, in ``order_by``
    order, picked with ``FOR UPDATE SKIP LOCKED``: claimers running at once get disjoint
    sets, and none waits for another. Add the ``RETURNING`` the caller needs."""
    id_column = entity.__table__.c.id
    picked = (
        select(id_column)
        .where(*due)
        .order_by(*order_by)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return update(entity).where(id_column.in_(picked.scalar_subquery())).values(**values)
