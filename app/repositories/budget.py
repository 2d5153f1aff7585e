"""BudgetRepository: the idempotent cost ledger, one budget row per user per UTC day, and
reservations for callers that want a hard cap (DESIGN.md §6, §6b)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

from sqlalchemy import (
    Boolean,
    Date,
    DateTime,
    Select,
    String,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.budget import policy
from app.budget.pricing import (
    MAX_TOKENS_PER_CALL,
    TokenUsage,
    parse_usage,
    tariff_of,
    token_usage,
)
from app.db import tables
from app.domain import Decision, InvalidInput, SessionNotFound, SessionStatus, Tier, UnknownModel
from app.repositories.budget_rules import exact, saturating_add, stops, within_cap
from app.repositories.errors import translate_errors, translated
from app.repositories.events import EventRepository, threshold_events
from app.repositories.price_sql import (
    call_cost,
    fallback_params,
    usage_binds,
    usage_params,
    worst_cost,
)
from app.repositories.prices import PriceRepository
from app.repositories.sql import core_connection
from app.settings import Settings
from app.validation import (
    MAX_MODEL_LENGTH,
    parse_enum,
    require_aware,
    require_int,
    require_text,
    stored_id,
)


@dataclass(frozen=True, slots=True)
class ChargeResult:
    """Outcome of a charge: its cost, the day's spend and budget after it, and the decision."""

    cost_microdollars: int
    spent_microdollars: int
    budget_microdollars: int
    decision: Decision
    duplicate: bool


@dataclass(frozen=True, slots=True)
class Reservation:
    """Outcome of ``reserve``: whether the call may go ahead, what was booked for it
    (0 when refused), and ``decide()`` of the day's spend plus every open reservation
    (``sleep`` when refused)."""

    granted: bool
    reserved_microdollars: int
    decision: Decision


def _owner() -> Any:
    s = tables.agent_sessions.c
    return (
        select(s.id, s.clerk_user_id, s.tier)
        .where(s.id == bindparam("p_session_id", type_=String))
        .cte("owner")
    )


