"""CheckpointRepository: incremental (keyframe + delta) storage of resumable agent state.

An agent saves a checkpoint after every iteration. Storing the whole history in every
row makes storage and write time grow with the square of the session's length, so a
row stores only the messages its parent did not have (a *delta*), with a full copy (a
*keyframe*) when the history was rewritten and every ``keyframe_every`` saves. Loads
fetch a keyframe and its deltas in one recursive query and hand back the full history:
callers never see a delta (DESIGN.md §4).
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Row, Text, and_, bindparam, cast, delete, func, literal, select, update
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import AgentCheckpoint, AgentSession
from app.domain import CheckpointNotFound, SessionNotFound, SessionStatus
from app.repositories.checkpoint_codec import (
    check_retry_counts,
    encode_history,
    history_digests,
    json_array,
    rebuild,
)
from app.repositories.errors import translate_errors
from app.validation import INT_MAX, parse_enum, require_int, require_money, require_text

MetaRow = Row[*tuple[Any, ...]]

_cp = AgentCheckpoint.__table__.c
_ses = AgentSession.__table__.c

# Everything a load needs except the history itself.
_META = (
    _cp.id,
    _cp.session_id,
    _cp.job_id,
    _cp.sandbox_id,
    _cp.current_phase,
    _cp.retry_counts,
    _cp.session_cost_microdollars,
    _cp.daily_budget_microdollars,
    _cp.iteration_number,
    _cp.agent_state,
    _cp.message_count,
    _cp.base_message_count,
    _cp.parent_iteration,
    _cp.delta_depth,
    _cp.history_digest,
    _cp.created_at,
    _cp.updated_at,
)


@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    """A restorable checkpoint's metadata, without the message bodies."""

    session_id: str
    iteration_number: int
    agent_state: str
    current_phase: str | None
    sandbox_id: str | None
    message_count: int
    keyframe: bool
    session_cost_microdollars: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class _Payload:
    """A validated, encoded checkpoint: nothing in it can make the INSERT fail."""

    session_id: str
    job_id: str
    iteration_number: int
    encoded: list[bytes]
    sandbox_id: str | None
    current_phase: str | None
    retry_counts: dict[str, int]
    session_cost_microdollars: int
    daily_budget_microdollars: int
    agent_state: str

    @classmethod
    def of(cls, cp: AgentCheckpoint) -> _Payload:
        optional = {
            name: None if getattr(cp, name) is None else require_text(getattr(cp, name), name)
            for name in ("sandbox_id", "current_phase")
        }
        return cls(
            session_id=require_text(cp.session_id, "session_id"),
            job_id=require_text(cp.job_id, "job_id"),
            iteration_number=require_int(cp.iteration_number, "iteration_number", maximum=INT_MAX),
            encoded=encode_history(cp.message_history),
            retry_counts=check_retry_counts(cp.retry_counts),
            session_cost_microdollars=require_money(
                cp.session_cost_microdollars, "session_cost_microdollars"
            ),
            daily_budget_microdollars=require_money(
                cp.daily_budget_microdollars, "daily_budget_microdollars"
            ),
            agent_state=parse_enum(SessionStatus, cp.agent_state, "agent_state").value,
            **optional,
        )

    def same_content_as(self, row: MetaRow, digest: bytes) -> bool:
        return (
            row.history_digest == digest
            and row.message_count == len(self.encoded)
            and (row.job_id, row.sandbox_id, row.current_phase, row.agent_state)
            == (self.job_id, self.sandbox_id, self.current_phase, self.agent_state)
            and row.retry_counts == self.retry_counts
            and row.session_cost_microdollars == self.session_cost_microdollars
            and row.daily_budget_microdollars == self.daily_budget_microdollars
        )


