"""Use cases: start, sleep, wake, stop, resume and complete a session; deliver resumes;
enforce budgets; keep the Redis mirror in step.

This module owns every transaction (``async with session_factory.begin()``); the
repositories only flush, and the processes only loop, measure and dispatch. The Redis
key is written after the commit: a Redis failure is logged and never rolls PostgreSQL
back, which stays the source of truth (:func:`reconcile_store` rewrites what is stale).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any, Final

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import usage_metrics
from app.budget import policy
from app.budget.pricing import Band, Rates
from app.clock import Clock, utc_now
from app.db.models import AgentCheckpoint, AgentSession, UserSettings
from app.domain import (
    Decision,
    DomainError,
    EventType,
    InvalidInput,
    InvalidTransition,
    SessionNotFound,
    SessionStatus,
    SessionStoreUnavailable,
    Tier,
)
from app.repositories import (
    WAKE_CHANNEL,
    BudgetRepository,
    ChargeResult,
    CheckpointRepository,
    ClaimedEvent,
    EventRepository,
    NewEvent,
    PriceEntry,
    PriceRepository,
    Reservation,
    ResumeRepository,
    RetentionRepository,
    SessionRepository,
    UserRepository,
    session_event,
)
from app.repositories.checkpoint_cache import HistoryCache
from app.repositories.events import dedup_key
from app.repositories.users import KEEP, Keep
from app.session_store import CheckpointMeta, RedisSessionStore, session_snapshot
from app.settings import Settings
from app.validation import parse_enum, require_id, require_int, require_text

log = logging.getLogger("app.lifecycle")

S = SessionStatus
STORE_ATTEMPTS: Final = 3
STORE_RETRY_DELAY: Final = 0.05
STORE_REST_SECONDS: Final = 1.0


@dataclass(eq=False)
class KeyWriter:
    """Writes sessions' Redis keys after commits. After a failed write Redis is left
    alone for a moment, so an outage costs the wake path nothing; what was not written
    is reconciled from PostgreSQL by the next :func:`reconcile_store`, in any process."""

    store: RedisSessionStore
    _retry_at: float = 0.0

    def resting(self) -> bool:
        return time.monotonic() < self._retry_at

    async def write(self, snapshots: Mapping[str, Mapping[str, Any]]) -> bool:
        """One round trip, retried a few times; False when Redis could not take them."""
        if not snapshots:
            return True
        if self.resting():
            return False
        for attempt in range(1, STORE_ATTEMPTS + 1):
            try:
                await self.store.put_many(snapshots)
            except SessionStoreUnavailable as exc:
                if attempt == STORE_ATTEMPTS:
                    log.warning(
                        "store_error sessions=%s error=%r", ",".join(sorted(snapshots)), str(exc)
                    )
                    self._retry_at = time.monotonic() + STORE_REST_SECONDS
                    return False
                await asyncio.sleep(STORE_RETRY_DELAY * attempt)
            else:
                return True
        return False  # pragma: no cover


@dataclass(eq=False)
class Runtime:
    """What the use cases need: the database, the store, settings and a clock (plus the
    process's key writer and checkpoint cache, made from them)."""

    session_factory: async_sessionmaker[AsyncSession]
    store: RedisSessionStore
    settings: Settings
    clock: Clock = utc_now
    keys: KeyWriter = field(init=False)
    #: Tips of the sessions this process saved last (O(new messages) saves).
    history_cache: HistoryCache = field(init=False)

    def __post_init__(self) -> None:
        self.keys = KeyWriter(self.store)
        self.history_cache = HistoryCache(self.settings.checkpoint_cache_sessions)

    def checkpoints(self, s: AsyncSession) -> CheckpointRepository:
        return CheckpointRepository(
            s,
            keep_last=self.settings.checkpoint_keep_last,
            keyframe_every=self.settings.checkpoint_keyframe_every,
            cache=self.history_cache,
        )

    @property
    def lease(self) -> timedelta:
        return timedelta(seconds=self.settings.resume_lease_seconds)


@dataclass(frozen=True)
class RestoredSession:
    """A session to run from its latest checkpoint (None if it never saved one).

    ``resume_token`` is the same on every delivery of one wake and new for each wake; a
    runner passes it to :func:`heartbeat` and ``CheckpointRepository.save``.
    """

    session: AgentSession
    checkpoint: AgentCheckpoint | None
    resume_token: str

    @classmethod
    def of(cls, session: AgentSession, checkpoint: AgentCheckpoint | None) -> RestoredSession:
        if session.resume_token is None:  # pragma: no cover - every move to working sets it
            raise ValueError(f"session {session.id!r} has no resume token")
        if checkpoint is not None:
            # Loaded checkpoints are transient copies: this changes no row. It makes the
            # restored state the session's (working), so that a runner saving it as it is
            # does not record the sleep it was saved with.
            checkpoint.agent_state = session.status
        return cls(session, checkpoint, session.resume_token)


# ----------------------------------------------------------------- the mirror


async def write_keys(
    rt: Runtime, entries: Sequence[tuple[AgentSession, CheckpointMeta | None]]
) -> bool:
    """Write sessions' Redis keys after a commit (see :class:`KeyWriter`). Each write is
    ordered by version, so a late one never undoes a newer one."""
    return await rt.keys.write(
        {session.id: session_snapshot(session, cp) for session, cp in entries}
    )


async def write_key(
    rt: Runtime, session: AgentSession, checkpoint: CheckpointMeta | None = None
) -> bool:
    """Write one session's Redis key after a commit (see :func:`write_keys`)."""
    return await write_keys(rt, [(session, checkpoint)])


async def reconcile_store(rt: Runtime, *, batch: int = 500, most: int = 20_000) -> int:
    """Rewrite from PostgreSQL the Redis keys of sessions that changed since the last
    pass, whatever process made the change and whether or not its write reached Redis.

    A pass reads at most ``most`` rows, in batches, and records in Redis itself how far
    it got: a Redis that restarted empty starts over from the TTL's horizon. Each pass
    rescans a margin back, for transactions that committed late. Returns how many keys
    it wrote or removed; ``SessionStoreUnavailable`` while Redis is down.
    """
    since = await rt.store.reconciled_through()
    margin = timedelta(seconds=rt.settings.store_reconcile_margin_seconds)
    start = None if since is None else since - margin
    horizon = timedelta(seconds=rt.store.ttl_seconds)
    done = 0
    after: tuple[datetime, str] | None = None
    while done < most:
        async with rt.session_factory() as s:
            rows = await SessionRepository(s).changed_since(
                start, horizon=horizon, after=after, limit=batch
            )
        if not rows:
            break
        await rt.store.put_many(
            {
                row.session.id: session_snapshot(row.session, row.meta)
                for row in rows
                if not row.done
            }
        )
        await rt.store.delete_many([row.session.id for row in rows if row.done])
        done += len(rows)
        after = (rows[-1].session.changed_at, rows[-1].session.id)
        await rt.store.set_reconciled_through(after[0])
        if len(rows) < batch:
            break
    return done


async def session_state(rt: Runtime, session_id: str) -> dict[str, Any]:
    """The session's Redis snapshot, once PostgreSQL (one primary-key read) vouches that
    it is the current one: the same incarnation at the same version. Otherwise, or on a
    miss, the snapshot is rebuilt from PostgreSQL and written back (a finished session
    keeps none: its snapshot is returned, and a stale key removed), so an erased
    session is never served, whatever key its erasure left behind. With Redis down,
    PostgreSQL answers. ``SessionNotFound`` if there is no such session."""
    require_id(session_id, "session_id")
    store_up = True
    try:
        found = await rt.store.get(session_id)
    except SessionStoreUnavailable as exc:
        log.warning("store_error session=%s error=%r", session_id, str(exc))
        found, store_up = None, False
    async with rt.session_factory() as s:
        repo = SessionRepository(s)
        if found is not None:
            head = await repo.head(session_id)
            if (
                head is not None
                and not head.done
                and found.get("incarnation") == head.incarnation
                and found.get("version") == head.version
            ):
                return found
        rows = await repo.snapshot_rows([session_id])
    row = rows[0] if rows else None
    if row is not None and store_up and not row.done:
        await write_key(rt, row.session, row.meta)  # replaces a stale key
    elif found is not None:  # an erased or finished session's key: removed, not served
        await _discard_key(rt, session_id, found)
    if row is None:
        raise SessionNotFound(session_id)
    return session_snapshot(row.session, row.meta)


async def _discard_key(rt: Runtime, session_id: str, stale: Mapping[str, Any]) -> None:
    """Remove the stale snapshot just read, unless a newer write (or a new
    incarnation's) has replaced it since."""
    life, version = stale.get("incarnation"), stale.get("version")
    if (life is not None and (type(life) is not int or life < 0)) or type(version) is not int:
        return  # not a snapshot this store wrote: the next write or the TTL replaces it
    try:
        await rt.store.discard(session_id, incarnation=life, version=version)
    except (SessionStoreUnavailable, InvalidInput) as exc:
        log.warning("store_error session=%s error=%r", session_id, str(exc))


# ------------------------------------------------------------ a runner's moves


async def start_session(
    rt: Runtime, *, session_id: str, job_id: str, clerk_user_id: str, tier: Tier | str
) -> AgentSession:
    """Create a working session: the tier's model (BDGT-05), today's budget, a resume
    token for the caller (who is the runner: no resume is owed), the Redis key."""
    tier = parse_enum(Tier, tier, "tier")
    # Every id is checked before anything is written (DESIGN.md §6c).
    require_id(session_id, "session_id")
    require_id(job_id, "job_id")
    require_id(clerk_user_id, "clerk_user_id")
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


async def heartbeat(rt: Runtime, session_id: str, *, resume_token: str) -> None:
    """A sign of life from the runner holding ``resume_token``. ``StaleRunner`` once the
    session has moved on: delivered to another runner (this one was presumed dead),
    completed (an operator's ``sessions cancel`` included) or purged."""
    async with rt.session_factory.begin() as s:
        await ResumeRepository(s).heartbeat(session_id, resume_token)


async def save_checkpoint(
    rt: Runtime,
    checkpoint: AgentCheckpoint,
    *,
    resume_token: str | None = None,
    new_messages: int | None = None,
) -> AgentCheckpoint:
    """Save a turn in its own transaction (``CheckpointRepository.save``, with this
    process's history cache: a history that extends the last save costs its new messages).

    A runner that only appended to the history since its last save passes how many
    messages it appended as ``new_messages``: ``CheckpointRepository.append`` then
    skips reading the earlier ones (they must be unchanged)."""
    async with rt.session_factory.begin() as s:
        repo = rt.checkpoints(s)
        if new_messages is None:
            return await repo.save(checkpoint, resume_token=resume_token)
        return await repo.append(checkpoint, new_messages=new_messages, resume_token=resume_token)


async def latest_checkpoint(rt: Runtime, session_id: str) -> AgentCheckpoint | None:
    """The session's latest checkpoint, its history whole; None before its first save."""
    async with rt.session_factory() as s:
        return await rt.checkpoints(s).load_latest(session_id)


async def sleep_session(
    rt: Runtime,
    checkpoint: AgentCheckpoint,
    *,
    reason: str = "daily budget spent",
    now: datetime | None = None,
    resume_token: str | None = None,
) -> AgentSession:
    """Checkpoint (``agent_state="sleeping"``) and sleep until the next 00:00 UTC (BDGT-02).

    The decision to sleep belongs to the budget day of the session's last charge. If
    that day has ended (a turn that crossed midnight), the new day decides: with budget
    left the session keeps working and is returned ``working``; only if the new day is
    spent too does it sleep, until the midnight after. If the budget daemon put the
    session to sleep first, or it is already ``budget_exceeded``, the checkpoint is
    still saved and the session returned as it is (so is it when ``completed`` and no
    token is given).

    A runner passes its ``resume_token``: unless it is the session's current one (the
    session was redelivered, completed or purged since), ``StaleRunner`` and nothing is
    saved or moved.
    """
    moment = rt.clock() if now is None else now
    today = policy.budget_day(moment)  # InvalidInput for a naive time
    async with rt.session_factory.begin() as s:
        repo = SessionRepository(s)
        # The session row first, then the new day's budget row (carry-on): the order of
        # the wake path, which claims the sleeper and then books its day. The other
        # order deadlocks with a worker waking this session after the daemon slept it.
        # A runner's token is checked as the row is locked: fenced, it changes nothing.
        await _lock_for(s, checkpoint.session_id, resume_token)
        budgets = BudgetRepository(s, rt.settings)
        decided_on = await budgets.last_charge_day(checkpoint.session_id) or today
        carry_on = (
            await _carry_on_into(budgets, repo, checkpoint.session_id, today)
            if decided_on < today
            else None
        )
        if carry_on is not None:
            session = carry_on
            stored = await rt.checkpoints(s).save(
                replace(checkpoint, agent_state=S.WORKING.value), resume_token=resume_token
            )
            reason = f"decided on {decided_on}, {today} has budget left: keeps working"
        else:
            stored = await rt.checkpoints(s).save(
                replace(checkpoint, agent_state=S.SLEEPING.value), resume_token=resume_token
            )
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
            else:
                await emit(s, session_event(EventType.SLEPT, session, by="agent", reason=reason))
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


async def _lock_for(s: AsyncSession, session_id: str, resume_token: str | None) -> None:
    """Lock the session row for a write, first in the transaction. With a runner's token
    the lock is taken only while the token is the session's and it is not completed:
    otherwise ``StaleRunner`` (``SessionNotFound`` if it is gone) before anything is
    written. Without one the caller is an operator, and is not fenced."""
    if resume_token is None:
        await SessionRepository(s).lock(session_id)
    else:
        await ResumeRepository(s).heartbeat(session_id, resume_token)


def _own_checkpoint(session_id: str, checkpoint: AgentCheckpoint | None) -> None:
    if checkpoint is not None and checkpoint.session_id != session_id:
        raise InvalidInput(
            f"checkpoint.session_id {checkpoint.session_id!r} is not the session {session_id!r}",
            field="checkpoint.session_id",
        )


async def stop_session(
    rt: Runtime,
    session_id: str,
    *,
    checkpoint: AgentCheckpoint | None = None,
    reason: str = "over 110% of the daily budget",
    resume_token: str | None = None,
) -> AgentSession:
    """``working -> budget_exceeded`` (BDGT-07), saving ``checkpoint`` first if given.

    A runner passes its ``resume_token``: unless it is the session's current one (the
    session was redelivered, completed or purged since), ``StaleRunner`` and nothing is
    saved or stopped. A session the daemon or a charge stopped first keeps its token,
    so its runner's final save lands. Without a token the caller is an operator."""
    require_text(session_id, "session_id")
    _own_checkpoint(session_id, checkpoint)
    async with rt.session_factory.begin() as s:
        await _lock_for(s, session_id, resume_token)
        stored = (
            await rt.checkpoints(s).save(
                replace(checkpoint, agent_state=S.BUDGET_EXCEEDED.value),
                resume_token=resume_token,
            )
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
        # Once per stop: the key is the session's version, so a stop the charge already
        # reported is not reported twice.
        await emit(s, session_event(EventType.STOPPED, session, by="request", reason=reason))
    log.info("stop session=%s reason=%r", session.id, reason)
    await write_key(rt, session, stored)
    return session


async def complete_session(
    rt: Runtime,
    session_id: str,
    *,
    checkpoint: AgentCheckpoint | None = None,
    resume_token: str | None = None,
) -> AgentSession:
    """Finish a session from any live status; the checkpoints stay, the Redis key goes.

    Completing retires the session's token: its runner is fenced from then on (an
    operator's ``sessions cancel`` is a completion without a token). A runner passes
    its ``resume_token``: unless it is the session's current one, ``StaleRunner`` and
    nothing is saved or completed."""
    require_text(session_id, "session_id")
    _own_checkpoint(session_id, checkpoint)
    async with rt.session_factory.begin() as s:
        # Reservations first: their days, then the session row, the order a charge
        # takes its locks in. A stale token rolls the release back with the rest.
        await BudgetRepository(s, rt.settings).release_reservations([session_id])
        await _lock_for(s, session_id, resume_token)
        if checkpoint is not None:
            await rt.checkpoints(s).save(
                replace(checkpoint, agent_state=S.COMPLETED.value), resume_token=resume_token
            )
        session = await SessionRepository(s).transition(
            session_id, S.COMPLETED, expected=[S.WORKING, S.SLEEPING, S.BUDGET_EXCEEDED]
        )
        session = await ResumeRepository(s).retire_token(session_id) or session
    log.info("complete session=%s", session.id)
    try:
        await rt.store.delete(session_id)
    except SessionStoreUnavailable as exc:
        log.warning("store_error session=%s error=%r", session_id, str(exc))
    return session


# --------------------------------------------------------------------- waking


@dataclass
class WakePass:
    """One batch of :func:`wake_due`."""

    claimed: int = 0
    woken: list[RestoredSession] = field(default_factory=list)
    failed: dict[str, DomainError] = field(default_factory=dict)
    #: False when the woken sessions' keys could not be written (reconciled later).
    keys_written: bool = True


def retry_delay(rt: Runtime, failures: int) -> timedelta:
    """Backoff after ``failures`` failed attempts: 1 s, 2 s, 4 s ... up to the cap."""
    return timedelta(seconds=min(rt.settings.backoff_max_seconds, 2.0 ** max(0, failures - 1)))


async def wake_many(
    rt: Runtime,
    s: AsyncSession,
    sessions: Sequence[AgentSession],
    *,
    lease: timedelta | None = None,
    reason: str = "due",
) -> tuple[list[RestoredSession], dict[str, DomainError]]:
    """The PostgreSQL part of waking ``sessions``, inside the caller's transaction.

    Books each user's budget for the new day (a new ``budget_days`` row), loads every
    latest checkpoint in one query, then moves the sessions ``sleeping -> working`` in
    one guarded UPDATE, each with a new resume token and a resume owed (booked to the
    caller for ``lease`` when it delivers at once). A session whose state cannot be
    restored stays asleep, due again after a backoff, and never holds up the others.
    """
    if not sessions:
        return [], {}
    now = rt.clock()
    budgets = await BudgetRepository(s, rt.settings).daily_budgets(
        {row.clerk_user_id: Tier(row.tier) for row in sessions}, policy.budget_day(now)
    )
    checkpoints = await rt.checkpoints(s).load_latest_many([row.id for row in sessions])
    failed: dict[str, DomainError] = {
        sid: found for sid, found in checkpoints.items() if isinstance(found, DomainError)
    }
    repo = SessionRepository(s)
    woken = await repo.wake_many(
        {row.id: budgets[row.clerk_user_id] for row in sessions if row.id not in failed},
        lease=lease,
    )
    if failed:
        await repo.defer_wakes(
            {
                row.id: now + retry_delay(rt, row.wake_failures + 1)
                for row in sessions
                if row.id in failed
            }
        )
    await emit(s, *(session_event(EventType.WOKEN, row, reason=reason) for row in woken))
    restored = []
    for row in woken:
        checkpoint = checkpoints[row.id]
        assert not isinstance(checkpoint, DomainError)
        restored.append(RestoredSession.of(row, checkpoint))
    return restored, failed


async def wake_due(rt: Runtime, *, limit: int, lease: timedelta | None = None) -> WakePass:
    """Wake up to ``limit`` sleepers whose ``wake_at`` has passed, in one transaction
    (``SKIP LOCKED``: workers get disjoint batches), then write their keys. With
    ``lease`` the caller delivers their resumes at once (:func:`deliver_due` otherwise)."""
    result = WakePass()
    async with rt.session_factory.begin() as s:
        claimed = await SessionRepository(s).claim_due_for_wake(now=rt.clock(), limit=limit)
        result.claimed = len(claimed)
        result.woken, result.failed = await wake_many(rt, s, claimed, lease=lease)
    for session_id, exc in result.failed.items():
        log.error("wake_failed session=%s error=%r", session_id, str(exc))
    for restored in result.woken:
        log_wake(restored, "due")
    result.keys_written = await write_keys(rt, [(r.session, r.checkpoint) for r in result.woken])
    return result


async def wake_session(
    rt: Runtime, session_id: str, *, reason: str = "requested"
) -> RestoredSession:
    """Wake one sleeping session now, in its own transaction (BDGT-03). Its resume is
    owed and delivered by a worker (the caller gets the token too)."""
    async with rt.session_factory.begin() as s:
        session = await SessionRepository(s).get(session_id)
        woken, failed = await wake_many(rt, s, [session], reason=reason)
        if failed:
            raise failed[session_id]
        if not woken:
            raise InvalidTransition(
                session_id, current=S(session.status), target=S.WORKING, expected=[S.SLEEPING]
            )
        await SessionRepository(s).notify_workers()
    restored = woken[0]
    log_wake(restored, reason)
    await write_key(rt, restored.session, restored.checkpoint)
    return restored


async def resume_session(
    rt: Runtime, session_id: str, *, reason: str = "top-up"
) -> RestoredSession:
    """An explicit resume after a top-up: ``budget_exceeded -> working``, with a new
    token and a resume owed to the worker that delivers it (NOTIFY: at once)."""
    async with rt.session_factory.begin() as s:
        repo = SessionRepository(s)
        session = await repo.transition(session_id, S.WORKING, expected=S.BUDGET_EXCEEDED)
        checkpoint = await rt.checkpoints(s).load_latest(session_id)
        await emit(s, session_event(EventType.WOKEN, session, reason=reason))
        await repo.notify_workers()
    restored = RestoredSession.of(session, checkpoint)
    log_wake(restored, reason)
    await write_key(rt, session, checkpoint)
    return restored


async def upsert_user(
    rt: Runtime,
    *,
    clerk_user_id: str,
    tier: Tier | str | Keep = KEEP,
    subscription_renewal_date: datetime | Keep | None = KEEP,
    budget_override_microdollars: int | Keep | None = KEEP,
) -> UserSettings:
    """Create a user, or change the fields given (``None`` clears the renewal date or
    the override), in its own transaction. A new user needs a ``tier``. Budget days
    already made keep their budget; a change applies from the next budget day on."""
    async with rt.session_factory.begin() as s:
        user = await UserRepository(s).upsert(
            clerk_user_id,
            tier=tier,
            subscription_renewal_date=subscription_renewal_date,
            budget_override_microdollars=budget_override_microdollars,
        )
    log.info("user user=%s tier=%s", user.clerk_user_id, user.tier)
    return user


async def get_user(rt: Runtime, clerk_user_id: str) -> UserSettings | None:
    """The user's settings, or None when the user has no row (then the tier a session
    was started with decides, over 30-day periods)."""
    async with rt.session_factory() as s:
        return await UserRepository(s).get(clerk_user_id)


async def top_up(
    rt: Runtime,
    *,
    clerk_user_id: str,
    amount_microdollars: int,
    now: datetime | None = None,
    idempotency_key: str | None = None,
) -> int:
    """A user bought ``amount_microdollars``: it takes effect at once (DESIGN.md §6b).

    In one transaction the credit raises today's budget and the period's allowance,
    the user's sleeping sessions become due now (``NOTIFY``: a worker wakes them), and
    their ``budget_exceeded`` sessions resume if today is back under 100 % (each with a
    new token and a resume owed, which a worker delivers). Returns
    how many sessions it made due or resumed. ``InvalidInput`` (nothing written) for
    an amount that is not a positive integer or a user without ``user_settings``.

    With ``idempotency_key``, a repeat of the same ``(clerk_user_id, idempotency_key)``
    credits nothing, moves no session, emits no event and returns 0; the same key with
    another amount is ``InvalidInput`` (DESIGN.md §6c).
    """
    require_text(clerk_user_id, "clerk_user_id")
    require_int(amount_microdollars, "amount_microdollars", minimum=1)
    moment = rt.clock() if now is None else now
    today = policy.budget_day(moment)  # InvalidInput for a naive time
    async with rt.session_factory.begin() as s:
        credited = await BudgetRepository(s, rt.settings).top_up(
            clerk_user_id, amount_microdollars, now=moment, idempotency_key=idempotency_key
        )
        if credited is None:
            log.info("top_up user=%s repeat of key=%r", clerk_user_id, idempotency_key)
            return 0
        spent, budget = credited
        repo = SessionRepository(s)
        woken = await repo.request_wake(clerk_user_id=clerk_user_id, now=moment)
        resumed = await repo.resume_within_budget(clerk_user_id=clerk_user_id, day=today)
        if resumed:
            await repo.notify_workers()  # each resumed session is owed a delivery
        # The outbox, in the top-up's transaction: the purchase, and each session it
        # resumed (the sleepers it made due are reported when a worker wakes them).
        await record_top_up(
            s,
            clerk_user_id=clerk_user_id,
            amount_microdollars=amount_microdollars,
            top_up_id=uuid.uuid4().hex,
            sessions_moved=woken + len(resumed),
            at=moment,
        )
        await emit(s, *(session_event(EventType.WOKEN, row, reason="top-up") for row in resumed))
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


def log_wake(restored: RestoredSession, reason: str) -> None:
    cp = restored.checkpoint
    log.info(
        "wake session=%s reason=%r iteration=%s budget=%d",
        restored.session.id, reason, cp.iteration_number if cp else None,
        restored.session.daily_budget_microdollars,
    )  # fmt: skip


# ------------------------------------------------------------- resume delivery


@dataclass
class DeliveryPass:
    """One batch of :func:`deliver_due`: deliveries booked to the caller, and what the
    pass found on the way."""

    deliveries: list[RestoredSession] = field(default_factory=list)
    parked: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    unrestorable: dict[str, DomainError] = field(default_factory=dict)


async def deliver_due(rt: Runtime, *, limit: int) -> DeliveryPass:
    """Book up to ``limit`` due resume deliveries to the caller for a lease, in one
    transaction. On the way it parks deliveries that ran out of attempts, and owes a
    new delivery (with a new token) to working sessions whose runner went silent."""
    settings = rt.settings
    result = DeliveryPass()
    async with rt.session_factory.begin() as s:
        repo = ResumeRepository(s)
        parked = await repo.park_exhausted(max_attempts=settings.resume_max_attempts, limit=limit)
        orphans = await repo.redeliver_orphans(
            runner_timeout=timedelta(seconds=settings.runner_timeout_seconds), limit=limit
        )
        claimed = await repo.claim_deliveries(
            lease=rt.lease, max_attempts=settings.resume_max_attempts, limit=limit
        )
        checkpoints = await rt.checkpoints(s).load_latest_many([row.id for row in claimed])
        for row in claimed:
            checkpoint = checkpoints[row.id]
            if isinstance(checkpoint, DomainError):
                result.unrestorable[row.id] = checkpoint
                await repo.retry_later(
                    row.id, row.resume_token or "", delay=retry_delay(rt, row.resume_attempts)
                )
            else:
                result.deliveries.append(RestoredSession.of(row, checkpoint))
        await emit(
            s,
            *(
                replace(
                    session_event(EventType.RESUME_PARKED, row, attempts=row.resume_attempts),
                    dedup_key=dedup_key(
                        EventType.RESUME_PARKED,
                        row.id,
                        row.resume_token,
                        _iso(row.resume_parked_at),
                    ),
                )
                for row in parked
            ),
            *(
                replace(
                    session_event(EventType.RUNNER_FENCED, row),
                    # A new token per redelivery: once per fenced runner.
                    dedup_key=dedup_key(EventType.RUNNER_FENCED, row.id, row.resume_token),
                )
                for row in orphans
            ),
        )
    result.parked = [row.id for row in parked]
    result.orphans = [row.id for row in orphans]
    for session_id in result.parked:
        log.error("resume_parked session=%s attempts=%d", session_id, settings.resume_max_attempts)
    for session_id in result.orphans:
        log.warning("runner_lost session=%s: delivering again with a new token", session_id)
    for session_id, exc in result.unrestorable.items():
        log.error("resume_unrestorable session=%s error=%r", session_id, str(exc))
    return result


async def acknowledge(rt: Runtime, tokens: Mapping[str, str]) -> int:
    """Hooks returned: these deliveries (session id -> token) are done."""
    if not tokens:
        return 0
    async with rt.session_factory.begin() as s:
        return await ResumeRepository(s).acknowledge(tokens)


async def renew_leases(rt: Runtime, tokens: Mapping[str, str]) -> int:
    """Hooks still running keep their deliveries for another lease."""
    if not tokens:
        return 0
    async with rt.session_factory.begin() as s:
        return await ResumeRepository(s).renew(tokens, lease=rt.lease)


async def delivery_failed(rt: Runtime, restored: RestoredSession, exc: BaseException) -> None:
    """A hook raised: deliver again (same token) after a backoff, unless attempts ran out
    (then the next :func:`deliver_due` pass parks it)."""
    attempts = restored.session.resume_attempts
    log.error(
        "resume_hook_failed session=%s attempt=%d error=%r",
        restored.session.id, attempts, str(exc),
    )  # fmt: skip
    async with rt.session_factory.begin() as s:
        await ResumeRepository(s).retry_later(
            restored.session.id, restored.resume_token, delay=retry_delay(rt, attempts)
        )


async def redeliver(rt: Runtime, session_id: str, *, force: bool = False) -> AgentSession:
    """Owe a working session's resume again at once (an operator unparking it, or
    starting it over). While a hook runs its delivery under an unexpired lease this
    raises ``ResumeInProgress`` and changes nothing; ``force=True`` redelivers anyway with
    a new token, so the running runner is fenced (``runner.fenced`` is emitted)."""
    async with rt.session_factory.begin() as s:
        found = await ResumeRepository(s).redeliver(session_id, force=force)
        if found is None:
            session = await SessionRepository(s).get(session_id)
            raise InvalidTransition(
                session_id, current=S(session.status), target=S.WORKING, expected=[S.WORKING]
            )
        if force:
            await emit(
                s,
                replace(
                    session_event(EventType.RUNNER_FENCED, found, by="operator"),
                    # A new token per forced redelivery: once per fenced runner.
                    dedup_key=f"{EventType.RUNNER_FENCED.value}:{found.id}:{found.resume_token}",
                ),
            )
        await SessionRepository(s).notify_workers()
    log.info("redeliver session=%s force=%s", session_id, force)
    return found


# ---------------------------------------------------------------- what is due


async def next_due(rt: Runtime) -> tuple[datetime | None, float | None]:
    """The earliest sleeper's ``wake_at`` (on the injected clock), and the seconds until
    the earliest owed resume delivery (on the database clock): two waits, two clocks."""
    async with rt.session_factory() as s:
        earliest_wake = await SessionRepository(s).next_wake_at()
        next_delivery = await ResumeRepository(s).seconds_until_next_delivery()
    return earliest_wake, next_delivery


@dataclass
class Gauges:
    """What the daemon publishes: sessions by status, due sleepers, parked resumes."""

    by_status: dict[SessionStatus, int]
    due: int
    oldest_due: datetime | None
    parked: int


async def gauges(rt: Runtime, *, now: datetime) -> Gauges:
    """Counts for the metrics, in one read-only session."""
    async with rt.session_factory() as s:
        repo = SessionRepository(s)
        by_status = await repo.count_by_status()
        due, oldest = await repo.due_stats(now=now)
        parked = await ResumeRepository(s).count_parked()
    return Gauges(by_status, due, oldest, parked)


async def charge(
    rt: Runtime,
    *,
    session_id: str,
    request_id: str,
    model: str,
    input_tokens: int,
    output_tokens: int,
    cache_creation_input_tokens: int = 0,
    cache_creation_1h_input_tokens: int = 0,
    cache_read_input_tokens: int = 0,
    batch: bool = False,
    now: datetime | None = None,
) -> ChargeResult:
    """Record one LLM call (BDGT-06) in its own transaction, every token class priced
    (DESIGN.md §6b). A charge that stops the session (above 110 %) rewrites its Redis
    key at once."""

    async def call(repo: BudgetRepository) -> ChargeResult:
        return await repo.charge(
            session_id=session_id,
            request_id=request_id,
            model=model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_creation_input_tokens=cache_creation_input_tokens,
            cache_creation_1h_input_tokens=cache_creation_1h_input_tokens,
            cache_read_input_tokens=cache_read_input_tokens,
            batch=batch,
            now=now or rt.clock(),
        )

    return await _charged(rt, session_id, call)


async def charge_usage(
    rt: Runtime,
    *,
    session_id: str,
    request_id: str,
    model: str,
    usage: Any,
    now: datetime | None = None,
) -> ChargeResult:
    """:func:`charge` from the provider's usage report as-is: the Anthropic SDK's
    ``Usage`` or its dict form (``BudgetRepository.charge_usage``)."""

    async def call(repo: BudgetRepository) -> ChargeResult:
        return await repo.charge_usage(
            session_id=session_id,
            request_id=request_id,
            model=model,
            usage=usage,
            now=now or rt.clock(),
        )

    return await _charged(rt, session_id, call)


async def _charged(
    rt: Runtime, session_id: str, call: Callable[[BudgetRepository], Awaitable[ChargeResult]]
) -> ChargeResult:
    async with rt.session_factory.begin() as s:
        result = await call(BudgetRepository(s, rt.settings))
        stopped = (
            await SessionRepository(s).get(session_id)
            if result.decision is Decision.STOP and not result.duplicate
            else None
        )
        if stopped is not None and stopped.status == S.BUDGET_EXCEEDED:
            await emit(s, session_event(EventType.STOPPED, stopped, by="charge"))
    if not result.duplicate:
        usage_metrics.CHARGES.inc()
        usage_metrics.SPEND.inc(result.cost_microdollars)
    if stopped is not None:
        await write_key(rt, stopped)
    return result


async def reserve(
    rt: Runtime,
    *,
    session_id: str,
    request_id: str,
    model: str,
    max_input_tokens: int,
    max_output_tokens: int,
    max_cache_creation_input_tokens: int = 0,
    now: datetime | None = None,
) -> Reservation:
    """Book a call's worst-case cost before making it, in its own transaction (a hard
    cap: ``BudgetRepository.reserve``); charge with the same ``request_id`` after."""
    async with rt.session_factory.begin() as s:
        return await BudgetRepository(s, rt.settings).reserve(
            session_id=session_id,
            request_id=request_id,
            model=model,
            max_input_tokens=max_input_tokens,
            max_output_tokens=max_output_tokens,
            max_cache_creation_input_tokens=max_cache_creation_input_tokens,
            now=now or rt.clock(),
        )


async def list_prices(rt: Runtime, *, model: str | None = None) -> list[PriceEntry]:
    """The price list, every row by model and time (``python -m app prices list``)."""
    async with rt.session_factory() as s:
        return await PriceRepository(s).list(model=model)


async def set_price(
    rt: Runtime,
    *,
    model: str,
    rates: Rates,
    effective_from: datetime,
    source: str,
    now: datetime | None = None,
    bands: Sequence[Band] = (),
    web_search_per_1k: int | None = None,
) -> PriceEntry:
    """Add ``model``'s price from ``effective_from`` on (``python -m app prices set``).

    The time must not be before ``now`` (the runtime's clock): a price applies to
    charges after its time and never changes one already made.
    """
    moment = now or rt.clock()
    start = policy.aware(effective_from, "effective_from")
    if start < moment:
        raise InvalidInput(
            f"effective_from {start.isoformat()} is in the past (now is {moment.isoformat()}):"
            " a price applies only to charges after its time",
            field="effective_from",
        )
    async with rt.session_factory.begin() as s:
        return await PriceRepository(s).add(
            model=model,
            rates=rates,
            effective_from=start,
            source=source,
            bands=bands,
            web_search_per_1k=web_search_per_1k,
        )


@dataclass
class Status:
    """What ``python -m app status`` shows."""

    day: date
    by_status: dict[SessionStatus, int]
    due: int
    oldest_due: datetime | None
    overdue: int
    next_wake_at: datetime | None
    users: int
    top_spenders: list[tuple[str, int, int]]


async def status(rt: Runtime, *, top: int = 10) -> Status:
    """Counts by status, due and overdue (by 5 minutes) sleepers, the next wake, and the
    day's spend for the ``top`` users, all on the runtime's clock."""
    now = rt.clock()
    day = policy.budget_day(now)
    async with rt.session_factory() as s:
        repo = SessionRepository(s)
        by_status = await repo.count_by_status()
        due, oldest = await repo.due_stats(now=now)
        overdue, _ = await repo.due_stats(now=now - timedelta(minutes=5))
        upcoming = await repo.next_wake_at()
        users, spenders = await BudgetRepository(s, rt.settings).day_spend(day, top=top)
    return Status(day, by_status, due, oldest, overdue, upcoming, users, spenders)


# ------------------------------------------------------------------ retention


@dataclass(frozen=True)
class PurgeReport:
    """What :func:`purge_finished` deleted (or, with ``dry_run``, would delete)."""

    session_ids: list[str]
    checkpoints: int
    redis_keys: int
    dry_run: bool = False
    #: Batches whose keys could not be counted or deleted (Redis down); such keys
    #: expire with their TTL.
    store_errors: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "sessions": len(self.session_ids),
            "checkpoints": self.checkpoints,
            "redis_keys": self.redis_keys,
            "dry_run": self.dry_run,
            "store_errors": self.store_errors,
            "session_ids": self.session_ids,
        }


async def _keys_step(what: str, step: Any) -> int | None:
    try:
        return int(await step)
    except SessionStoreUnavailable as exc:
        log.warning("store_error retention %s error=%r", what, str(exc))
        return None


async def purge_finished(
    rt: Runtime,
    *,
    older_than_days: int | None = None,
    batch: int | None = None,
    most: int | None = None,
    dry_run: bool = False,
) -> PurgeReport:
    """Retention: delete the checkpoints and Redis keys of sessions completed more than
    ``older_than_days`` (default ``RETENTION_DAYS``) days ago, on the database's clock.
    The session rows and the ledger stay; any open reservation of a purged session is
    released in its batch's transaction. Batches of ``batch`` (``RETENTION_BATCH``)
    sessions, one transaction each, until none is left or ``most`` sessions are done.
    ``dry_run`` reports what would go and deletes nothing (Redis keys: those that exist).
    """
    days = rt.settings.retention_days if older_than_days is None else older_than_days
    days = require_int(days, "older_than_days", minimum=0)
    size = require_int(batch or rt.settings.retention_batch, "batch", minimum=1)
    if dry_run:
        async with rt.session_factory() as s:
            preview = await RetentionRepository(s).preview_purge(older_than_days=days)
        counted = await _keys_step("count", rt.store.count_existing(preview.session_ids))
        return PurgeReport(
            preview.session_ids,
            preview.checkpoints,
            counted or 0,
            dry_run=True,
            store_errors=int(counted is None),
        )
    ids: list[str] = []
    checkpoints = keys = store_errors = 0
    while most is None or len(ids) < most:
        limit = size if most is None else min(size, most - len(ids))
        async with rt.session_factory.begin() as s:
            purged = await RetentionRepository(s).purge_checkpoints(
                older_than_days=days, limit=limit
            )
            await BudgetRepository(s, rt.settings).release_reservations(purged.session_ids)
        if purged.session_ids:
            ids += purged.session_ids
            checkpoints += purged.checkpoints
            # Completion already removed the key; this catches one a late write put back.
            deleted = await _keys_step("delete", rt.store.delete_many(purged.session_ids))
            keys += deleted or 0
            store_errors += int(deleted is None)
            log.info(
                "retention sessions=%d checkpoints=%d older_than_days=%d",
                len(purged.session_ids), purged.checkpoints, days,
            )  # fmt: skip
        if len(purged.session_ids) < limit:
            break
    return PurgeReport(ids, checkpoints, keys, store_errors=store_errors)


@dataclass(frozen=True)
class Removed:
    """What :func:`delete_session` removed: one session row, and counts of the rest."""

    session_id: str
    status: str
    checkpoints: int
    cost_events: int
    redis_keys: int
    sessions: int = 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "status": self.status,
            "sessions": self.sessions,
            "checkpoints": self.checkpoints,
            "cost_events": self.cost_events,
            "redis_keys": self.redis_keys,
        }