def _build_charge_statement() -> Select[Any]:
    """The common charge as one statement of CTEs, built once and reused with parameters.

    1. ``price``: the model's price per class in force at the charge's time, and the
       cost, every class priced and floored on its own (no round trip of its own);
    2. ``settled``: the call's open reservation (the user's, same request_id), if the
       call was not charged before, deleted, whatever day it was booked on;
    3. ``event``: the ledger row with its tokens by class, once per user and request_id
       (``ON CONFLICT DO NOTHING``), only when a price is known, on the day the
       reservation was booked on (DESIGN.md §6c), or on the charge's own day when there
       was none or it had expired;
    4. ``spend``: the charge day's spend, and the settled amount taken off what its own
       day has reserved (one UPDATE of one or two rows, each locked);
    5. ``session_update``: the session's cumulative cost, and ``budget_exceeded``
       above 110 % of the charge day's budget (BDGT-07).

    Spend and cumulative cost saturate at ``MAX_MICRODOLLARS``; the ledger row keeps
    the exact cost (docs/limits.md).
    """
    ev, day_c, ses = tables.agent_cost_events.c, tables.budget_days.c, tables.agent_sessions.c
    res = tables.budget_reservations.c
    # Parameter names must not match column names: UPDATE would read them as SET values.
    own_day = bindparam("p_day", type_=Date)
    at = bindparam("p_at", type_=DateTime(True))
    request_id = bindparam("p_request_id", type_=String)
    tokens = usage_binds()
    owner = _owner()
    cost = call_cost(tokens)
    priced = select(cost.label("cost")).cte("priced")
    user = select(owner.c.clerk_user_id).scalar_subquery()
    charged_before = exists(
        select(ev.request_id).where(ev.clerk_user_id == user, ev.request_id == request_id)
    )
    # The call's open reservation, whatever day it was booked on: deleted (its row
    # locked, so two charges of one call settle it once) unless the call was charged.
    settled = (
        delete(tables.budget_reservations)
        .where(
            res.clerk_user_id == user,
            res.request_id == request_id,
            ~charged_before,
            exists(select(priced.c.cost).where(priced.c.cost.is_not(None))),
        )
        .returning(res.budget_day, res.amount_microdollars, res.expires_at)
        .cte("settled")
    )
    # The charge counts on the day its reservation was booked on, unless that expired.
    booked_day = select(settled.c.budget_day).where(settled.c.expires_at > at).scalar_subquery()
    day = func.coalesce(booked_day, own_day)
    event = (
        insert(tables.agent_cost_events)
        .from_select(
            [
                "request_id",
                "session_id",
                "clerk_user_id",
                "model",
                *tokens,
                "batch",
                "cost_microdollars",
                "budget_day",
            ],
            select(
                request_id,
                owner.c.id,
                owner.c.clerk_user_id,
                bindparam("p_model", type_=String),
                *tokens.values(),
                bindparam("p_batch", type_=Boolean),
                priced.c.cost,
                day,
            )
            .select_from(owner.join(priced, true()))
            .where(priced.c.cost.is_not(None)),
        )
        .on_conflict_do_nothing(index_elements=[ev.clerk_user_id, ev.request_id])
        .returning(ev.cost_microdollars, ev.budget_day)
        .cte("event")
    )
    added = select(event.c.cost_microdollars).scalar_subquery()
    charge_day = select(event.c.budget_day).scalar_subquery()
    released = select(func.coalesce(func.sum(settled.c.amount_microdollars), 0)).scalar_subquery()
    released_on = select(settled.c.budget_day).scalar_subquery()
    # One UPDATE for both rows a charge may touch: the charge's day gets the cost, and
    # the reservation's day (the same row, unless the reservation expired) lets it go.
    spend = (
        update(tables.budget_days)
        .where(
            day_c.clerk_user_id == user,
            or_(day_c.day == charge_day, day_c.day == released_on),
        )
        .values(
            spent_microdollars=case(
                (day_c.day == charge_day, saturating_add(day_c.spent_microdollars, added)),
                else_=day_c.spent_microdollars,
            ),
            reserved_microdollars=case(
                (
                    day_c.day == released_on,
                    func.greatest(day_c.reserved_microdollars - released, 0),
                ),
                else_=day_c.reserved_microdollars,
            ),
        )
        .returning(day_c.day, day_c.spent_microdollars, day_c.budget_microdollars)
        .cte("spend")
    )
    on_day = spend.c.day == charge_day
    spent = select(spend.c.spent_microdollars).where(on_day).scalar_subquery()
    budget = select(spend.c.budget_microdollars).where(on_day).scalar_subquery()
    stop = and_(ses.status == SessionStatus.WORKING.value, stops(spent, budget))
    session_update = (
        update(tables.agent_sessions)
        .where(ses.id == owner.c.id, exists(select(spend.c.day).where(on_day)))
        .values(
            cumulative_cost_microdollars=saturating_add(ses.cumulative_cost_microdollars, added),
            status=case((stop, SessionStatus.BUDGET_EXCEEDED.value), else_=ses.status),
            version=ses.version + case((stop, 1), else_=0),
        )
        .returning(ses.id)
        .cte("session_update")
    )
    return select(
        exists(select(owner.c.id)).label("found"),
        select(priced.c.cost).scalar_subquery().label("cost"),
        exists(select(event.c.budget_day)).label("inserted"),
        user.label("clerk_user_id"),
        select(owner.c.tier).scalar_subquery().label("tier"),
        charge_day.label("day"),
        spent.label("spent"),
        budget.label("budget"),
        # Referencing the CTE is what makes SQLAlchemy render it; PostgreSQL runs
        # every data-modifying CTE to completion whether or not it is read.
        exists(select(session_update.c.id)).label("session_updated"),
    )


