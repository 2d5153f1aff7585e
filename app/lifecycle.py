"""Use cases: start, sleep, wake, stop, resume and complete a session.

Each PostgreSQL part is one transaction. The Redis key is written after the commit:
a Redis failure is logged and retried, and never rolls PostgreSQL back, which stays
the source of truth (a lost key is rebuilt from it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Final

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.budget import policy
from app.clock import Clock, utc_now
from app.db.models import AgentCheckpoint, AgentSession
from app.domain import (
    Decision,
    DomainError,
    InvalidTransition,
    SessionStatus,
    SessionStoreUnavailable,
    Tier,
)
from app.repositories import BudgetRepository, CheckpointRepository, SessionRepository
from app.repositories.checkpoint_cache import HistoryCache
from app.session_store import CheckpointMeta, RedisSessionStore, session_snapshot
from app.settings import Settings
from app.validation import parse_enum, require_int, require_text

log = logging.getLogger("app.lifecycle")

S = SessionStatus
STORE_ATTEMPTS: Final = 3
STORE_RETRY_DELAY: Final = 0.05
STORE_REST_SECONDS: Final = 1.0


@dataclass(eq=False)
class Runtime:
    """What the use cases need: the database, the store, settings and a clock."""

    session_factory: async_sessionmaker[AsyncSession]
    store: RedisSessionStore
    settings: Settings
    clock: Clock = utc_now
    #: Session ids whose Redis key could not be written; rebuilt later from PostgreSQL.
    pending_keys: set[str] = field(default_factory=set)
    #: After a failed write, Redis is left alone until this (monotonic) time, so an
    #: outage costs the wake path nothing but a set insertion.
    store_retry_at: float = 0.0
    #: Tips of the sessions this process saved last (O(new messages) saves).
    history_cache: HistoryCache = field(init=False)

    def __post_init__(self) -> None:
        self.history_cache = HistoryCache(self.settings.checkpoint_cache_sessions)

    def store_resting(self) -> bool:
        return time.monotonic() < self.store_retry_at

    def checkpoints(self, s: AsyncSession) -> CheckpointRepository:
        return CheckpointRepository(
            s,
            keep_last=self.settings.checkpoint_keep_last,
            keyframe_every=self.settings.checkpoint_keyframe_every,
            cache=self.history_cache,
        )


@dataclass(frozen=True)
class RestoredSession:
    """A woken session and its latest checkpoint (None if it never saved one)."""

    session: AgentSession
    checkpoint: AgentCheckpoint | None


async def write_keys(
    rt: Runtime, entries: Sequence[tuple[AgentSession, CheckpointMeta | None]]
) -> bool:
    """Write sessions' Redis keys after a commit, in one round trip, with retries; on
    failure remember them, so a later tick rebuilds them from PostgreSQL."""
    snapshots = {session.id: session_snapshot(session, cp) for session, cp in entries}
    if rt.store_resting():
        rt.pending_keys.update(snapshots)
        return False
    for attempt in range(1, STORE_ATTEMPTS + 1):
        try:
            await rt.store.put_many(snapshots)
        except SessionStoreUnavailable as exc:
            if attempt == STORE_ATTEMPTS:
                log.warning(
                    "store_error sessions=%s error=%r", ",".join(sorted(snapshots)), str(exc)
                )
                rt.pending_keys.update(snapshots)
                rt.store_retry_at = time.monotonic() + STORE_REST_SECONDS
                return False
            await asyncio.sleep(STORE_RETRY_DELAY * attempt)
        else:
            rt.pending_keys.difference_update(snapshots)
            return True
    return False  # pragma: no cover


async def write_key(
    rt: Runtime, session: AgentSession, checkpoint: CheckpointMeta | None = None
) -> bool:
    """Write one session's Redis key after a commit (see :func:`write_keys`)."""
    return await write_keys(rt, [(session, checkpoint)])