async def delete_session(rt: Runtime, session_id: str) -> Removed:
    """Remove a session entirely (a GDPR erasure), whatever its status: its row, its
    checkpoints, its ledger rows and its Redis key. ``SessionNotFound`` if there is none.

    The user's ``budget_days`` spend stays: it holds no session id, and the money was
    spent, so erasing a session never hands its user budget back. Its open
    reservations are released in the same transaction (DESIGN.md §6c). A runner still
    charging the session gets ``SessionNotFound``. With Redis down the key is left to
    expire (its TTL is 25 h); a deleted session has no row to reconcile from.
    """
    require_text(session_id, "session_id")
    async with rt.session_factory.begin() as s:
        await BudgetRepository(s, rt.settings).release_reservations([session_id])
        deleted = await RetentionRepository(s).delete_session(session_id)
    try:
        keys = int(await rt.store.delete(session_id))
    except SessionStoreUnavailable as exc:
        log.warning("store_error session=%s error=%r", session_id, str(exc))
        keys = 0
    log.info(
        "delete session=%s status=%s checkpoints=%d cost_events=%d redis_keys=%d",
        session_id, deleted.status, deleted.checkpoints, deleted.cost_events, keys,
    )  # fmt: skip
    return Removed(session_id, deleted.status, deleted.checkpoints, deleted.cost_events, keys)