def _build_reserve_statement() -> Select[Any]:
    """A reservation as one statement (DESIGN.md §6b).

    1. ``locked``: the user's day row, ``FOR UPDATE``: reservations and charges of one
       user-day take their turn here, and a row locked after a wait is read as
       committed, so the figures below are never stale;
    2. ``swept``: the day's expired reservations, deleted (skipping any a charge is
       settling right now, which would otherwise wait on this lock);
    3. ``booked``: the new reservation, only if the day's spend plus every open
       reservation plus this one stays within 110 % of the budget, and only once per
       request_id;
    4. ``kept``: the day's ``reserved_microdollars`` minus what was swept plus what was
       booked.
    """
    day_c, res, ev = tables.budget_days.c, tables.budget_reservations.c, tables.agent_cost_events.c
    day = bindparam("p_day", type_=Date)
    now = bindparam("p_at", type_=DateTime(True))
    request_id = bindparam("p_request_id", type_=String)
    owner = _owner()
    worst = worst_cost()
    priced = select(worst.label("worst")).cte("priced")
    user = select(owner.c.clerk_user_id).scalar_subquery()
    locked = (
        select(
            day_c.clerk_user_id,
            day_c.spent_microdollars,
            day_c.reserved_microdollars,
            day_c.budget_microdollars,
        )
        .where(day_c.clerk_user_id == user, day_c.day == day)
        .with_for_update()
        .cte("locked")
    )
    # Scalar subqueries of ``locked`` run before the rows they filter: the day's lock
    # is always taken before any reservation row's, so this never deadlocks a charge.
    locked_user = select(locked.c.clerk_user_id).scalar_subquery()
    expired = (
        select(res.request_id)
        .where(res.clerk_user_id == locked_user, res.budget_day == day, res.expires_at <= now)
        .with_for_update(skip_locked=True)
    )
    swept = (
        delete(tables.budget_reservations)
        .where(res.clerk_user_id == locked_user, res.request_id.in_(expired))
        .returning(res.amount_microdollars)
        .cte("swept")
    )
    freed = select(func.coalesce(func.sum(swept.c.amount_microdollars), 0)).scalar_subquery()
    open_before = exact(select(locked.c.reserved_microdollars).scalar_subquery()) - freed
    spent = select(locked.c.spent_microdollars).scalar_subquery()
    budget = select(locked.c.budget_microdollars).scalar_subquery()
    amount = select(priced.c.worst).scalar_subquery()
    charged = exists(
        select(ev.request_id).where(ev.clerk_user_id == user, ev.request_id == request_id)
    )
    # The user's reservation under this request_id, on any day, open or expired: an
    # open one is answered as it is; an expired one is released first (``reserve``).
    mine = and_(res.clerk_user_id == user, res.request_id == request_id)
    fits = within_cap(exact(spent) + open_before + exact(amount), budget)
    booked = (
        insert(tables.budget_reservations)
        .from_select(
            [
                "request_id",
                "session_id",
                "clerk_user_id",
                "budget_day",
                "model",
                "amount_microdollars",
                "expires_at",
            ],
            select(
                request_id,
                owner.c.id,
                owner.c.clerk_user_id,
                day,
                bindparam("p_model", type_=String),
                amount,
                bindparam("p_expires_at", type_=DateTime(True)),
            ).where(
                exists(select(locked.c.clerk_user_id)),
                amount.is_not(None),
                ~charged,
                ~exists(select(res.request_id).where(mine)),
                fits,
            ),
        )
        .on_conflict_do_nothing(index_elements=[res.clerk_user_id, res.request_id])
        .returning(res.amount_microdollars)
        .cte("booked")
    )
    added = select(func.coalesce(func.sum(booked.c.amount_microdollars), 0)).scalar_subquery()
    kept = (
        update(tables.budget_days)
        .where(
            day_c.clerk_user_id == locked_user,
            day_c.day == day,
            or_(
                exists(select(swept.c.amount_microdollars)),
                exists(select(booked.c.amount_microdollars)),
            ),
        )
        .values(
            reserved_microdollars=saturating_add(
                func.greatest(day_c.reserved_microdollars - freed, 0), added
            )
        )
        .returning(day_c.reserved_microdollars)
        .cte("kept")
    )
    existing = select(res.amount_microdollars, res.expires_at).where(mine).subquery()
    return select(
        exists(select(owner.c.id)).label("found"),
        user.label("clerk_user_id"),
        select(owner.c.tier).scalar_subquery().label("tier"),
        amount.label("worst"),
        exists(select(locked.c.clerk_user_id)).label("has_day"),
        charged.label("charged"),
        select(existing.c.amount_microdollars).scalar_subquery().label("existing"),
        exists(select(existing.c.amount_microdollars).where(existing.c.expires_at > now)).label(
            "existing_open"
        ),
        exists(select(booked.c.amount_microdollars)).label("booked"),
        spent.label("spent"),
        budget.label("budget"),
        (open_before + added).label("reserved"),
        exists(select(kept.c.reserved_microdollars)).label("kept"),
    )


def _build_release(*, expired_only: bool) -> Any:
    """Releases reservations: deletes them (locking each row first, as a charge that
    settles one does) and takes each off its own day's ``reserved_microdollars``.

    With ``expired_only``: the user's one reservation under ``p_request_id`` if it
    expired at ``p_at`` (a retried reservation is a new one, DESIGN.md §6c). Otherwise:
    every open reservation of the sessions ``p_session_ids`` (the session is deleted,
    purged or completed)."""
    day_c, res = tables.budget_days.c, tables.budget_reservations.c
    if expired_only:
        which = and_(
            res.clerk_user_id == bindparam("p_user", type_=String),
            res.request_id == bindparam("p_request_id", type_=String),
            res.expires_at <= bindparam("p_at", type_=DateTime(True)),
        )
    else:
        which = res.session_id == func.any(bindparam("p_session_ids", type_=ARRAY(String)))
    gone = (
        delete(tables.budget_reservations)
        .where(which)
        .returning(res.clerk_user_id, res.budget_day, res.amount_microdollars)
        .cte("gone")
    )
    per_day = (
        select(
            gone.c.clerk_user_id,
            gone.c.budget_day,
            func.sum(gone.c.amount_microdollars).label("amount"),
        )
        .group_by(gone.c.clerk_user_id, gone.c.budget_day)
        .subquery("per_day")
    )
    return (
        update(tables.budget_days)
        .where(day_c.clerk_user_id == per_day.c.clerk_user_id, day_c.day == per_day.c.budget_day)
        .values(
            reserved_microdollars=func.greatest(
                exact(day_c.reserved_microdollars) - per_day.c.amount, 0
            )
        )
        .returning(per_day.c.amount)
    )


