"""SessionRepository: create sessions and move them through the state machine atomically."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Final

import orjson
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    DateTime,
    Interval,
    Select,
    String,
    and_,
    bindparam,
    exists,
    func,
    select,
    true,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.clock import utc_now
from app.db.models import AgentSession
from app.db.tables import agent_checkpoints, agent_sessions, budget_days
from app.domain import (
    ALLOWED_SOURCES,
    InvalidInput,
    InvalidTransition,
    SessionAlreadyExists,
    SessionNotFound,
    SessionStatus,
    Tier,
)
from app.incarnation import incarnation_of
from app.repositories.budget_rules import stops
from app.repositories.errors import translate_errors, translated
from app.repositories.sql import FRESH, fresh_scalars, given_rows
from app.validation import (
    MAX_MODEL_LENGTH,
    parse_enum,
    parse_statuses,
    require_aware,
    require_id,
    require_int,
    require_money,
    require_text,
    stored_id,
)

#: PostgreSQL channel on which ``request_wake`` announces sessions that are due now.
#: The payload is a JSON array of session ids.
WAKE_CHANNEL: Final = "agent_wake"
# NOTIFY payloads must stay under 8000 bytes; ids are at most 255 characters.
_NOTIFY_BATCH: Final = 25


#: A fresh fencing token, made by the server inside the statement that needs it.
NEW_RESUME_TOKEN: Final = func.replace(func.cast(func.gen_random_uuid(), String), "-", "")


@dataclass(frozen=True)
class CheckpointMetaRow:
    """The latest checkpoint's metadata, as the Redis snapshot shows it."""

    iteration_number: int
    current_phase: str | None
    sandbox_id: str | None


@dataclass(frozen=True)
class SnapshotRow:
    """A session and its latest checkpoint's metadata: what its Redis key holds."""

    session: AgentSession
    meta: CheckpointMetaRow | None

    @property
    def done(self) -> bool:
        """A completed session has no key."""
        return self.session.status == SessionStatus.COMPLETED.value


@dataclass(frozen=True)
class SessionHead:
    """What tells a session's current Redis snapshot from a stale one."""

    incarnation: int
    version: int
    status: str

    @property
    def done(self) -> bool:
        """A completed session has no key."""
        return self.status == SessionStatus.COMPLETED.value


def owed_resume(*, due: Any = None, attempts: int = 0) -> dict[str, Any]:
    """What a move to ``working`` writes (DESIGN.md §8): a new token, and a resume owed
    from ``due`` (default: at once) that no delivery has attempted yet."""
    return {
        "resume_token": NEW_RESUME_TOKEN,
        "resume_due_at": func.now() if due is None else due,
        "resume_attempts": attempts,
        "resume_parked_at": None,
        "last_seen_at": func.now(),
    }


def _build_transition(target: SessionStatus) -> Any:
    """The guarded UPDATE into ``target``, built once (DESIGN.md §5):
    ``... SET status = :to, version = version + 1 WHERE id = :id AND status = ANY(:expected)``.
    Entering ``sleeping`` sets ``wake_at``, leaving it clears it; ``completed`` stamps
    ``completed_at``."""
    values: dict[str, Any] = {
        "status": target.value,
        "version": agent_sessions.c.version + 1,
        "wake_at": (
            bindparam("p_wake_at", type_=DateTime(timezone=True))
            if target is SessionStatus.SLEEPING
            else None
        ),
    }
    if target is SessionStatus.COMPLETED:
        values["completed_at"] = func.now()
    if target is SessionStatus.WORKING:
        values.update(owed_resume())
    return (
        update(AgentSession)
        .where(
            agent_sessions.c.id == bindparam("p_id", type_=String),
            agent_sessions.c.status == func.any(bindparam("p_sources", type_=ARRAY(String))),
        )
        .values(**values)
        .returning(AgentSession)
    )


_TRANSITIONS: Final = {target: _build_transition(target) for target in SessionStatus}


