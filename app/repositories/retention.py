"""RetentionRepository: what finished sessions leave behind, and removing a session whole.

Retention deletes the checkpoints of sessions completed more than N days ago, on the
database's clock (``completed_at`` is stamped by ``now()``), in bounded batches taken
with ``SKIP LOCKED`` so any number of daemons can run it. The session row and its
ledger stay: the money spent is history, the working state is not.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import AgentCheckpoint, AgentCostEvent, AgentSession
from app.domain import SessionNotFound
from app.repositories.errors import translate_errors, translated
from app.validation import require_int, require_text

_NO_SYNC = {"synchronize_session": False}


@dataclass(frozen=True)
class Purged:
    """What one retention batch deleted (or, for a preview, would delete)."""

    session_ids: list[str]
    checkpoints: int


@dataclass(frozen=True)
class Deleted:
    """What removing one session deleted, table by table."""

    session_id: str
    status: str
    checkpoints: int
    cost_events: int


def _expired(older_than_days: int) -> ColumnElement[bool]:
    days = require_int(older_than_days, "older_than_days", minimum=0)
    return and_(
        AgentSession.status == "completed",
        AgentSession.purged_at.is_(None),
        AgentSession.completed_at < func.now() - func.make_interval(0, 0, 0, days),
    )


@translated
class RetentionRepository:
    """Retention of finished sessions and whole-session deletion; flushes, never commits."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def purge_checkpoints(self, *, older_than_days: int, limit: int) -> Purged:
        """Delete the checkpoints of up to ``limit`` sessions completed more than
        ``older_than_days`` days ago, and mark them purged (oldest first)."""
        limit = require_int(limit, "limit", minimum=1)
        picked = (
            select(AgentSession.id)
            .where(_expired(older_than_days))
            .order_by(AgentSession.completed_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        with translate_errors():
            ids = list(await self.session.scalars(picked))
            if not ids:
                return Purged([], 0)
            gone = await self.session.execute(
                delete(AgentCheckpoint)
                .where(AgentCheckpoint.session_id.in_(ids))
                .returning(AgentCheckpoint.id),
                execution_options=_NO_SYNC,
            )
            checkpoints = len(gone.all())
            await self.session.execute(
                update(AgentSession).where(AgentSession.id.in_(ids)).values(purged_at=func.now()),
                execution_options=_NO_SYNC,
            )
        return Purged(ids, checkpoints)

    async def preview_purge(self, *, older_than_days: int) -> Purged:
        """What :meth:`purge_checkpoints` would delete, all batches together; deletes nothing."""
        stmt = (
            select(AgentSession.id, func.count(AgentCheckpoint.id))
            .outerjoin(AgentCheckpoint, AgentCheckpoint.session_id == AgentSession.id)
            .where(_expired(older_than_days))
            .group_by(AgentSession.id)
            .order_by(AgentSession.id)
        )
        with translate_errors():
            rows = (await self.session.execute(stmt)).all()
        return Purged([row[0] for row in rows], sum(int(row[1]) for row in rows))

    async def delete_session(self, session_id: str) -> Deleted:
        """Remove a session, its checkpoints and its ledger rows. The row is locked first,
        so a charge racing the deletion waits and then finds no session."""
        require_text(session_id, "session_id")
        with translate_errors(session_id=session_id):
            status = await self.session.scalar(
                select(AgentSession.status).where(AgentSession.id == session_id).with_for_update()
            )
            if status is None:
                raise SessionNotFound(session_id)
            ledger = await self.session.execute(
                delete(AgentCostEvent)
                .where(AgentCostEvent.session_id == session_id)
                .returning(AgentCostEvent.id),
                execution_options=_NO_SYNC,
            )
            checkpoints = await self.session.execute(
                delete(AgentCheckpoint)
                .where(AgentCheckpoint.session_id == session_id)
                .returning(AgentCheckpoint.id),
                execution_options=_NO_SYNC,
            )
            await self.session.execute(
                delete(AgentSession).where(AgentSession.id == session_id),
                execution_options=_NO_SYNC,
            )
        return Deleted(session_id, status, len(checkpoints.all()), len(ledger.all()))