# ----------------------------------------------------------- events (outbox)


async def emit(s: AsyncSession, *events: NewEvent) -> int:
    """Add events to the outbox in the caller's transaction: they commit, or vanish,
    with the change they report. Repeats (same ``dedup_key``) are dropped."""
    return await EventRepository(s).add(events)


async def record_top_up(
    s: AsyncSession,
    *,
    clerk_user_id: str,
    amount_microdollars: int,
    top_up_id: str,
    sessions_moved: int = 0,
    at: datetime | None = None,
) -> int:
    """The ``budget.topped_up`` event, for ``top_up`` to call inside its transaction
    (``top_up_id`` names the purchase: a retried top-up reports once)."""
    payload: dict[str, Any] = {
        "amount_microdollars": amount_microdollars,
        "sessions_moved": sessions_moved,
    }
    if at is not None:
        payload["at"] = at.isoformat()
    return await emit(
        s,
        NewEvent(
            EventType.TOPPED_UP,
            dedup_key(EventType.TOPPED_UP, clerk_user_id, top_up_id),
            payload,
            clerk_user_id=clerk_user_id,
        ),
    )


async def claim_events(rt: Runtime, *, limit: int) -> list[ClaimedEvent]:
    """Book up to ``limit`` due events to the caller for one lease (``SKIP LOCKED``:
    deliverers get disjoint batches; one that dies leaves them due after the lease)."""
    lease = timedelta(seconds=rt.settings.webhook_lease_seconds)
    async with rt.session_factory.begin() as s:
        return await EventRepository(s).claim(lease=lease, limit=limit)


