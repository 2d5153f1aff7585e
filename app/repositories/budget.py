"""BudgetRepository: the idempotent cost ledger and one budget row per user per UTC day."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Final, cast

from sqlalchemy import (
    BigInteger,
    Date,
    Integer,
    Select,
    String,
    Table,
    and_,
    bindparam,
    case,
    exists,
    func,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.budget import policy
from app.budget.pricing import MAX_TOKENS_PER_CALL, cost_microdollars
from app.db.models import AgentCostEvent, AgentSession, BudgetCredit, BudgetDay, UserSettings
from app.domain import Decision, InvalidInput, SessionNotFound, SessionStatus, Tier
from app.repositories.budget_rules import saturating_add, stops
from app.repositories.errors import translate_errors, translated
from app.repositories.events import EventRepository, threshold_events
from app.settings import Settings
from app.validation import (
    MAX_MODEL_LENGTH,
    parse_enum,
    require_aware,
    require_int,
    require_text,
)

_COST_EVENTS = cast(Table, AgentCostEvent.__table__)
_BUDGET_DAYS = cast(Table, BudgetDay.__table__)
_SESSIONS = cast(Table, AgentSession.__table__)
_ev = AgentCostEvent.__table__.c
_day = BudgetDay.__table__.c
_ses = AgentSession.__table__.c
_us = UserSettings.__table__.c
_credit = BudgetCredit.__table__.c


@dataclass(frozen=True, slots=True)
class ChargeResult:
    """Outcome of a charge: its cost, the day's spend and budget after it, and the decision."""

    cost_microdollars: int
    spent_microdollars: int
    budget_microdollars: int
    decision: Decision
    duplicate: bool


def _build_charge_statement() -> Select[Any]:
    """The common charge as one statement of CTEs, built once and reused with parameters.

    1. ``event``: the ledger row, once per request_id (``ON CONFLICT DO NOTHING``);
    2. ``spend``: the day's spend, when the day's row exists (locking it first);
    3. ``session_update``: the session's cumulative cost, and ``budget_exceeded``
       above 110 % of the day's budget (BDGT-07).
    """
    # Parameter names must not match column names: UPDATE would read them as SET values.
    cost = bindparam("p_cost", type_=BigInteger)
    day = bindparam("p_day", type_=Date)
    owner = (
        select(_ses.id, _ses.clerk_user_id, _ses.tier)
        .where(_ses.id == bindparam("p_session_id", type_=String))
        .cte("owner")
    )
    event = (
        insert(_COST_EVENTS)
        .from_select(
            [
                "request_id",
                "session_id",
                "clerk_user_id",
                "model",
                "input_tokens",
                "output_tokens",
                "cost_microdollars",
                "budget_day",
            ],
            select(
                bindparam("p_request_id", type_=String),
                owner.c.id,
                owner.c.clerk_user_id,
                bindparam("p_model", type_=String),
                bindparam("p_input_tokens", type_=Integer),
                bindparam("p_output_tokens", type_=Integer),
                cost,
                day,
            ),
        )
        .on_conflict_do_nothing(index_elements=[_ev.request_id])
        .returning(_ev.clerk_user_id)
        .cte("event")
    )
    spend = (
        update(_BUDGET_DAYS)
        .where(_day.clerk_user_id == event.c.clerk_user_id, _day.day == day)
        .values(spent_microdollars=_day.spent_microdollars + cost)
        .returning(_day.spent_microdollars, _day.budget_microdollars)
        .cte("spend")
    )
    spent = select(spend.c.spent_microdollars).scalar_subquery()
    budget = select(spend.c.budget_microdollars).scalar_subquery()
    stop = and_(_ses.status == SessionStatus.WORKING.value, stops(spent, budget))
    session_update = (
        update(_SESSIONS)
        .where(_ses.id == owner.c.id, exists(select(spend.c.spent_microdollars)))
        .values(
            cumulative_cost_microdollars=_ses.cumulative_cost_microdollars + cost,
            status=case((stop, SessionStatus.BUDGET_EXCEEDED.value), else_=_ses.status),
            version=_ses.version + case((stop, 1), else_=0),
        )
        .returning(_ses.id)
        .cte("session_update")
    )
    return select(
        exists(select(owner.c.id)).label("found"),
        exists(select(event.c.clerk_user_id)).label("inserted"),
        select(owner.c.clerk_user_id).scalar_subquery().label("clerk_user_id"),
        select(owner.c.tier).scalar_subquery().label("tier"),
        spent.label("spent"),
        budget.label("budget"),
        # Referencing the CTE is what makes SQLAlchemy render it; PostgreSQL runs
        # every data-modifying CTE to completion whether or not it is read.
        exists(select(session_update.c.id)).label("session_updated"),
    )


