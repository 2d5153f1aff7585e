"""The demo's audit of its own run, read straight from PostgreSQL: every sleep restored
what it saved and woke on time, the ledger, the budget days and the sessions' costs
agree, no user passed 110 %, every session completed. Also its test hook and clean-up."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from datetime import date, timedelta

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.budget import policy
from app.db import tables
from app.db.models import AgentCheckpoint, AgentCostEvent, AgentSession, BudgetDay, UserSettings
from app.demo.fleet import Fleet
from app.domain import SessionStatus, Tier
from app.lifecycle import Runtime
from app.repositories.budget_rules import stops


async def verify(factory: async_sessionmaker[AsyncSession], fleet: Fleet) -> list[str]:
    """The demo's promises, checked against PostgreSQL; returns the breaches."""
    breaches: list[str] = []
    for rec in fleet.sleeps:
        if rec.restored != rec.history:
            breaches.append(
                f"session {rec.session_id}: restored history differs from the history at sleep"
                f" (slept {rec.slept_at:%Y-%m-%d %H:%M})"
            )
        expected = policy.next_budget_day_start(rec.slept_at)
        if rec.wake_at != expected:
            breaches.append(
                f"session {rec.session_id}: wake_at {rec.wake_at} is not the first midnight"
                f" after it slept ({expected})"
            )
        if rec.woke_at is None or not expected <= rec.woke_at < expected + timedelta(days=1):
            breaches.append(
                f"session {rec.session_id}: woke at {rec.woke_at}, not on {expected:%Y-%m-%d}"
            )
    breaches += [f"duplicate charge counted twice: {b}" for b in fleet.duplicate_breaches]
    users = sorted(set(fleet.users.values()))
    ids = sorted(fleet.users)
    async with factory() as s:
        ledger_rows, ledger = (
            await s.execute(
                select(
                    func.count(), func.coalesce(func.sum(AgentCostEvent.cost_microdollars), 0)
                ).where(AgentCostEvent.session_id.in_(ids))
            )
        ).one()
        days_spent = await s.scalar(
            select(func.coalesce(func.sum(BudgetDay.spent_microdollars), 0)).where(
                BudgetDay.clerk_user_id.in_(users)
            )
        )
        cumulative = await s.scalar(
            select(func.coalesce(func.sum(AgentSession.cumulative_cost_microdollars), 0)).where(
                AgentSession.id.in_(ids)
            )
        )
        over = (
            await s.execute(
                select(
                    BudgetDay.clerk_user_id,
                    BudgetDay.day,
                    BudgetDay.spent_microdollars,
                    BudgetDay.budget_microdollars,
                ).where(
                    BudgetDay.clerk_user_id.in_(users),
                    stops(
                        tables.budget_days.c.spent_microdollars,
                        tables.budget_days.c.budget_microdollars,
                    ),
                )
            )
        ).all()
        unfinished = list(
            await s.scalars(
                select(AgentSession.id).where(
                    AgentSession.id.in_(ids), AgentSession.status != SessionStatus.COMPLETED
                )
            )
        )
    if ledger_rows != fleet.fresh_charges or ledger != fleet.fresh_cost:
        breaches.append(
            f"request ids: {fleet.fresh_charges} distinct calls worth {fleet.fresh_cost} µ$"
            f" but the ledger holds {ledger_rows} rows worth {ledger} µ$"
        )
    if not ledger == days_spent == cumulative:
        breaches.append(
            f"money: ledger {ledger} µ$, budget_days {days_spent} µ$,"
            f" sessions' cumulative cost {cumulative} µ$ differ"
        )
    for user, day, spent, budget in over:
        breaches.append(f"user {user} spent {spent} µ$ on {day}, above 110 % of {budget} µ$")
    breaches += [f"session {sid}: did not complete" for sid in unfinished]
    return breaches


async def inject_history_fault(factory: async_sessionmaker[AsyncSession], fleet: Fleet) -> None:
    """Test hook: tamper with the first sleeper's stored history while it sleeps."""
    await fleet.first_sleep.wait()
    victim = fleet.sleeps[0].session_id
    async with factory.begin() as s:
        await s.execute(
            update(AgentCheckpoint)
            .where(
                AgentCheckpoint.session_id == victim,
                AgentCheckpoint.iteration_number
                == select(func.max(AgentCheckpoint.iteration_number))
                .where(AgentCheckpoint.session_id == victim)
                .scalar_subquery(),
            )
            .values(message_history=AgentCheckpoint.message_history.op("||")(
                text("""'[{"role": "user", "content": "tampered"}]'::jsonb""")))
        )  # fmt: skip


async def cleanup(factory: async_sessionmaker[AsyncSession], rt: Runtime, fleet: Fleet) -> None:
    ids = sorted(fleet.users)
    users = sorted(set(fleet.users.values()))
    async with factory.begin() as s:
        await s.execute(delete(AgentCostEvent).where(AgentCostEvent.session_id.in_(ids)))
        await s.execute(delete(AgentSession).where(AgentSession.id.in_(ids)))
        await s.execute(delete(BudgetDay).where(BudgetDay.clerk_user_id.in_(users)))
        await s.execute(delete(UserSettings).where(UserSettings.clerk_user_id.in_(users)))
    for sid in ids:
        with contextlib.suppress(Exception):
            await rt.store.delete(sid)


async def spend_by_day_and_tier(
    factory: async_sessionmaker[AsyncSession], fleet: Fleet
) -> dict[tuple[date, Tier], tuple[int, int]]:
    users = sorted(set(fleet.users.values()))
    tier_of_user = {fleet.users[sid]: fleet.tiers[sid] for sid in fleet.users}
    out: dict[tuple[date, Tier], tuple[int, int]] = defaultdict(lambda: (0, 0))
    async with factory() as s:
        rows = await s.execute(select(BudgetDay).where(BudgetDay.clerk_user_id.in_(users)))
        for (row,) in rows:
            key = (row.day, tier_of_user[row.clerk_user_id])
            spent, budget = out[key]
            out[key] = (spent + row.spent_microdollars, budget + row.budget_microdollars)
    return out
