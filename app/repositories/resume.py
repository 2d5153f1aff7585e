"""ResumeRepository: the resume a woken session is owed, delivered at least once.

A move to ``working`` (a wake, a resume, a top-up) issues a new ``resume_token`` and
owes a delivery (``resume_due_at``). A worker claims due deliveries with a lease, calls
the hook, and acknowledges; a delivery whose lease runs out is due again, for any
worker. Every time here is the database's ``now()``, both where it is stamped and
where it is compared: leases and signs of life are measured on one clock, whichever
host runs the worker.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Final

from sqlalchemy import (
    ColumnElement,
    Executable,
    Interval,
    String,
    and_,
    bindparam,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import AgentSession
from app.db.tables import agent_cost_events, agent_sessions
from app.domain import ResumeInProgress, SessionNotFound, SessionStatus, StaleRunner
from app.repositories.errors import translate_errors, translated
from app.repositories.sessions import owed_resume
from app.repositories.sql import claim_due, fresh_scalars, given_rows
from app.validation import require_int, require_text, stored_id

_WORKING: Final = SessionStatus.WORKING.value
_COMPLETED: Final = SessionStatus.COMPLETED.value
_LEASE = bindparam("p_lease", type_=Interval)


def _runner_holds(session_id: str, token: str) -> list[ColumnElement[bool]]:
    """The session is still the runner's with ``token``: not delivered to another runner
    since, and not completed (an operator's cancel included; a purge follows one)."""
    return [
        agent_sessions.c.id == session_id,
        agent_sessions.c.resume_token == token,
        agent_sessions.c.status != _COMPLETED,
    ]


def _held() -> ColumnElement[bool]:
    """A delivery is held: booked to a worker under a lease that has not run out, on the
    database clock (a parked delivery is held by nobody)."""
    return and_(
        agent_sessions.c.resume_due_at > func.now(),
        agent_sessions.c.resume_parked_at.is_(None),
    )


def _not_held() -> ColumnElement[bool]:
    return or_(
        agent_sessions.c.resume_due_at.is_(None),
        agent_sessions.c.resume_due_at <= func.now(),
        agent_sessions.c.resume_parked_at.is_not(None),
    )


def _due() -> list[ColumnElement[bool]]:
    return [
        agent_sessions.c.status == _WORKING,
        agent_sessions.c.resume_due_at <= func.now(),
        agent_sessions.c.resume_parked_at.is_(None),
    ]


@translated
class ResumeRepository:
    """Resume obligations on ``agent_sessions``. Never commits: the caller owns the
    transaction."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def _sessions(self, stmt: Executable, params: Mapping[str, object]) -> list[AgentSession]:
        with translate_errors():
            result = await fresh_scalars(self.session, stmt, params)
        return list(result)

    async def claim_deliveries(
        self, *, lease: timedelta, max_attempts: int, limit: int = 100
    ) -> list[AgentSession]:
        """Book up to ``limit`` due deliveries to the caller for ``lease``, counting an
        attempt on each (``SKIP LOCKED``: concurrent workers get disjoint sets)."""
        require_int(limit, "limit", minimum=1, maximum=10_000)
        require_int(max_attempts, "max_attempts", minimum=1)
        stmt = claim_due(
            AgentSession,
            due=[*_due(), agent_sessions.c.resume_attempts < max_attempts],
            order_by=[agent_sessions.c.resume_due_at, agent_sessions.c.id],
            limit=limit,
            values={
                "resume_due_at": func.now() + _LEASE,
                "resume_attempts": agent_sessions.c.resume_attempts + 1,
                "last_seen_at": func.now(),
            },
        ).returning(AgentSession)
        return await self._sessions(stmt, {"p_lease": lease})

    async def park_exhausted(self, *, max_attempts: int, limit: int = 100) -> list[AgentSession]:
        """Park due deliveries that used up their attempts: nobody will try them again
        until an operator redelivers them."""
        exhausted = (
            select(agent_sessions.c.id)
            .where(*_due(), agent_sessions.c.resume_attempts >= max_attempts)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        stmt = (
            update(AgentSession)
            .where(agent_sessions.c.id.in_(exhausted.scalar_subquery()))
            .values(resume_parked_at=func.now(), resume_due_at=None)
            .returning(AgentSession)
        )
        return await self._sessions(stmt, {})

    async def redeliver_orphans(
        self, *, runner_timeout: timedelta, limit: int = 100
    ) -> list[AgentSession]:
        """Working sessions that owe nothing and showed no sign of life (a delivery, an
        acknowledgement, a heartbeat, a checkpoint or a charge) for ``runner_timeout``:
        a new token fences off the runner that vanished, and a resume is owed at once."""
        cutoff = func.now() - bindparam("p_timeout", runner_timeout, type_=Interval)
        charged_since = exists().where(
            agent_cost_events.c.session_id == agent_sessions.c.id,
            agent_cost_events.c.created_at >= cutoff,
        )
        silent = (
            select(agent_sessions.c.id)
            .where(
                agent_sessions.c.status == _WORKING,
                agent_sessions.c.resume_due_at.is_(None),
                agent_sessions.c.resume_parked_at.is_(None),
                agent_sessions.c.last_seen_at < cutoff,
                or_(
                    agent_sessions.c.last_checkpoint_at.is_(None),
                    agent_sessions.c.last_checkpoint_at < cutoff,
                ),
                ~charged_since,
            )
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        stmt = (
            update(AgentSession)
            .where(agent_sessions.c.id.in_(silent.scalar_subquery()))
            .values(**owed_resume())
            .returning(AgentSession)
        )
        return await self._sessions(stmt, {})

    async def _by_tokens(self, tokens: Mapping[str, str], values: dict[str, object]) -> int:
        ids = [stored_id(sid, "session_id") for sid in tokens]
        if not ids:
            return 0
        tokens_given = [require_text(tokens[sid], "resume_token") for sid in ids]
        given = given_rows("given", id=(ids, String()), token=(tokens_given, String()))
        stmt = (
            update(AgentSession)
            .where(
                agent_sessions.c.id == given.c.id,
                agent_sessions.c.resume_token == given.c.token,
                agent_sessions.c.resume_due_at.is_not(None),
            )
            .values(**values)
            .returning(agent_sessions.c.id)
        )
        with translate_errors():
            moved = await self.session.scalars(
                stmt, execution_options={"synchronize_session": False}
            )
        return len(list(moved))

    async def acknowledge(self, tokens: Mapping[str, str]) -> int:
        """The hooks returned: these deliveries (session id -> token) are done. A token
        that is no longer the session's acknowledges nothing. Returns how many were."""
        return await self._by_tokens(
            tokens, {"resume_due_at": None, "resume_attempts": 0, "last_seen_at": func.now()}
        )

    async def renew(self, tokens: Mapping[str, str], *, lease: timedelta) -> int:
        """Hooks still running keep their deliveries for another ``lease``."""
        return await self._by_tokens(
            tokens,
            {
                "resume_due_at": func.now() + bindparam("p_renew", lease, type_=Interval),
                "last_seen_at": func.now(),
            },
        )

    async def retry_later(self, session_id: str, token: str, *, delay: timedelta) -> bool:
        """The hook raised: this delivery is due again after ``delay``."""
        moved = await self._by_tokens(
            {session_id: token},
            {"resume_due_at": func.now() + bindparam("p_delay", delay, type_=Interval)},
        )
        return moved == 1

    async def heartbeat(self, session_id: str, token: str) -> None:
        """A sign of life from the runner holding ``token``, which also locks the session
        row until the transaction ends (a runner's write takes it first). ``StaleRunner``,
        with nothing changed, when the session has moved on: delivered to another runner,
        completed (an operator's cancel) or purged; ``SessionNotFound`` when it is gone."""
        require_text(session_id, "session_id")
        require_text(token, "resume_token")
        stmt = (
            update(AgentSession)
            .where(*_runner_holds(session_id, token))
            .values(last_seen_at=func.now())
            .returning(agent_sessions.c.id)
        )
        with translate_errors(session_id=session_id):
            if await self.session.scalar(stmt) is not None:
                return
            if (
                await self.session.scalar(
                    select(agent_sessions.c.id).where(agent_sessions.c.id == session_id)
                )
                is None
            ):
                raise SessionNotFound(session_id)
        raise StaleRunner(session_id, token)

    async def retire_token(self, session_id: str) -> AgentSession | None:
        """The session is finished: no runner holds it any more (completion). Returns
        the row, None if there is none."""
        require_text(session_id, "session_id")
        stmt = (
            update(AgentSession)
            .where(agent_sessions.c.id == session_id)
            .values(resume_token=None)
            .returning(AgentSession)
        )
        found = await self._sessions(stmt, {})
        return found[0] if found else None

    async def redeliver(self, session_id: str, *, force: bool = False) -> AgentSession | None:
        """Owe a working session's resume again at once, attempts reset and unparked (the
        operator's ``sessions redeliver``). None when the session is not working (or
        does not exist).

        While a delivery is held under an unexpired lease (a hook is running it) this
        raises ``ResumeInProgress`` and changes nothing: the token stays the same on
        every delivery of one wake, so a second delivery would be a second runner that
        fencing cannot tell apart. ``force`` redelivers anyway with a new token, which
        fences the running runner. "Held" is decided in the guarded UPDATE itself, on the
        database clock that stamped the lease; the row is locked first, so the reason
        for a refusal is read from the row as the UPDATE saw it.
        """
        require_text(session_id, "session_id")
        working = [agent_sessions.c.id == session_id, agent_sessions.c.status == _WORKING]
        with translate_errors(session_id=session_id):
            # Only a working row is locked: a sleeper is never held up for a wake.
            seen = (
                await self.session.execute(
                    select(agent_sessions.c.resume_due_at, func.coalesce(_held(), False))
                    .where(*working)
                    .with_for_update()
                )
            ).one_or_none()
        if seen is None:
            return None
        values: dict[str, object] = (
            owed_resume()
            if force
            else {"resume_due_at": func.now(), "resume_attempts": 0, "resume_parked_at": None}
        )
        stmt = (
            update(AgentSession)
            .where(*working, *([] if force else [_not_held()]))
            .values(**values)
            .returning(AgentSession)
        )
        found = await self._sessions(stmt, {})
        if found:
            return found[0]
        held_until, held = seen
        if held:
            raise ResumeInProgress(session_id, until=held_until)
        return None  # pragma: no cover - the row is locked: the UPDATE saw what was read

    async def stuck(self, *, overdue: timedelta, limit: int = 100) -> list[AgentSession]:
        """Parked sessions, and deliveries due for longer than ``overdue``: what an
        operator should look at, oldest first."""
        require_int(limit, "limit", minimum=1, maximum=10_000)
        stmt = (
            select(AgentSession)
            .where(
                agent_sessions.c.status == _WORKING,
                or_(
                    agent_sessions.c.resume_parked_at.is_not(None),
                    and_(
                        agent_sessions.c.resume_due_at.is_not(None),
                        agent_sessions.c.resume_due_at
                        < func.now() - bindparam("p_overdue", overdue, type_=Interval),
                    ),
                ),
            )
            .order_by(
                func.coalesce(agent_sessions.c.resume_parked_at, agent_sessions.c.resume_due_at),
                agent_sessions.c.id,
            )
            .limit(limit)
        )
        return await self._sessions(stmt, {})

    async def seconds_until_next_delivery(self) -> float | None:
        """Seconds until the earliest owed delivery falls due (negative: overdue), on
        the database clock; None when nothing is owed."""
        seconds = await self.session.scalar(
            select(
                func.extract("epoch", func.min(agent_sessions.c.resume_due_at) - func.now())
            ).where(
                agent_sessions.c.status == _WORKING,
                agent_sessions.c.resume_due_at.is_not(None),
                agent_sessions.c.resume_parked_at.is_(None),
            )
        )
        return None if seconds is None else float(seconds)

    async def count_parked(self) -> int:
        """How many sessions are parked (a gauge)."""
        return int(
            await self.session.scalar(
                select(func.count()).where(
                    agent_sessions.c.status == _WORKING,
                    agent_sessions.c.resume_parked_at.is_not(None),
                )
            )
            or 0
        )