@translated
class SessionRepository:
    """Agent sessions. Never commits: the caller owns the transaction."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def create(
        self,
        *,
        id: str,
        job_id: str,
        clerk_user_id: str,
        tier: Tier | str,
        model_used: str,
        daily_budget_microdollars: int = 0,
    ) -> AgentSession:
        """Insert a ``working`` session; ``SessionAlreadyExists`` if the id is taken."""
        values = {
            "id": require_id(id, "id"),
            "job_id": require_id(job_id, "job_id"),
            "clerk_user_id": require_id(clerk_user_id, "clerk_user_id"),
            "tier": parse_enum(Tier, tier, "tier").value,
            "model_used": require_text(model_used, "model_used", max_length=MAX_MODEL_LENGTH),
            "daily_budget_microdollars": require_money(
                daily_budget_microdollars, "daily_budget_microdollars"
            ),
        }
        # ON CONFLICT keeps the caller's transaction usable, unlike a caught IntegrityError.
        # The caller is the runner: it gets a token, and no resume is owed.
        stmt = (
            insert(AgentSession)
            # started_at is the row's incarnation (app.incarnation): stamped when the
            # row is inserted, after any erased row of the same id was, so two lives
            # of one id never share it (now() is when the transaction began).
            .values(**values, resume_token=NEW_RESUME_TOKEN, started_at=func.clock_timestamp())
            .on_conflict_do_nothing(index_elements=[agent_sessions.c.id])
            .returning(AgentSession)
        )
        with translate_errors(session_id=id):
            created = await self.session.scalar(stmt)
        if created is None:
            raise SessionAlreadyExists(id)
        return created

    async def get(self, session_id: str) -> AgentSession:
        """The session, freshly read; ``SessionNotFound`` if there is none."""
        found = await self.get_or_none(session_id)
        if found is None:
            raise SessionNotFound(session_id)
        return found

    async def get_or_none(self, session_id: str) -> AgentSession | None:
        """The session, freshly read, or None."""
        require_id(session_id, "session_id")
        stmt = select(AgentSession).where(agent_sessions.c.id == session_id)
        result = await fresh_scalars(self.session, stmt)
        return result.one_or_none()

    async def head(self, session_id: str) -> SessionHead | None:
        """The session's incarnation, version and status (one primary-key read), or None:
        enough to tell whether a Redis snapshot is the current one."""
        require_id(session_id, "session_id")
        with translate_errors(session_id=session_id):
            found = (
                await self.session.execute(
                    select(
                        agent_sessions.c.started_at,
                        agent_sessions.c.version,
                        agent_sessions.c.status,
                    ).where(agent_sessions.c.id == session_id)
                )
            ).one_or_none()
        if found is None:
            return None
        return SessionHead(incarnation_of(found.started_at), found.version, found.status)

    async def lock(self, session_id: str) -> bool:
        """Lock the session's row until the transaction ends (False: no such session).
        Taken first by a use case that writes the session row after other rows, so that
        it locks in the order the wake path does: the session, then the budget day."""
        require_id(session_id, "session_id")
        found = await self.session.scalar(
            select(agent_sessions.c.id).where(agent_sessions.c.id == session_id).with_for_update()
        )
        return found is not None

    async def transition(
        self,
        session_id: str,
        to: SessionStatus | str,
        *,
        expected: SessionStatus | str | Iterable[SessionStatus | str],
        wake_at: datetime | None = None,
    ) -> AgentSession:
        """Move the session to ``to`` in one guarded UPDATE, if it is in one of ``expected``.

        Raises ``InvalidTransition`` (with the current status) when another writer moved
        first or the state machine has no such edge, and ``SessionNotFound``.
        """
        require_id(session_id, "session_id")
        target = parse_enum(SessionStatus, to, "to")
        sources = parse_statuses(expected) & ALLOWED_SOURCES[target]
        params: dict[str, Any] = {
            "p_id": session_id,
            "p_sources": sorted(status.value for status in sources),
        }
        if target is SessionStatus.SLEEPING:
            if wake_at is None:
                raise InvalidInput("entering sleeping requires wake_at", field="wake_at")
            params["p_wake_at"] = require_aware(wake_at, "wake_at")
        elif wake_at is not None:
            raise InvalidInput(f"wake_at is only set when entering sleeping, not {target}")
        with translate_errors(session_id=session_id):
            moved: AgentSession | None = (
                await fresh_scalars(self.session, _TRANSITIONS[target], params)
            ).one_or_none()
        if moved is not None:
            return moved
        # Failure path only: say why, from what the row holds now.
        current = await self.session.scalar(
            select(agent_sessions.c.status).where(agent_sessions.c.id == session_id)
        )
        if current is None:
            raise SessionNotFound(session_id)
        raise InvalidTransition(
            session_id,
            current=SessionStatus(current),
            target=target,
            expected=parse_statuses(expected),
        )

    async def add_cost(self, session_id: str, microdollars: int) -> int:
        """Add to the session's cumulative cost atomically; returns the new total."""
        require_id(session_id, "session_id")
        require_money(microdollars, "microdollars")
        stmt = (
            update(AgentSession)
            .where(agent_sessions.c.id == session_id)
            .values(
                cumulative_cost_microdollars=agent_sessions.c.cumulative_cost_microdollars
                + microdollars
            )
            .returning(agent_sessions.c.cumulative_cost_microdollars)
        )
        with translate_errors(session_id=session_id):
            total = await self.session.scalar(
                stmt, execution_options={"synchronize_session": False}
            )
        if total is None:
            raise SessionNotFound(session_id)
        return int(total)

    async def wake_many(
        self, budgets: Mapping[str, int], *, lease: timedelta | None = None
    ) -> list[AgentSession]:
        """``sleeping -> working`` for many sessions in one guarded UPDATE, recording each
        one's budget for the new day and a new resume token. Returns the rows that moved
        (callers hold their locks from ``claim_due_for_wake``, so that is all of them).

        Each woken session is owed a resume. With ``lease``, the caller is delivering it
        at once: the first delivery is booked to it until the lease runs out.
        """
        ids = [stored_id(sid, "session_id") for sid in budgets]
        amounts = [require_money(budgets[sid], "daily_budget_microdollars") for sid in ids]
        if not ids:
            return []
        given = given_rows("given", id=(ids, String()), budget=(amounts, BigInteger()))
        stmt = (
            update(AgentSession)
            .where(
                agent_sessions.c.id == given.c.id,
                agent_sessions.c.status == SessionStatus.SLEEPING.value,
            )
            .values(
                status=SessionStatus.WORKING.value,
                wake_at=None,
                version=agent_sessions.c.version + 1,
                daily_budget_microdollars=given.c.budget,
                wake_failures=0,
                **(
                    owed_resume()
                    if lease is None
                    else owed_resume(due=func.now() + lease, attempts=1)
                ),
            )
            .returning(AgentSession)
        )
        result = await fresh_scalars(self.session, stmt)
        return list(result)

    async def set_working_budget(
        self, session_id: str, daily_budget_microdollars: int
    ) -> AgentSession | None:
        """Record a new day's budget on a ``working`` session (one guarded UPDATE, no
        transition); None if the session is not working any more."""
        require_id(session_id, "session_id")
        budget = require_money(daily_budget_microdollars, "daily_budget_microdollars")
        stmt = (
            update(AgentSession)
            .where(
                agent_sessions.c.id == session_id,
                agent_sessions.c.status == SessionStatus.WORKING.value,
            )
            .values(daily_budget_microdollars=budget)
            .returning(AgentSession)
        )
        with translate_errors(session_id=session_id):
            result = await fresh_scalars(self.session, stmt)
        return result.one_or_none()

    async def claim_due_for_wake(
        self, *, now: datetime, limit: int = 100, exclude: Collection[str] = ()
    ) -> list[AgentSession]:
        """Lock up to ``limit`` sleeping sessions whose ``wake_at`` has passed.

        ``FOR UPDATE SKIP LOCKED``: concurrent claimers get disjoint sets. The locks last
        until the caller's transaction ends, so wake them within it. ``exclude`` skips
        ids the caller already failed to wake in this pass.
        """
        require_aware(now, "now")
        require_int(limit, "limit", minimum=1, maximum=10_000)
        stmt = (
            select(AgentSession)
            .where(
                agent_sessions.c.status == SessionStatus.SLEEPING.value,
                agent_sessions.c.wake_at <= now,
                agent_sessions.c.id.not_in(list(exclude)) if exclude else true(),
            )
            .order_by(agent_sessions.c.wake_at, agent_sessions.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        result = await fresh_scalars(self.session, stmt)
        return list(result)

    async def defer_wakes(self, retry_at: Mapping[str, datetime]) -> int:
        """Sleepers whose wake failed (their checkpoint would not restore) are due again
        at the given times, one more failure counted on each. Returns how many moved."""
        ids = [stored_id(sid, "session_id") for sid in retry_at]
        if not ids:
            return 0
        at = [require_aware(retry_at[sid], "retry_at") for sid in ids]
        given = given_rows("given", id=(ids, String()), at=(at, DateTime(timezone=True)))
        stmt = (
            update(AgentSession)
            .where(
                agent_sessions.c.id == given.c.id,
                agent_sessions.c.status == SessionStatus.SLEEPING.value,
            )
            .values(wake_at=given.c.at, wake_failures=agent_sessions.c.wake_failures + 1)
            .returning(agent_sessions.c.id)
        )
        with translate_errors():
            moved = list(
                await self.session.scalars(stmt, execution_options={"synchronize_session": False})
            )
        return len(moved)

    async def next_wake_at(self) -> datetime | None:
        """The earliest ``wake_at`` of any sleeping session (uses the partial index)."""
        earliest: datetime | None = await self.session.scalar(
            select(func.min(agent_sessions.c.wake_at)).where(
                agent_sessions.c.status == SessionStatus.SLEEPING.value
            )
        )
        return earliest

    async def due_stats(self, *, now: datetime) -> tuple[int, datetime | None]:
        """How many sleepers are due at ``now``, and the oldest due ``wake_at``."""
        require_aware(now, "now")
        count, oldest = (
            await self.session.execute(
                select(func.count(), func.min(agent_sessions.c.wake_at)).where(
                    agent_sessions.c.status == SessionStatus.SLEEPING.value,
                    agent_sessions.c.wake_at <= now,
                )
            )
        ).one()
        return int(count), oldest

    async def sleep_over_budget(
        self, *, day: date, silent_for: timedelta, wake_at: datetime, limit: int = 100
    ) -> list[AgentSession]:
        """The daemon's safety net: put to sleep working sessions whose user is at or over
        ``day``'s budget and that have not checkpointed for ``silent_for``.

        Silence is measured on the database clock, the one that stamped
        ``last_checkpoint_at``. One guarded UPDATE over rows locked with ``SKIP LOCKED``,
        so daemons can overlap.
        """
        require_aware(wake_at, "wake_at")
        silent_since = func.now() - silent_for
        over = self._working_over_budget(
            day, budget_days.c.spent_microdollars >= budget_days.c.budget_microdollars
        )
        victims = (
            over.where(
                func.coalesce(agent_sessions.c.last_checkpoint_at, agent_sessions.c.started_at)
                < silent_since
            )
            .limit(limit)
            .with_for_update(of=AgentSession, skip_locked=True)
        )
        return await self._move_working(
            victims, status=SessionStatus.SLEEPING.value, wake_at=wake_at
        )

    async def stop_over_budget(self, *, day: date, limit: int = 100) -> list[AgentSession]:
        """Move working sessions whose user is above 110 % of ``day``'s budget to
        ``budget_exceeded`` (BDGT-07), in one guarded UPDATE."""
        over = self._working_over_budget(
            day, stops(budget_days.c.spent_microdollars, budget_days.c.budget_microdollars)
        )
        victims = over.limit(limit).with_for_update(of=AgentSession, skip_locked=True)
        return await self._move_working(victims, status=SessionStatus.BUDGET_EXCEEDED.value)

    async def _move_working(self, victims: Select[tuple[str]], **values: Any) -> list[AgentSession]:
        """One guarded UPDATE of the locked ``victims`` still working: ``values`` and a
        new version, returning the moved sessions."""
        stmt = (
            update(AgentSession)
            .where(
                agent_sessions.c.id.in_(victims),
                agent_sessions.c.status == SessionStatus.WORKING.value,
            )
            .values(version=agent_sessions.c.version + 1, **values)
            .returning(AgentSession)
        )
        result = await fresh_scalars(self.session, stmt)
        return list(result)

    @staticmethod
    def _working_over_budget(day: date, condition: ColumnElement[bool]) -> Select[tuple[str]]:
        # A user who has a row for a later day has left ``day`` behind: a worker woke a
        # session for the new day, a session started on it, or a charge was booked to
        # it. Nothing is then done on the strength of ``day`` (DESIGN.md §6b, midnight).
        later = budget_days.alias("later")
        moved_on = exists(
            select(later.c.day).where(
                later.c.clerk_user_id == agent_sessions.c.clerk_user_id, later.c.day > day
            )
        )
        return (
            select(agent_sessions.c.id)
            .join(
                budget_days,
                and_(
                    budget_days.c.clerk_user_id == agent_sessions.c.clerk_user_id,
                    budget_days.c.day == day,
                ),
            )
            .where(agent_sessions.c.status == SessionStatus.WORKING.value, condition, ~moved_on)
            .order_by(agent_sessions.c.id)
        )

    async def resume_within_budget(self, *, clerk_user_id: str, day: date) -> list[AgentSession]:
        """``budget_exceeded -> working`` for the user's sessions, if the user's ``day`` is
        under 100 % of its budget (after a top-up); one guarded UPDATE. A session still
        over would be stopped again by its next charge, so it stays stopped."""
        require_id(clerk_user_id, "clerk_user_id")
        row = (
            select(budget_days.c.budget_microdollars)
            .where(
                budget_days.c.clerk_user_id == clerk_user_id,
                budget_days.c.day == day,
                budget_days.c.spent_microdollars < budget_days.c.budget_microdollars,
            )
            .scalar_subquery()
        )
        stmt = (
            update(AgentSession)
            .where(
                agent_sessions.c.clerk_user_id == clerk_user_id,
                agent_sessions.c.status == SessionStatus.BUDGET_EXCEEDED.value,
                row.is_not(None),
            )
            .values(
                status=SessionStatus.WORKING.value,
                version=agent_sessions.c.version + 1,
                daily_budget_microdollars=row,
                **owed_resume(),
            )
            .returning(AgentSession)
        )
        result = await fresh_scalars(self.session, stmt)
        return sorted(result, key=lambda session: session.id)

    async def request_wake(
        self,
        *,
        session_id: str | None = None,
        clerk_user_id: str | None = None,
        now: datetime | None = None,
    ) -> int:
        """Make sleeping sessions due at once (a top-up) and ``NOTIFY`` the workers.

        Give exactly one of ``session_id`` or ``clerk_user_id``. The notification on
        :data:`WAKE_CHANNEL` is delivered when the caller commits. ``now`` (default: the
        host clock, which the workers read too) is when they fall due. Returns how many
        sessions were made due.
        """
        if (session_id is None) == (clerk_user_id is None):
            raise InvalidInput("give exactly one of session_id or clerk_user_id")
        if session_id is not None:
            match = agent_sessions.c.id == require_id(session_id, "session_id")
        else:
            match = agent_sessions.c.clerk_user_id == require_id(clerk_user_id, "clerk_user_id")
        # The workers compare wake_at with their own clock, never the database's now():
        # a top-up must be due on that clock whatever the two disagree by.
        due = utc_now() if now is None else require_aware(now, "now")
        stmt = (
            update(AgentSession)
            .where(match, agent_sessions.c.status == SessionStatus.SLEEPING.value)
            .values(wake_at=func.least(agent_sessions.c.wake_at, due))
            .returning(agent_sessions.c.id)
        )
        ids = list(
            await self.session.scalars(stmt, execution_options={"synchronize_session": False})
        )
        for start in range(0, len(ids), _NOTIFY_BATCH):
            payload = orjson.dumps(ids[start : start + _NOTIFY_BATCH]).decode()
            await self.session.execute(select(func.pg_notify(WAKE_CHANNEL, payload)))
        return len(ids)

    async def notify_workers(self) -> None:
        """Wake the workers' wait (``NOTIFY`` on :data:`WAKE_CHANNEL`, sent at commit):
        something is due now."""
        await self.session.execute(select(func.pg_notify(WAKE_CHANNEL, "[]")))

    def _with_latest_meta(self) -> Select[Any]:
        latest = (
            select(
                agent_checkpoints.c.iteration_number,
                agent_checkpoints.c.current_phase,
                agent_checkpoints.c.sandbox_id,
            )
            .where(agent_checkpoints.c.session_id == agent_sessions.c.id)
            .order_by(agent_checkpoints.c.iteration_number.desc())
            .limit(1)
            .lateral("latest")
        )
        return select(AgentSession, latest).outerjoin(latest, true())

    async def _snapshot_rows(self, stmt: Select[Any]) -> list[SnapshotRow]:
        with translate_errors():
            result = await self.session.execute(stmt, execution_options=FRESH)
        return [
            SnapshotRow(
                session,
                None if iteration is None else CheckpointMetaRow(iteration, phase, sandbox),
            )
            for session, iteration, phase, sandbox in result
        ]

    async def snapshot_rows(self, session_ids: Collection[str]) -> list[SnapshotRow]:
        """The sessions with their latest checkpoint's metadata, in one query."""
        ids = [stored_id(sid, "session_id") for sid in session_ids]
        return await self._snapshot_rows(
            self._with_latest_meta()
            .where(agent_sessions.c.id.in_(ids))
            .order_by(agent_sessions.c.id)
        )

    async def changed_since(
        self,
        since: datetime | None,
        *,
        horizon: timedelta,
        after: tuple[datetime, str] | None = None,
        limit: int = 500,
    ) -> list[SnapshotRow]:
        """Sessions whose ``version`` moved after ``since`` (or, with None, within
        ``horizon`` of the database's now), oldest change first, with their latest
        checkpoint's metadata. ``after`` is the (changed_at, id) a previous page ended on."""
        require_int(limit, "limit", minimum=1, maximum=10_000)
        floor = (
            func.now() - bindparam("p_horizon", horizon, type_=Interval)
            if since is None
            else require_aware(since, "since")
        )
        stmt = self._with_latest_meta().where(agent_sessions.c.changed_at > floor)
        if after is not None:
            stmt = stmt.where(
                tuple_(agent_sessions.c.changed_at, agent_sessions.c.id) > tuple_(*after)
            )
        return await self._snapshot_rows(
            stmt.order_by(agent_sessions.c.changed_at, agent_sessions.c.id).limit(limit)
        )

    async def list_by_status(
        self,
        status: SessionStatus | str,
        *,
        limit: int = 100,
        after_id: str | None = None,
    ) -> list[AgentSession]:
        """One page of sessions in ``status`` ordered by id; pass the last id as ``after_id``."""
        wanted = parse_enum(SessionStatus, status, "status")
        require_int(limit, "limit", minimum=1, maximum=10_000)
        stmt = select(AgentSession).where(agent_sessions.c.status == wanted.value)
        if after_id is not None:
            stmt = stmt.where(agent_sessions.c.id > require_id(after_id, "after_id"))
        stmt = stmt.order_by(agent_sessions.c.id).limit(limit)
        return list(await self.session.scalars(stmt))

    async def count_by_status(self) -> dict[SessionStatus, int]:
        """How many sessions are in each status (zero included)."""
        rows = await self.session.execute(
            select(agent_sessions.c.status, func.count()).group_by(agent_sessions.c.status)
        )
        counts = dict.fromkeys(SessionStatus, 0)
        for status, n in rows:
            counts[SessionStatus(status)] = int(n)
        return counts