_CHARGE: Final = _build_charge_statement()
_RESERVE: Final = _build_reserve_statement()
_RELEASE_EXPIRED: Final = _build_release(expired_only=True)
_RELEASE_SESSIONS: Final = _build_release(expired_only=False)


@translated
class BudgetRepository:
    """Charges, reservations and daily budgets. Never commits: the caller owns the
    transaction."""

    def __init__(self, session: AsyncSession, settings: Settings) -> None:
        self.session = session
        self.settings = settings

    def _call(
        self, session_id: str, request_id: str, model: str, now: datetime | None
    ) -> tuple[datetime, date, dict[str, Any]]:
        """The checked identity and time of one provider call, as the parameters that
        the charge and the reservation statements share (the fallback price included)."""
        require_text(session_id, "session_id")
        require_text(request_id, "request_id")
        require_text(model, "model", max_length=MAX_MODEL_LENGTH)
        moment = datetime.now(UTC) if now is None else require_aware(now, "now")
        day = policy.budget_day(moment)
        params = {
            "p_session_id": session_id,
            "p_request_id": request_id,
            "p_model": model,
            "p_at": moment,
            "p_day": day,
            **self._fallback(model),
        }
        return moment, day, params

    def _fallback(self, model: str, prompt_tokens: int = 0) -> dict[str, int | None]:
        # The configured price, for a model the prices table has no row for at the time,
        # at the band a prompt of ``prompt_tokens`` falls into.
        configured = self.settings.model_prices.get(model)
        return fallback_params(None if configured is None else tariff_of(configured), prompt_tokens)

    def _worst_params(self, model: str, params: dict[str, Any]) -> dict[str, Any]:
        # A reservation's band is that of the largest prompt it allows: input + writes.
        prompt = params["p_max_input_tokens"] + params["p_max_cache_tokens"]
        return {"p_prompt_tokens": prompt, **self._fallback(model, prompt)}

    async def _unpriced(
        self, model: str, usage: TokenUsage, at: datetime
    ) -> InvalidInput | UnknownModel:
        """Why a charge found no cost: the model has no price at ``at``, or it has one but
        the call used web search and that has none (only on this error path)."""
        if usage.web_search_requests:
            entry = await PriceRepository(self.session).in_force(model, at=at)
            configured = self.settings.model_prices.get(model)
            if entry is not None or configured is not None:
                return InvalidInput(
                    f"web_search_requests ({usage.web_search_requests}): model"
                    f" {model!r} has no web search price at {at.isoformat()}; add one"
                    " (`python -m app prices set ... --web-search-per-1k`) before"
                    " charging, nothing was written",
                    field="web_search_requests",
                )
        return UnknownModel(model)

    # ----------------------------------------------------------------- charge

    async def charge(
        self,
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
        web_search_requests: int = 0,
    ) -> ChargeResult:
        """Record one LLM call (BDGT-06) and return the day's decision.

        Every token class is priced at the model's price in force at ``now`` and floored
        on its own; ``batch`` halves every class (DESIGN.md §6b). A call whose prompt
        (input + cache writes + cache reads) passes a band's threshold pays the band's
        rates for all its tokens; ``web_search_requests`` are priced per 1,000 (a model
        without a web search price refuses them with ``InvalidInput``, nothing written).
        ``cache_creation_input_tokens`` counts every cache write and
        ``cache_creation_1h_input_tokens`` the part of them with the 1-hour TTL.
        Idempotent on the session's user and ``request_id`` (DESIGN.md §6c): a repeat,
        from any of the user's sessions, charges nothing and reports the original cost
        with its day's current figures and ``duplicate=True``; another user's call with
        the same id is its own. The first charge settles the call's open reservation and
        counts on the day it was booked on, even after midnight (an expired one's call
        counts on its own day). A ``stop`` moves a ``working``
        session to ``budget_exceeded`` in the same transaction (BDGT-07). The common
        case is a single statement, price lookup included; the first charge of a
        user's day adds the reads that compute the day's budget.
        """
        usage = token_usage(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_creation_input_tokens=cache_creation_input_tokens,
            cache_creation_1h_input_tokens=cache_creation_1h_input_tokens,
            cache_read_input_tokens=cache_read_input_tokens,
            batch=batch,
            web_search_requests=web_search_requests,
        )
        return await self._charge(session_id, request_id, model, usage, now)

    async def charge_usage(
        self,
        *,
        session_id: str,
        request_id: str,
        model: str,
        usage: Any,
        now: datetime | None = None,
    ) -> ChargeResult:
        """``charge`` from the provider's own usage report: the Anthropic SDK's ``Usage``
        object or its dict form, as-is (its ``cache_creation`` breakdown by TTL and
        ``service_tier == "batch"`` included; without a breakdown every cache write is
        priced at the 5-minute rate)."""
        return await self._charge(session_id, request_id, model, parse_usage(usage), now)

    async def _charge(
        self,
        session_id: str,
        request_id: str,
        model: str,
        usage: TokenUsage,
        now: datetime | None,
    ) -> ChargeResult:
        moment, _, call = self._call(session_id, request_id, model, now)
        with translate_errors(session_id=session_id):
            params: dict[str, Any] = {
                **call,
                **usage_params(usage),
                **self._fallback(model, usage.prompt_tokens),
            }
            # Core on the session's connection: no ORM bookkeeping on the hot path.
            connection = await core_connection(self.session)
            row = (await connection.execute(_CHARGE, params)).one()
            if not row.found:
                raise SessionNotFound(session_id)
            if row.cost is None:
                raise await self._unpriced(model, usage, moment)
            if not row.inserted:
                return await self._duplicate(row.clerk_user_id, request_id)
            cost, day = int(row.cost), row.day
            if row.spent is not None:
                await self._thresholds(
                    row.clerk_user_id, session_id, day, row.spent, row.budget, moment
                )
                return ChargeResult(
                    cost, row.spent, row.budget, policy.decide(row.spent, row.budget), False
                )
            # First charge of this user's day: create the row, then charge the session.
            budget = await self._compute_budget(row.clerk_user_id, day, Tier(row.tier))
            spent, budget = await self._add_to_day(row.clerk_user_id, day, budget, cost)
            await self._charge_session(session_id, cost, spent, budget)
            await self._thresholds(row.clerk_user_id, session_id, day, spent, budget, moment)
        return ChargeResult(cost, spent, budget, policy.decide(spent, budget), False)

    # ------------------------------------------------------------ reservation

    async def reserve(
        self,
        *,
        session_id: str,
        request_id: str,
        model: str,
        max_input_tokens: int,
        max_output_tokens: int,
        max_cache_creation_input_tokens: int = 0,
        now: datetime | None = None,
    ) -> Reservation:
        """Book the worst-case cost of a call before it is made (DESIGN.md §6b).

        Granted only if the day's spend plus every open reservation plus this one stays
        within 110 % of the day's budget; otherwise nothing is booked
        (``reserved_microdollars == 0``, ``decision == sleep``). The worst case is
        ``max_input_tokens`` at the input price, ``max_output_tokens`` at the output
        price and ``max_cache_creation_input_tokens`` at the 1-hour cache-write price.
        The charge with the same ``request_id`` settles it at the real cost; unsettled,
        it stops counting ``RESERVATION_TTL_SECONDS`` after ``now``. Reserving the same
        ``request_id`` again (the same user, any session) returns the open reservation;
        once it expired, the retry is a new reservation, granted only if it fits now
        (DESIGN.md §6c). Reserving one that was already charged is ``InvalidInput``.
        """
        moment, day, call = self._call(session_id, request_id, model, now)
        params: dict[str, Any] = {
            **call,
            "p_expires_at": moment + timedelta(seconds=self.settings.reservation_ttl_seconds),
            "p_max_input_tokens": require_int(
                max_input_tokens, "max_input_tokens", maximum=MAX_TOKENS_PER_CALL
            ),
            "p_max_output_tokens": require_int(
                max_output_tokens, "max_output_tokens", maximum=MAX_TOKENS_PER_CALL
            ),
            "p_max_cache_tokens": require_int(
                max_cache_creation_input_tokens,
                "max_cache_creation_input_tokens",
                maximum=MAX_TOKENS_PER_CALL,
            ),
        }
        params.update(self._worst_params(model, params))
        with translate_errors(session_id=session_id):
            connection = await core_connection(self.session)
            row = (await connection.execute(_RESERVE, params)).one()
            if row.found and row.worst is not None and not row.has_day:
                # The first reservation of the user's day makes the day's row, then books.
                await self.daily_budget(row.clerk_user_id, day, tier=Tier(row.tier))
                row = (await connection.execute(_RESERVE, params)).one()
            if row.existing is not None and not row.existing_open and not row.charged:
                # Reserved before, but it expired: the retry is a new reservation, granted
                # only if it fits now. The old one goes first, off its own day.
                await connection.execute(
                    _RELEASE_EXPIRED,
                    {"p_user": row.clerk_user_id, "p_request_id": request_id, "p_at": moment},
                )
                row = (await connection.execute(_RESERVE, params)).one()
        if not row.found:
            raise SessionNotFound(session_id)
        if row.worst is None:
            raise UnknownModel(model)
        if row.charged:
            raise InvalidInput(
                f"request_id {request_id!r} was already charged: a reservation books a call"
                " before it is made",
                field="request_id",
            )
        spent, budget, reserved = int(row.spent), int(row.budget), int(row.reserved)
        if row.booked:
            return Reservation(True, int(row.worst), policy.decide(spent + reserved, budget))
        if row.existing_open:
            # Reserved before under this request_id: still open, still counted.
            return Reservation(True, int(row.existing), policy.decide(spent + reserved, budget))
        return Reservation(False, 0, Decision.SLEEP)

    async def release_reservations(self, session_ids: Sequence[str]) -> int:
        """Release every open reservation of ``session_ids`` (they are deleted, purged or
        completed, DESIGN.md §6c): each goes, and its amount leaves its day's reserved
        total at once, in the caller's transaction. Returns the microdollars released.

        Call it before the transaction changes the session row: it takes reservation
        rows, then day rows, then the session rows, the order a charge takes them in.
        A reservation of the session booked while this runs is caught by the second
        pass; when one is still booking on a day the first pass did not touch, the
        lock cycle can end in a deadlock, and PostgreSQL aborts one side
        (``TransactionConflict``: nothing changed, run it again)."""
        ids = sorted({stored_id(sid, "session_id") for sid in session_ids})
        if not ids:
            return 0
        with translate_errors():
            connection = await core_connection(self.session)
            params = {"p_session_ids": ids}
            released = sum(int(n) for n in (await connection.scalars(_RELEASE_SESSIONS, params)))
            # Then the sessions' rows, locked: a reservation booked in between (its
            # foreign key check shares the row) is caught by the second pass, and none can
            # be booked after it until the caller's transaction ends. Reservation and day
            # rows before the session's, the order a charge takes them in.
            await connection.execute(
                select(tables.agent_sessions.c.id)
                .where(tables.agent_sessions.c.id.in_(ids))
                .order_by(tables.agent_sessions.c.id)
                .with_for_update()
            )
            released += sum(int(n) for n in (await connection.scalars(_RELEASE_SESSIONS, params)))
        return released

    async def _thresholds(
        self, user: str, session_id: str, day: date, spent: int, budget: int, at: datetime
    ) -> None:
        # The outbox, in the charge's transaction: 90 / 100 / 110 % of the day, once per
        # user-day and threshold (a unique key; no statement below 90 %).
        events = threshold_events(
            clerk_user_id=user, session_id=session_id, day=day, spent=spent, budget=budget, at=at
        )
        if events:
            await EventRepository(self.session).add(events)

    async def _add_to_day(self, user: str, day: date, budget: int, cost: int) -> tuple[int, int]:
        # Concurrent first charges race here: one inserts, the others add to its row.
        stmt = (
            insert(tables.budget_days)
            .values(
                clerk_user_id=user, day=day, budget_microdollars=budget, spent_microdollars=cost
            )
            .on_conflict_do_update(
                index_elements=[tables.budget_days.c.clerk_user_id, tables.budget_days.c.day],
                set_={
                    "spent_microdollars": saturating_add(
                        tables.budget_days.c.spent_microdollars, cost
                    )
                },
            )
            .returning(
                tables.budget_days.c.spent_microdollars, tables.budget_days.c.budget_microdollars
            )
        )
        spent, stored_budget = (await self.session.execute(stmt)).one()
        return int(spent), int(stored_budget)

    async def _charge_session(self, session_id: str, cost: int, spent: int, budget: int) -> None:
        stop = tables.agent_sessions.c.status == SessionStatus.WORKING.value
        stopping = policy.decide(spent, budget) is Decision.STOP
        values: dict[str, object] = {
            "cumulative_cost_microdollars": saturating_add(
                tables.agent_sessions.c.cumulative_cost_microdollars, cost
            )
        }
        if stopping:
            values["status"] = case(
                (stop, SessionStatus.BUDGET_EXCEEDED.value), else_=tables.agent_sessions.c.status
            )
            values["version"] = tables.agent_sessions.c.version + case((stop, 1), else_=0)
        await self.session.execute(
            update(tables.agent_sessions)
            .where(tables.agent_sessions.c.id == session_id)
            .values(**values),
            execution_options={"synchronize_session": False},
        )

    async def _duplicate(self, user: str, request_id: str) -> ChargeResult:
        # A new statement, so a concurrent first writer's committed row is visible.
        ev = tables.agent_cost_events.c
        original = (
            await self.session.execute(
                select(ev.cost_microdollars, ev.budget_day).where(
                    ev.clerk_user_id == user, ev.request_id == request_id
                )
            )
        ).one()
        spent, budget = await self._day_figures(user, original.budget_day)
        return ChargeResult(
            int(original.cost_microdollars), spent, budget, policy.decide(spent, budget), True
        )

    async def _day_figures(self, user: str, day: date) -> tuple[int, int]:
        row = (
            await self.session.execute(
                select(
                    tables.budget_days.c.spent_microdollars,
                    tables.budget_days.c.budget_microdollars,
                ).where(tables.budget_days.c.clerk_user_id == user, tables.budget_days.c.day == day)
            )
        ).one_or_none()
        if row is None:  # only if the day's row was deleted by hand
            return 0, await self.daily_budget(user, day)
        return int(row.spent_microdollars), int(row.budget_microdollars)

    # ------------------------------------------------------------ daily budget

    async def _compute_budget(self, user: str, day: date, fallback_tier: Tier | None) -> int:
        """BDGT-01 for ``user`` on ``day``, from user_settings (or the session's tier)."""
        settings_row = (
            await self.session.execute(
                select(
                    tables.user_settings.c.tier,
                    tables.user_settings.c.subscription_renewal_date,
                    tables.user_settings.c.budget_override_microdollars,
                ).where(tables.user_settings.c.clerk_user_id == user)
            )
        ).one_or_none()
        if settings_row is None:
            # No billing row: the session's tier over a 30-day period, never zero.
            tier = fallback_tier or await self._latest_session_tier(user)
            return policy.daily_budget(
                self.settings.allowance_for(tier), 0, policy.DEFAULT_PERIOD_DAYS
            )
        tier = Tier(settings_row.tier)
        allowance = settings_row.budget_override_microdollars
        if allowance is None:
            allowance = self.settings.allowance_for(tier)
        renewal = settings_row.subscription_renewal_date
        if renewal is None:
            # No period to spread over: 30 days of the allowance; a top-up raised only
            # the day it was bought on (DESIGN.md §6b).
            return policy.daily_budget(allowance, 0, policy.DEFAULT_PERIOD_DAYS)
        start = policy.period_start(day, renewal)
        # Spend and credits of the period before ``day``: a credit bought on ``day`` was
        # added to the day's row by the top-up itself, which creates the row first.
        spent_before = (
            select(func.coalesce(func.sum(tables.budget_days.c.spent_microdollars), 0))
            .where(
                tables.budget_days.c.clerk_user_id == user,
                tables.budget_days.c.day >= start,
                tables.budget_days.c.day < day,
            )
            .scalar_subquery()
        )
        credits = (
            select(func.coalesce(func.sum(tables.budget_credits.c.amount_microdollars), 0))
            .where(
                tables.budget_credits.c.clerk_user_id == user,
                tables.budget_credits.c.budget_day >= start,
                tables.budget_credits.c.budget_day < day,
            )
            .scalar_subquery()
        )
        spent, bought = (await self.session.execute(select(spent_before, credits))).one()
        budget = policy.daily_budget(
            allowance + int(bought), int(spent), policy.days_until_renewal(day, renewal)
        )
        return min(budget, policy.MAX_MICRODOLLARS)

    async def _latest_session_tier(self, user: str) -> Tier:
        tier = await self.session.scalar(
            select(tables.agent_sessions.c.tier)
            .where(tables.agent_sessions.c.clerk_user_id == user)
            .order_by(tables.agent_sessions.c.started_at.desc())
            .limit(1)
        )
        if tier is None:
            raise InvalidInput(
                f"user {user!r} has neither user_settings nor a session: no tier to budget by",
                field="clerk_user_id",
            )
        return Tier(tier)

    async def daily_budget(
        self, clerk_user_id: str, day: date, *, tier: Tier | str | None = None
    ) -> int:
        """The user's budget for ``day``, creating the day's row if it is missing.

        The amount is fixed when the row is created (only a top-up raises it); later
        changes to the settings apply from the next day on.
        """
        require_text(clerk_user_id, "clerk_user_id")
        if not isinstance(day, date) or isinstance(day, datetime):
            raise InvalidInput(f"day must be a date, not {type(day).__name__}", field="day")
        fallback = None if tier is None else parse_enum(Tier, tier, "tier")
        existing = await self.session.scalar(
            select(tables.budget_days.c.budget_microdollars).where(
                tables.budget_days.c.clerk_user_id == clerk_user_id, tables.budget_days.c.day == day
            )
        )
        if existing is not None:
            return int(existing)
        budget = await self._compute_budget(clerk_user_id, day, fallback)
        stmt = (
            insert(tables.budget_days)
            .values(clerk_user_id=clerk_user_id, day=day, budget_microdollars=budget)
            .on_conflict_do_update(
                index_elements=[tables.budget_days.c.clerk_user_id, tables.budget_days.c.day],
                # A no-op update, so RETURNING yields the row a concurrent caller made.
                set_={"budget_microdollars": tables.budget_days.c.budget_microdollars},
            )
            .returning(tables.budget_days.c.budget_microdollars)
        )
        return int(await self.session.scalar(stmt) or 0)

    async def daily_budgets(self, tiers: Mapping[str, Tier | str], day: date) -> dict[str, int]:
        """``daily_budget`` for many users at once: one SELECT for the rows that exist,
        then the rows that are missing are created one by one."""
        users = sorted(require_text(u, "clerk_user_id") for u in tiers)
        rows = await self.session.execute(
            select(
                tables.budget_days.c.clerk_user_id, tables.budget_days.c.budget_microdollars
            ).where(tables.budget_days.c.clerk_user_id.in_(users), tables.budget_days.c.day == day)
        )
        found = {user: int(budget) for user, budget in rows}
        for user in users:
            if user not in found:
                found[user] = await self.daily_budget(user, day, tier=tiers[user])
        return {user: int(found[user]) for user in users}

    async def top_up(
        self,
        clerk_user_id: str,
        amount_microdollars: int,
        *,
        now: datetime,
        idempotency_key: str | None = None,
    ) -> tuple[int, int] | None:
        """Book a top-up bought at ``now``; returns the day's ``(spent, budget)`` after it,
        or None for a repeat of the user's ``idempotency_key`` (nothing written).

        The day's row is made first if missing, computed without the top-up, and then
        raised by the whole amount, so the money is never counted twice; the credit also
        raises the period's allowance for the days after (DESIGN.md §6b). Needs the
        user's ``user_settings`` row, else ``InvalidInput``; so is a known key with
        another amount (DESIGN.md §6c).
        """
        require_text(clerk_user_id, "clerk_user_id")
        amount = require_int(amount_microdollars, "amount_microdollars", minimum=1)
        moment = require_aware(now, "now")
        key = None if idempotency_key is None else require_text(idempotency_key, "idempotency_key")
        day = policy.budget_day(moment)
        with translate_errors():
            # Locking the subscriber serialises top-ups of one user with each other.
            found = await self.session.scalar(
                select(tables.user_settings.c.id)
                .where(tables.user_settings.c.clerk_user_id == clerk_user_id)
                .with_for_update()
            )
            if found is None:
                raise InvalidInput(
                    f"user {clerk_user_id!r} has no user_settings row: nothing to top up",
                    field="clerk_user_id",
                )
            if key is not None:
                # Under the subscriber's lock: a concurrent repeat waits, then sees this.
                earlier = await self.session.scalar(
                    select(tables.budget_credits.c.amount_microdollars).where(
                        tables.budget_credits.c.clerk_user_id == clerk_user_id,
                        tables.budget_credits.c.idempotency_key == key,
                    )
                )
                if earlier is not None:
                    if int(earlier) != amount:
                        raise InvalidInput(
                            f"idempotency_key {key!r} of user {clerk_user_id!r} was used for"
                            f" a top-up of {int(earlier)} µ$, not {amount}",
                            field="idempotency_key",
                        )
                    return None
            await self.daily_budget(clerk_user_id, day)
            await self.session.execute(
                insert(tables.budget_credits).values(
                    clerk_user_id=clerk_user_id,
                    amount_microdollars=amount,
                    budget_day=day,
                    bought_at=moment,
                    idempotency_key=key,
                )
            )
            row = (
                await self.session.execute(
                    update(tables.budget_days)
                    .where(
                        tables.budget_days.c.clerk_user_id == clerk_user_id,
                        tables.budget_days.c.day == day,
                    )
                    .values(
                        budget_microdollars=saturating_add(
                            tables.budget_days.c.budget_microdollars, amount
                        )
                    )
                    .returning(
                        tables.budget_days.c.spent_microdollars,
                        tables.budget_days.c.budget_microdollars,
                    )
                )
            ).one()
        return int(row.spent_microdollars), int(row.budget_microdollars)

    async def last_charge_day(self, session_id: str) -> date | None:
        """The latest budget day the session was charged on (None before its first charge):
        the day its last decision belongs to."""
        require_text(session_id, "session_id")
        found: date | None = await self.session.scalar(
            select(func.max(tables.agent_cost_events.c.budget_day)).where(
                tables.agent_cost_events.c.session_id == session_id
            )
        )
        return found

    async def day_spend(
        self, day: date, *, top: int = 10
    ) -> tuple[int, list[tuple[str, int, int]]]:
        """How many users have a row for ``day``, and the ``top`` biggest spenders on it
        as (clerk_user_id, spent, budget), biggest first."""
        require_int(top, "top", minimum=0, maximum=10_000)
        users = await self.session.scalar(
            select(func.count()).where(tables.budget_days.c.day == day)
        )
        rows = await self.session.execute(
            select(
                tables.budget_days.c.clerk_user_id,
                tables.budget_days.c.spent_microdollars,
                tables.budget_days.c.budget_microdollars,
            )
            .where(tables.budget_days.c.day == day)
            .order_by(
                tables.budget_days.c.spent_microdollars.desc(), tables.budget_days.c.clerk_user_id
            )
            .limit(top)
        )
        return int(users or 0), [(user, int(spent), int(budget)) for user, spent, budget in rows]

    async def spent(self, clerk_user_id: str, day: date) -> int:
        """What the user has spent on ``day`` so far (0 when there is no row)."""
        require_text(clerk_user_id, "clerk_user_id")
        value = await self.session.scalar(
            select(tables.budget_days.c.spent_microdollars).where(
                tables.budget_days.c.clerk_user_id == clerk_user_id, tables.budget_days.c.day == day
            )
        )
        return int(value or 0)