async def repair_keys(rt: Runtime) -> int:
    """Rewrite the keys that failed earlier from PostgreSQL; returns how many were fixed."""
    fixed = 0
    if rt.store_resting():
        return fixed
    for session_id in sorted(rt.pending_keys):
        async with rt.session_factory() as s:
            session = await SessionRepository(s).get_or_none(session_id)
            latest = await rt.checkpoints(s).list(session_id, limit=1) if session else []
        if session is None:
            rt.pending_keys.discard(session_id)
            continue
        if session.status == S.COMPLETED:
            try:
                await rt.store.delete(session_id)
            except SessionStoreUnavailable:
                return fixed
            rt.pending_keys.discard(session_id)
            fixed += 1
            continue
        if not await write_key(rt, session, latest[0] if latest else None):
            break  # Redis is still down: try again on the next tick
        fixed += 1
    return fixed


async def start_session(
    rt: Runtime, *, session_id: str, job_id: str, clerk_user_id: str, tier: Tier | str
) -> AgentSession:
    """Create a working session: the tier's model (BDGT-05), today's budget, the Redis key."""
    tier = parse_enum(Tier, tier, "tier")
    require_text(clerk_user_id, "clerk_user_id")
    today = policy.budget_day(rt.clock())
    async with rt.session_factory.begin() as s:
        budget = await BudgetRepository(s, rt.settings).daily_budget(
            clerk_user_id, today, tier=tier
        )
        session = await SessionRepository(s).create(
            id=session_id,
            job_id=job_id,
            clerk_user_id=clerk_user_id,
            tier=tier,
            model_used=rt.settings.model_for(tier),
            daily_budget_microdollars=budget,
        )
    log.info(
        "start session=%s user=%s tier=%s model=%s",
        session.id,
        clerk_user_id,
        tier,
        session.model_used,
    )
    await write_key(rt, session)
    return session


async def sleep_session(
    rt: Runtime,
    checkpoint: AgentCheckpoint,
    *,
    reason: str = "daily budget spent",
    now: datetime | None = None,
) -> AgentSession:
    """Checkpoint (``agent_state="sleeping"``) and sleep until the next 00:00 UTC (BDGT-02).

    The decision to sleep belongs to the budget day of the session's last charge. If
    that day has ended (a turn that crossed midnight), the new day decides: with budget
    left the session keeps working and is returned ``working``; only if the new day is
    spent too does it sleep, until the midnight after. If the budget daemon put the
    session to sleep first, or it is already ``budget_exceeded`` or ``completed``, the
    checkpoint is still saved and the session returned as it is.
    """
    moment = rt.clock() if now is None else now
    today = policy.budget_day(moment)  # InvalidInput for a naive time
    async with rt.session_factory.begin() as s:
        repo = SessionRepository(s)
        budgets = BudgetRepository(s, rt.settings)
        decided_on = await budgets.last_charge_day(checkpoint.session_id) or today
        carry_on = (
            await _carry_on_into(budgets, repo, checkpoint.session_id, today)
            if decided_on < today
            else None
        )
        if carry_on is not None:
            session = carry_on
            stored = await rt.checkpoints(s).save(replace_state(checkpoint, S.WORKING))
            reason = f"decided on {decided_on}, {today} has budget left: keeps working"
        else:
            stored = await rt.checkpoints(s).save(replace_state(checkpoint, S.SLEEPING))
            wake_at = policy.next_budget_day_start(
                max(moment, policy.day_start(max(decided_on, today)))
            )
            try:
                session = await repo.transition(
                    checkpoint.session_id, S.SLEEPING, expected=S.WORKING, wake_at=wake_at
                )
            except InvalidTransition as exc:
                if exc.current is S.WORKING:
                    raise
                session = await repo.get(checkpoint.session_id)
                reason = f"already {exc.current}"
    log.info(
        "sleep session=%s reason=%r status=%s wake_at=%s iteration=%d",
        session.id, reason, session.status,
        session.wake_at.isoformat() if session.wake_at else None, stored.iteration_number,
    )  # fmt: skip
    await write_key(rt, session, stored)
    return session