async def events_delivered(rt: Runtime, ids: Sequence[int]) -> int:
    """The receiver took these events (a 2xx answer)."""
    if not ids:
        return 0
    async with rt.session_factory.begin() as s:
        return await EventRepository(s).delivered(ids)


def event_retry_delay(rt: Runtime, attempts: int) -> timedelta:
    """Capped exponential backoff after ``attempts`` failed deliveries."""
    base = rt.settings.webhook_backoff_base_seconds
    return timedelta(
        seconds=min(rt.settings.webhook_backoff_max_seconds, base * 2.0 ** max(0, attempts - 1))
    )


async def event_failed(rt: Runtime, event: ClaimedEvent, error: str) -> timedelta:
    """A delivery failed: the event is due again after the backoff; returns the delay."""
    delay = event_retry_delay(rt, event.attempts)
    async with rt.session_factory.begin() as s:
        await EventRepository(s).retry_later(event.id, event.attempts, delay=delay, error=error)
    return delay


async def events_pending(rt: Runtime) -> tuple[int, float, float | None]:
    """Undelivered events, the oldest one's age in seconds, and the seconds until the
    next one is due (None: nothing to deliver)."""
    async with rt.session_factory() as s:
        repo = EventRepository(s)
        count, oldest = await repo.pending()
        return count, oldest, await repo.seconds_until_next()