def _checkpoint(row: MetaRow, history: list[Any]) -> AgentCheckpoint:
    """A transient (never added to a session) checkpoint holding the full history."""
    cp = AgentCheckpoint(
        session_id=row.session_id,
        job_id=row.job_id,
        message_history=history,
        sandbox_id=row.sandbox_id,
        current_phase=row.current_phase,
        retry_counts=dict(row.retry_counts),
        session_cost_microdollars=row.session_cost_microdollars,
        daily_budget_microdollars=row.daily_budget_microdollars,
        iteration_number=row.iteration_number,
        agent_state=row.agent_state,
        message_count=row.message_count,
        base_message_count=row.base_message_count,
        parent_iteration=row.parent_iteration,
        delta_depth=row.delta_depth,
        history_digest=row.history_digest,
    )
    cp.id, cp.created_at, cp.updated_at = row.id, row.created_at, row.updated_at
    return cp


class CheckpointRepository:
    """Checkpoints of agent sessions. Never commits: the caller owns the transaction."""

    def __init__(
        self, session: AsyncSession, *, keep_last: int = 5, keyframe_every: int = 50
    ) -> None:
        self.session = session
        self.keep_last = require_int(keep_last, "keep_last", minimum=1, maximum=INT_MAX)
        self.keyframe_every = require_int(
            keyframe_every, "keyframe_every", minimum=1, maximum=INT_MAX
        )

    # ------------------------------------------------------------------- save

    async def save(self, checkpoint: AgentCheckpoint) -> AgentCheckpoint:
        """Store ``checkpoint`` (its full history) and return the stored checkpoint.

        The same ``(session_id, iteration_number)`` saved twice leaves one row with
        the latest content; identical content is a no-op. The session's
        ``last_checkpoint_at`` moves in the same transaction, and retention runs.
        Everything is validated before any SQL: a bad payload writes nothing.
        """
        p = _Payload.of(checkpoint)
        with translate_errors(session_id=p.session_id):
            # Locks the session row: saves of one session are serialised, so no
            # writer builds a delta on a parent another writer is replacing.
            touched = await self.session.scalar(
                update(AgentSession)
                .where(_ses.id == p.session_id)
                .values(last_checkpoint_at=func.now())
                .returning(_ses.id),
                execution_options={"synchronize_session": False},
            )
            if touched is None:
                raise SessionNotFound(p.session_id)

            existing, parent = await self._neighbours(p.session_id, p.iteration_number)
            at = parent.message_count if parent is not None else None
            digest, prefix = history_digests(p.encoded, at)
            if existing is not None:
                if p.same_content_as(existing, digest):
                    return _checkpoint(existing, self._decode(p.encoded))
                await self._detach_dependants(p.session_id, p.iteration_number)

            # An empty parent has nothing to share: such a "delta" is a keyframe.
            extends_parent = (
                parent is not None
                and parent.message_count > 0
                and parent.history_digest is not None
                and prefix == parent.history_digest
                and parent.delta_depth + 1 < self.keyframe_every
            )
            base = parent.message_count if extends_parent and parent is not None else 0
            row = await self._upsert(
                p,
                digest=digest,
                base=base,
                parent_iteration=parent.iteration_number if extends_parent and parent else None,
                delta_depth=parent.delta_depth + 1 if extends_parent and parent else 0,
            )
            await self.prune(p.session_id, keep_last=self.keep_last)
        return _checkpoint(row, self._decode(p.encoded))

    @staticmethod
    def _decode(encoded: Sequence[bytes]) -> list[Any]:
        return [orjson.loads(m) for m in encoded]

    async def _neighbours(
        self, session_id: str, iteration: int
    ) -> tuple[MetaRow | None, MetaRow | None]:
        """The row at ``iteration`` (if any) and the parent: the highest row below it."""
        rows = (
            await self.session.execute(
                select(*_META)
                .where(_cp.session_id == session_id, _cp.iteration_number <= iteration)
                .order_by(_cp.iteration_number.desc())
                .limit(2)
            )
        ).all()
        existing = rows[0] if rows and rows[0].iteration_number == iteration else None
        below = [r for r in rows if r.iteration_number < iteration]
        return existing, (below[0] if below else None)

    async def _detach_dependants(self, session_id: str, iteration: int) -> None:
        """Rewrite the deltas built on ``iteration`` as keyframes before it changes."""
        dependants = await self.session.scalars(
            select(_cp.iteration_number).where(
                _cp.session_id == session_id,
                _cp.parent_iteration == iteration,
                _cp.base_message_count > 0,
            )
        )
        for child in list(dependants):
            found = await self._load_chain(session_id, child, restorable_only=False)
            if found is None:  # pragma: no cover - the row was selected just above
                continue
            history = found[1]
            await self.session.execute(
                update(AgentCheckpoint)
                .where(_cp.session_id == session_id, _cp.iteration_number == child)
                .values(
                    message_history=history,
                    base_message_count=0,
                    parent_iteration=None,
                    delta_depth=0,
                ),
                execution_options={"synchronize_session": False},
            )

    async def _upsert(
        self,
        p: _Payload,
        *,
        digest: bytes,
        base: int,
        parent_iteration: int | None,
        delta_depth: int,
    ) -> MetaRow:
        # The messages go over the wire as the JSON text encoded during validation.
        history = cast(bindparam("history", json_array(p.encoded[base:]), type_=Text), JSONB)
        values: dict[str, Any] = {
            "session_id": p.session_id,
            "job_id": p.job_id,
            "iteration_number": p.iteration_number,
            "message_history": history,
            "sandbox_id": p.sandbox_id,
            "current_phase": p.current_phase,
            "retry_counts": p.retry_counts,
            "session_cost_microdollars": p.session_cost_microdollars,
            "daily_budget_microdollars": p.daily_budget_microdollars,
            "agent_state": p.agent_state,
            "message_count": len(p.encoded),
            "base_message_count": base,
            "parent_iteration": parent_iteration,
            "delta_depth": delta_depth,
            "history_digest": digest,
        }
        insert_stmt = insert(AgentCheckpoint).values(**values)
        excluded = insert_stmt.excluded
        upsert = insert_stmt.on_conflict_do_update(
            index_elements=[_cp.session_id, _cp.iteration_number],
            set_={
                **{k: excluded[k] for k in values if k not in ("session_id", "iteration_number")},
                "updated_at": func.now(),
            },
        ).returning(*_META)
        return (await self.session.execute(upsert)).one()

    # ------------------------------------------------------------------- load

    def _restorable_floor(self, session_id: str) -> Any:
        """Lowest restorable iteration: the ``keep_last``-th newest (or -1)."""
        nth = (
            select(_cp.iteration_number)
            .where(_cp.session_id == session_id)
            .order_by(_cp.iteration_number.desc())
            .offset(self.keep_last - 1)
            .limit(1)
            .scalar_subquery()
        )
        return func.coalesce(nth, -1)

    async def _load_chain(
        self, session_id: str, iteration: int | None, *, restorable_only: bool = True
    ) -> tuple[MetaRow, list[Any]] | None:
        """The target row and its full history, in one recursive SELECT; None if absent."""
        if iteration is None:
            target = _cp.iteration_number == (
                select(func.max(_cp.iteration_number))
                .where(_cp.session_id == session_id)
                .scalar_subquery()
            )
        else:
            target = _cp.iteration_number == iteration
            if restorable_only:
                target = and_(target, _cp.iteration_number >= self._restorable_floor(session_id))

        anchor = select(*_META, _cp.message_history, literal(0).label("depth")).where(
            _cp.session_id == session_id, target
        )
        chain = anchor.cte("chain", recursive=True)
        parent = AgentCheckpoint.__table__.alias("parent")
        chain = chain.union_all(
            select(
                *(parent.c[c.name] for c in _META),
                parent.c.message_history,
                (chain.c.depth + 1).label("depth"),
            ).where(
                parent.c.session_id == chain.c.session_id,
                parent.c.iteration_number == chain.c.parent_iteration,
                chain.c.base_message_count > 0,
            )
        )
        rows = (await self.session.execute(select(chain).order_by(chain.c.depth.desc()))).all()
        if not rows:
            return None
        if rows[0].base_message_count != 0:
            raise CheckpointNotFound(session_id, rows[-1].iteration_number)
        history = rebuild(
            rows[0].message_history,
            ((r.base_message_count, r.message_history) for r in rows[1:]),
        )
        return rows[-1], history

    async def load_latest(self, session_id: str) -> AgentCheckpoint | None:
        """The session's newest checkpoint with its full history, or None (one SELECT)."""
        require_text(session_id, "session_id")
        found = await self._load_chain(session_id, None)
        return None if found is None else _checkpoint(*found)

    async def load(self, session_id: str, iteration_number: int) -> AgentCheckpoint:
        """A restorable checkpoint with its full history (one SELECT); ``CheckpointNotFound``."""
        require_text(session_id, "session_id")
        require_int(iteration_number, "iteration_number", maximum=INT_MAX)
        found = await self._load_chain(session_id, iteration_number)
        if found is None:
            raise CheckpointNotFound(session_id, iteration_number)
        return _checkpoint(*found)

    async def list(self, session_id: str, *, limit: int = 50) -> builtins.list[CheckpointInfo]:
        """The restorable checkpoints, newest first, without message bodies."""
        require_text(session_id, "session_id")
        require_int(limit, "limit", minimum=1, maximum=10_000)
        rows = await self.session.execute(
            select(*_META)
            .where(
                _cp.session_id == session_id,
                _cp.iteration_number >= self._restorable_floor(session_id),
            )
            .order_by(_cp.iteration_number.desc())
            .limit(limit)
        )
        return [
            CheckpointInfo(
                session_id=r.session_id,
                iteration_number=r.iteration_number,
                agent_state=r.agent_state,
                current_phase=r.current_phase,
                sandbox_id=r.sandbox_id,
                message_count=r.message_count,
                keyframe=r.base_message_count == 0,
                session_cost_microdollars=r.session_cost_microdollars,
                created_at=r.created_at,
                updated_at=r.updated_at,
            )
            for r in rows
        ]

    # -------------------------------------------------------------- retention

    async def prune(self, session_id: str, *, keep_last: int) -> int:
        """Keep the newest ``keep_last`` restorable; delete rows older than the keyframe
        they need. Never deletes the latest checkpoint. Returns the rows deleted."""
        require_text(session_id, "session_id")
        require_int(keep_last, "keep_last", minimum=1, maximum=INT_MAX)
        newest = (
            select(_cp.iteration_number)
            .where(_cp.session_id == session_id)
            .order_by(_cp.iteration_number.desc())
            .limit(keep_last)
        )
        needed = (
            select(_cp.iteration_number, _cp.parent_iteration, _cp.base_message_count)
            .where(_cp.session_id == session_id, _cp.iteration_number.in_(newest))
            .cte("needed", recursive=True)
        )
        parent = AgentCheckpoint.__table__.alias("parent")
        needed = needed.union(
            select(
                parent.c.iteration_number, parent.c.parent_iteration, parent.c.base_message_count
            ).where(
                parent.c.session_id == session_id,
                parent.c.iteration_number == needed.c.parent_iteration,
                needed.c.base_message_count > 0,
            )
        )
        oldest_needed = select(func.min(needed.c.iteration_number)).scalar_subquery()
        result = await self.session.execute(
            delete(AgentCheckpoint).where(
                _cp.session_id == session_id, _cp.iteration_number < oldest_needed
            ),
            execution_options={"synchronize_session": False},
        )
        return int(result.rowcount)  # type: ignore[attr-defined]