async def _carry_on_into(
    budgets: BudgetRepository, repo: SessionRepository, session_id: str, today: date
) -> AgentSession | None:
    """If the working session's user has budget left on ``today``, record today's budget on
    the session (a guarded UPDATE) and return it; otherwise None: it should sleep."""
    session = await repo.get(session_id)
    if session.status != S.WORKING:
        return None
    budget = await budgets.daily_budget(session.clerk_user_id, today, tier=session.tier)
    spent = await budgets.spent(session.clerk_user_id, today)
    if policy.decide(spent, budget) not in (Decision.CONTINUE, Decision.WIND_DOWN):
        return None
    return await repo.set_working_budget(session_id, budget)


async def wake_many(
    rt: Runtime, s: AsyncSession, sessions: Sequence[AgentSession]
) -> tuple[list[RestoredSession], dict[str, DomainError]]:
    """The PostgreSQL part of waking ``sessions``, inside the caller's transaction.

    Books each user's budget for the new day (a new ``budget_days`` row), loads every
    latest checkpoint in one query, then moves the sessions ``sleeping -> working`` in
    one guarded UPDATE. A session whose state cannot be restored is left asleep and
    returned among the failures; it never stops the others from waking.
    """
    if not sessions:
        return [], {}
    today = policy.budget_day(rt.clock())
    budgets = await BudgetRepository(s, rt.settings).daily_budgets(
        {row.clerk_user_id: Tier(row.tier) for row in sessions}, today
    )
    checkpoints = await rt.checkpoints(s).load_latest_many([row.id for row in sessions])
    failed: dict[str, DomainError] = {
        sid: found for sid, found in checkpoints.items() if isinstance(found, DomainError)
    }
    woken = await SessionRepository(s).wake_many(
        {row.id: budgets[row.clerk_user_id] for row in sessions if row.id not in failed}
    )
    restored = []
    for row in woken:
        checkpoint = checkpoints[row.id]
        assert not isinstance(checkpoint, DomainError)
        restored.append(RestoredSession(row, checkpoint))
    return restored, failed


async def wake_in(rt: Runtime, s: AsyncSession, session_id: str) -> RestoredSession:
    """Wake one session inside the caller's transaction (see :func:`wake_many`)."""
    session = await SessionRepository(s).get(session_id)
    restored, failed = await wake_many(rt, s, [session])
    if failed:
        raise failed[session_id]
    if not restored:
        raise InvalidTransition(
            session_id,
            current=SessionStatus(session.status),
            target=S.WORKING,
            expected=[S.SLEEPING],
        )
    return restored[0]


async def wake_session(
    rt: Runtime, session_id: str, *, reason: str = "requested"
) -> RestoredSession:
    """Wake one sleeping session now, in its own transaction (BDGT-03)."""
    async with rt.session_factory.begin() as s:
        restored = await wake_in(rt, s, session_id)
    log_wake(restored, reason)
    await write_key(rt, restored.session, restored.checkpoint)
    return restored


def log_wake(restored: RestoredSession, reason: str) -> None:
    cp = restored.checkpoint
    log.info(
        "wake session=%s reason=%r iteration=%s budget=%d",
        restored.session.id, reason, cp.iteration_number if cp else None,
        restored.session.daily_budget_microdollars,
    )  # fmt: skip


async def stop_session(
    rt: Runtime,
    session_id: str,
    *,
    checkpoint: AgentCheckpoint | None = None,
    reason: str = "over 110% of the daily budget",
) -> AgentSession:
    """``working -> budget_exceeded`` (BDGT-07), saving ``checkpoint`` first if given."""
    async with rt.session_factory.begin() as s:
        stored = (
            await rt.checkpoints(s).save(replace_state(checkpoint, S.BUDGET_EXCEEDED))
            if checkpoint
            else None
        )
        repo = SessionRepository(s)
        try:
            session = await repo.transition(session_id, S.BUDGET_EXCEEDED, expected=S.WORKING)
        except InvalidTransition as exc:
            if exc.current is not S.BUDGET_EXCEEDED:
                raise
            session = await repo.get(session_id)  # the charge stopped it already
    log.info("stop session=%s reason=%r", session.id, reason)
    await write_key(rt, session, stored)
    return session