_CHARGE: Final = _build_charge_statement()


@translated
class BudgetRepository:
    """Charges and daily budgets. Never commits: the caller owns the transaction."""

    def __init__(self, session: AsyncSession, settings: Settings) -> None:
        self.session = session
        self.settings = settings

    # ----------------------------------------------------------------- charge

    async def charge(
        self,
        *,
        session_id: str,
        request_id: str,
        model: str,
        input_tokens: int,
        output_tokens: int,
        now: datetime | None = None,
    ) -> ChargeResult:
        """Record one LLM call (BDGT-06) and return the day's decision.

        Idempotent on ``request_id``: a repeat charges nothing and reports the original
        cost with the day's current figures and ``duplicate=True``. A ``stop`` moves a
        ``working`` session to ``budget_exceeded`` in the same transaction (BDGT-07).
        The common case is a single statement; the first charge of a user's day adds
        the reads that compute the day's budget.
        """
        require_text(session_id, "session_id")
        require_text(request_id, "request_id")
        require_text(model, "model", max_length=MAX_MODEL_LENGTH)
        require_int(input_tokens, "input_tokens", maximum=MAX_TOKENS_PER_CALL)
        require_int(output_tokens, "output_tokens", maximum=MAX_TOKENS_PER_CALL)
        moment = datetime.now(UTC) if now is None else require_aware(now, "now")
        cost = cost_microdollars(
            model, input_tokens, output_tokens, prices=self.settings.model_prices
        )
        day = policy.budget_day(moment)

        with translate_errors(session_id=session_id):
            params = {
                "p_session_id": session_id,
                "p_request_id": request_id,
                "p_model": model,
                "p_input_tokens": input_tokens,
                "p_output_tokens": output_tokens,
                "p_cost": cost,
                "p_day": day,
            }
            # Core on the session's connection: no ORM bookkeeping on the hot path.
            await self.session.flush()
            connection = await self.session.connection()
            row = (await connection.execute(_CHARGE, params)).one()
            if not row.found:
                raise SessionNotFound(session_id)
            if not row.inserted:
                return await self._duplicate(request_id, session_id, day)
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
            insert(BudgetDay)
            .values(
                clerk_user_id=user, day=day, budget_microdollars=budget, spent_microdollars=cost
            )
            .on_conflict_do_update(
                index_elements=[_day.clerk_user_id, _day.day],
                set_={"spent_microdollars": _day.spent_microdollars + cost},
            )
            .returning(_day.spent_microdollars, _day.budget_microdollars)
        )
        spent, stored_budget = (await self.session.execute(stmt)).one()
        return int(spent), int(stored_budget)

    async def _charge_session(self, session_id: str, cost: int, spent: int, budget: int) -> None:
        stop = _ses.status == SessionStatus.WORKING.value
        stopping = policy.decide(spent, budget) is Decision.STOP
        values: dict[str, object] = {
            "cumulative_cost_microdollars": _ses.cumulative_cost_microdollars + cost
        }
        if stopping:
            values["status"] = case((stop, SessionStatus.BUDGET_EXCEEDED.value), else_=_ses.status)
            values["version"] = _ses.version + case((stop, 1), else_=0)
        await self.session.execute(
            update(AgentSession).where(_ses.id == session_id).values(**values),
            execution_options={"synchronize_session": False},
        )

    async def _duplicate(self, request_id: str, session_id: str, day: date) -> ChargeResult:
        # A new statement, so a concurrent first writer's committed row is visible.
        original = (
            await self.session.execute(
                select(_ev.cost_microdollars, _ev.clerk_user_id, _ev.budget_day).where(
                    _ev.request_id == request_id
                )
            )
        ).one()
        spent, budget = await self._day_figures(original.clerk_user_id, original.budget_day)
        return ChargeResult(
            int(original.cost_microdollars), spent, budget, policy.decide(spent, budget), True
        )

    async def _day_figures(self, user: str, day: date) -> tuple[int, int]:
        row = (
            await self.session.execute(
                select(_day.spent_microdollars, _day.budget_microdollars).where(
                    _day.clerk_user_id == user, _day.day == day
                )
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
                    _us.tier, _us.subscription_renewal_date, _us.budget_override_microdollars
                ).where(_us.clerk_user_id == user)
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
            select(func.coalesce(func.sum(_day.spent_microdollars), 0))
            .where(_day.clerk_user_id == user, _day.day >= start, _day.day < day)
            .scalar_subquery()
        )
        credits = (
            select(func.coalesce(func.sum(_credit.amount_microdollars), 0))
            .where(
                _credit.clerk_user_id == user,
                _credit.budget_day >= start,
                _credit.budget_day < day,
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
            select(_ses.tier)
            .where(_ses.clerk_user_id == user)
            .order_by(_ses.started_at.desc())
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
            select(_day.budget_microdollars).where(
                _day.clerk_user_id == clerk_user_id, _day.day == day
            )
        )
        if existing is not None:
            return int(existing)
        budget = await self._compute_budget(clerk_user_id, day, fallback)
        stmt = (
            insert(BudgetDay)
            .values(clerk_user_id=clerk_user_id, day=day, budget_microdollars=budget)
            .on_conflict_do_update(
                index_elements=[_day.clerk_user_id, _day.day],
                # A no-op update, so RETURNING yields the row a concurrent caller made.
                set_={"budget_microdollars": _day.budget_microdollars},
            )
            .returning(_day.budget_microdollars)
        )
        return int(await self.session.scalar(stmt) or 0)

    async def daily_budgets(self, tiers: Mapping[str, Tier | str], day: date) -> dict[str, int]:
        """``daily_budget`` for many users at once: one SELECT for the rows that exist,
        then the rows that are missing are created one by one."""
        users = sorted(require_text(u, "clerk_user_id") for u in tiers)
        rows = await self.session.execute(
            select(_day.clerk_user_id, _day.budget_microdollars).where(
                _day.clerk_user_id.in_(users), _day.day == day
            )
        )
        found = {user: int(budget) for user, budget in rows}
        for user in users:
            if user not in found:
                found[user] = await self.daily_budget(user, day, tier=tiers[user])
        return {user: int(found[user]) for user in users}

    async def top_up(
        self, clerk_user_id: str, amount_microdollars: int, *, now: datetime
    ) -> tuple[int, int]:
        """Book a top-up bought at ``now``; returns the day's ``(spent, budget)`` after it.

        The day's row is made first if missing, computed without the top-up, and then
        raised by the whole amount, so the money is never counted twice; the credit also
        raises the period's allowance for the days after (DESIGN.md §6b). Needs the
        user's ``user_settings`` row, else ``InvalidInput``.
        """
        require_text(clerk_user_id, "clerk_user_id")
        amount = require_int(amount_microdollars, "amount_microdollars", minimum=1)
        moment = require_aware(now, "now")
        day = policy.budget_day(moment)
        with translate_errors():
            # Locking the subscriber serialises top-ups of one user with each other.
            found = await self.session.scalar(
                select(_us.id).where(_us.clerk_user_id == clerk_user_id).with_for_update()
            )
            if found is None:
                raise InvalidInput(
                    f"user {clerk_user_id!r} has no user_settings row: nothing to top up",
                    field="clerk_user_id",
                )
            await self.daily_budget(clerk_user_id, day)
            await self.session.execute(
                insert(BudgetCredit).values(
                    clerk_user_id=clerk_user_id,
                    amount_microdollars=amount,
                    budget_day=day,
                    bought_at=moment,
                )
            )
            row = (
                await self.session.execute(
                    update(_BUDGET_DAYS)
                    .where(_day.clerk_user_id == clerk_user_id, _day.day == day)
                    .values(budget_microdollars=saturating_add(_day.budget_microdollars, amount))
                    .returning(_day.spent_microdollars, _day.budget_microdollars)
                )
            ).one()
        return int(row.spent_microdollars), int(row.budget_microdollars)

    async def last_charge_day(self, session_id: str) -> date | None:
        """The latest budget day the session was charged on (None before its first charge):
        the day its last decision belongs to."""
        require_text(session_id, "session_id")
        found: date | None = await self.session.scalar(
            select(func.max(_ev.budget_day)).where(_ev.session_id == session_id)
        )
        return found

    async def day_spend(
        self, day: date, *, top: int = 10
    ) -> tuple[int, list[tuple[str, int, int]]]:
        """How many users have a row for ``day``, and the ``top`` biggest spenders on it
        as (clerk_user_id, spent, budget), biggest first."""
        require_int(top, "top", minimum=0, maximum=10_000)
        users = await self.session.scalar(select(func.count()).where(_day.day == day))
        rows = await self.session.execute(
            select(_day.clerk_user_id, _day.spent_microdollars, _day.budget_microdollars)
            .where(_day.day == day)
            .order_by(_day.spent_microdollars.desc(), _day.clerk_user_id)
            .limit(top)
        )
        return int(users or 0), [(user, int(spent), int(budget)) for user, spent, budget in rows]

    async def spent(self, clerk_user_id: str, day: date) -> int:
        """What the user has spent on ``day`` so far (0 when there is no row)."""
        require_text(clerk_user_id, "clerk_user_id")
        value = await self.session.scalar(
            select(_day.spent_microdollars).where(
                _day.clerk_user_id == clerk_user_id, _day.day == day
            )
        )
        return int(value or 0)