# ------------------------------------------------------------------- operators


def describe(session: AgentSession) -> dict[str, Any]:
    """A session row as plain data, its resume state included (for people and scripts)."""
    if session.resume_parked_at is not None:
        resume = "parked"
    elif session.resume_due_at is not None:
        resume = "owed"
    else:
        resume = "-"
    return {
        "id": session.id,
        "job_id": session.job_id,
        "clerk_user_id": session.clerk_user_id,
        "status": session.status,
        "tier": session.tier,
        "model": session.model_used,
        "version": session.version,
        "wake_at": _iso(session.wake_at),
        "cumulative_cost_microdollars": session.cumulative_cost_microdollars,
        "daily_budget_microdollars": session.daily_budget_microdollars,
        "resume": resume,
        "resume_token": session.resume_token,
        "resume_due_at": _iso(session.resume_due_at),
        "resume_attempts": session.resume_attempts,
        "resume_parked_at": _iso(session.resume_parked_at),
        "wake_failures": session.wake_failures,
        "last_seen_at": _iso(session.last_seen_at),
        "last_checkpoint_at": _iso(session.last_checkpoint_at),
        "started_at": _iso(session.started_at),
    }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


async def find_sessions(
    rt: Runtime, *, status: SessionStatus | str | None = None, stuck: bool = False, limit: int = 50
) -> list[AgentSession]:
    """Sessions for an operator: by status, or the stuck ones (parked, or owed a resume
    for more than two leases), at most ``limit``."""
    async with rt.session_factory() as s:
        if stuck:
            return await ResumeRepository(s).stuck(overdue=2 * rt.lease, limit=limit)
        repo = SessionRepository(s)
        if status is not None:
            return await repo.list_by_status(status, limit=limit)
        found: list[AgentSession] = []
        for each in S:
            found += await repo.list_by_status(each, limit=limit)
        return sorted(found, key=lambda row: row.id)[:limit]