async def resume_session(
    rt: Runtime, session_id: str, *, reason: str = "top-up"
) -> RestoredSession:
    """An explicit resume after a top-up: ``budget_exceeded -> working``."""
    async with rt.session_factory.begin() as s:
        repo = SessionRepository(s)
        session = await repo.transition(session_id, S.WORKING, expected=S.BUDGET_EXCEEDED)
        checkpoint = await rt.checkpoints(s).load_latest(session_id)
    restored = RestoredSession(session, checkpoint)
    log_wake(restored, reason)
    await write_key(rt, session, checkpoint)
    return restored


async def complete_session(
    rt: Runtime, session_id: str, *, checkpoint: AgentCheckpoint | None = None
) -> AgentSession:
    """Finish a session from any live status; the checkpoints stay, the Redis key goes."""
    async with rt.session_factory.begin() as s:
        if checkpoint is not None:
            await rt.checkpoints(s).save(replace_state(checkpoint, S.COMPLETED))
        session = await SessionRepository(s).transition(
            session_id, S.COMPLETED, expected=[S.WORKING, S.SLEEPING, S.BUDGET_EXCEEDED]
        )
    log.info("complete session=%s", session.id)
    try:
        await rt.store.delete(session_id)
    except SessionStoreUnavailable as exc:
        log.warning("store_error session=%s error=%r", session_id, str(exc))
        rt.pending_keys.add(session_id)
    return session


async def top_up(
    rt: Runtime,
    *,
    clerk_user_id: str,
    amount_microdollars: int,
    now: datetime | None = None,
) -> int:
    """A user bought ``amount_microdollars``: it takes effect at once (DESIGN.md §6b).

    In one transaction the credit raises today's budget and the period's allowance,
    the user's sleeping sessions become due now (``NOTIFY``: a worker wakes them), and
    their ``budget_exceeded`` sessions resume if today is back under 100 %. Returns
    how many sessions it made due or resumed. ``InvalidInput`` (nothing written) for
    an amount that is not a positive integer or a user without ``user_settings``.
    """
    require_text(clerk_user_id, "clerk_user_id")
    require_int(amount_microdollars, "amount_microdollars", minimum=1)
    moment = rt.clock() if now is None else now
    today = policy.budget_day(moment)  # InvalidInput for a naive time
    async with rt.session_factory.begin() as s:
        spent, budget = await BudgetRepository(s, rt.settings).top_up(
            clerk_user_id, amount_microdollars, now=moment
        )
        repo = SessionRepository(s)
        woken = await repo.request_wake(clerk_user_id=clerk_user_id, now=moment)
        resumed = await repo.resume_within_budget(clerk_user_id=clerk_user_id, day=today)
        latest: dict[str, CheckpointMeta | None] = {}
        for row in resumed:
            found = await rt.checkpoints(s).list(row.id, limit=1)
            latest[row.id] = found[0] if found else None
    log.info(
        "top_up user=%s amount=%d day=%s spent=%d budget=%d woken=%d resumed=%s",
        clerk_user_id, amount_microdollars, today, spent, budget, woken,
        ",".join(row.id for row in resumed) or "-",
    )  # fmt: skip
    if resumed:
        await write_keys(rt, [(row, latest[row.id]) for row in resumed])
    return woken + len(resumed)


def replace_state(checkpoint: AgentCheckpoint, state: SessionStatus) -> AgentCheckpoint:
    """A copy of ``checkpoint`` with ``agent_state`` set; the caller's object is untouched."""
    return AgentCheckpoint(
        session_id=checkpoint.session_id,
        job_id=checkpoint.job_id,
        message_history=checkpoint.message_history,
        sandbox_id=checkpoint.sandbox_id,
        current_phase=checkpoint.current_phase,
        retry_counts=checkpoint.retry_counts,
        session_cost_microdollars=checkpoint.session_cost_microdollars,
        daily_budget_microdollars=checkpoint.daily_budget_microdollars,
        iteration_number=checkpoint.iteration_number,
        agent_state=state.value,
    )


__all__ = [
    "RestoredSession",
    "Runtime",
    "complete_session",
    "repair_keys",
    "resume_session",
    "sleep_session",
    "start_session",
    "stop_session",
    "top_up",
    "wake_in",
    "wake_session",
    "write_key",
]