async def inspect_session(rt: Runtime, session_id: str) -> dict[str, Any]:
    """Everything an operator needs about one session: the row and its resume state, the
    latest checkpoint's metadata, and what Redis holds (None: no key; an error string
    when Redis is down)."""
    async with rt.session_factory() as s:
        session = await SessionRepository(s).get(session_id)
        latest = await rt.checkpoints(s).list(session_id, limit=1)
    store: dict[str, Any] | str | None
    try:
        store = await rt.store.get(session_id, refresh=False)
    except SessionStoreUnavailable as exc:
        store = f"unavailable: {exc}"
    checkpoint = None
    if latest:
        info = latest[0]
        checkpoint = {
            "iteration": info.iteration_number,
            "agent_state": info.agent_state,
            "phase": info.current_phase,
            "sandbox_id": info.sandbox_id,
            "messages": info.message_count,
            "saved_at": info.updated_at.isoformat(),
        }
    return {"session": describe(session), "checkpoint": checkpoint, "redis": store}


# ---------------------------------------------------------- budget enforcement


@dataclass
class EnforcePass:
    """What one :func:`enforce_budgets` pass did."""

    slept: list[AgentSession] = field(default_factory=list)
    stopped: list[AgentSession] = field(default_factory=list)


async def enforce_budgets(rt: Runtime, *, limit: int) -> EnforcePass:
    """The daemon's safety net, batch by batch (one transaction each): stop working
    sessions above 110 % of today's budget (BDGT-07), and put to sleep those at or over
    it that have been silent for the grace period (BDGT-02). Then write their keys."""
    now = rt.clock()
    today = policy.budget_day(now)
    result = EnforcePass()
    while True:
        if policy.budget_day(rt.clock()) != today:
            break  # the day ended during the pass: never act on it (the next tick won't)
        async with rt.session_factory.begin() as s:
            repo = SessionRepository(s)
            stopped = await repo.stop_over_budget(day=today, limit=limit)
            slept = await repo.sleep_over_budget(
                day=today,
                silent_for=timedelta(seconds=rt.settings.sleep_grace_seconds),
                wake_at=policy.next_budget_day_start(now),
                limit=limit,
            )
            await emit(
                s,
                *(session_event(EventType.STOPPED, row, by="daemon") for row in stopped),
                *(session_event(EventType.SLEPT, row, by="daemon") for row in slept),
            )
        for row in stopped:
            log.info("stop session=%s reason=%r by=daemon", row.id, "over 110% of daily budget")
        for row in slept:
            log.info(
                "sleep session=%s reason=%r wake_at=%s by=daemon",
                row.id, "daily budget spent, agent silent", row.wake_at,
            )  # fmt: skip
        result.stopped += stopped
        result.slept += slept
        if len(stopped) < limit and len(slept) < limit:
            break
    await write_keys(rt, [(row, None) for row in [*result.stopped, *result.slept]])
    return result


__all__ = [
    "WAKE_CHANNEL",
    "ClaimedEvent",
    "DeliveryPass",
    "EnforcePass",
    "Gauges",
    "PurgeReport",
    "Removed",
    "RestoredSession",
    "Runtime",
    "Status",
    "WakePass",
    "acknowledge",
    "charge",
    "claim_events",
    "complete_session",
    "delete_session",
    "deliver_due",
    "delivery_failed",
    "describe",
    "emit",
    "enforce_budgets",
    "event_failed",
    "event_retry_delay",
    "events_delivered",
    "events_pending",
    "find_sessions",
    "gauges",
    "get_user",
    "heartbeat",
    "inspect_session",
    "latest_checkpoint",
    "next_due",
    "purge_finished",
    "reconcile_store",
    "record_top_up",
    "redeliver",
    "renew_leases",
    "resume_session",
    "save_checkpoint",
    "session_state",
    "sleep_session",
    "start_session",
    "status",
    "stop_session",
    "top_up",
    "upsert_user",
    "wake_due",
    "wake_session",
    "write_key",
    "write_keys",
]
