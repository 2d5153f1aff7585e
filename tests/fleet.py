"""A fleet of sessions in every status, with checkpoints, ledger rows and Redis keys, and
a census of what each table holds for them (the retention tests, in process and CLI)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select, text

from app.db.models import AgentCheckpoint, AgentCostEvent, AgentSession, BudgetDay
from app.lifecycle import Runtime, charge, complete_session, start_session
from app.repositories import SessionRepository
from tests.integration.helpers import SONNET, later

# Every status, and completed sessions on both sides of the 30-day line.
FLEET = {
    "working": "working",
    "sleeping": "sleeping",
    "stopped": "budget_exceeded",
    "done-recent": "completed",
    "done-29d": "completed",
    "done-31d": "completed",
    "done-400d": "completed",
}
AGE_DAYS = {"done-29d": 29, "done-31d": 31, "done-400d": 400}
OLD = ["done-31d", "done-400d"]


async def make_fleet(rt: Runtime, fleet: dict[str, str], ages: dict[str, int]) -> None:
    """Each session: 3 checkpoints, 2 charges and a Redis key, then its status and age."""
    for sid, status in fleet.items():
        await start_session(rt, session_id=sid, job_id="j", clerk_user_id="u-1", tier="partner")
        for iteration in range(3):
            async with rt.session_factory.begin() as s:
                await rt.checkpoints(s).save(
                    AgentCheckpoint(
                        session_id=sid,
                        job_id="j",
                        message_history=[{"role": "user", "n": n} for n in range(iteration + 1)],
                        iteration_number=iteration,
                    )
                )
        for n in range(2):
            await charge(
                rt, session_id=sid, request_id=f"{sid}-r{n}", model=SONNET,
                input_tokens=10, output_tokens=1,
            )  # fmt: skip
        async with rt.session_factory.begin() as s:
            if status == "sleeping":
                await SessionRepository(s).transition(
                    sid, status, expected="working", wake_at=later()
                )
            elif status == "budget_exceeded":
                await SessionRepository(s).transition(sid, status, expected="working")
        if status == "completed":
            await complete_session(rt, sid)
        # A key for every session, finished ones included (a late write put it back).
        await rt.store.put(sid, {"session_id": sid, "version": 99})
    async with rt.session_factory.begin() as s:
        for sid, days in ages.items():
            await s.execute(
                text(
                    "UPDATE agent_sessions SET completed_at = now() - make_interval(days => :d)"
                    " WHERE id = :id"
                ),
                {"d": days, "id": sid},
            )


async def census(rt: Runtime, ids: Iterable[str] = FLEET) -> dict[str, Any]:
    """Rows per session in every table, and which of these sessions' keys exist."""
    async with rt.session_factory() as s:
        sessions = dict((await s.execute(select(AgentSession.id, AgentSession.status))).all())
        checkpoints = dict(
            (
                await s.execute(
                    select(AgentCheckpoint.session_id, func.count()).group_by(
                        AgentCheckpoint.session_id
                    )
                )
            ).all()
        )
        ledger = dict(
            (
                await s.execute(
                    select(AgentCostEvent.session_id, func.count()).group_by(
                        AgentCostEvent.session_id
                    )
                )
            ).all()
        )
        days = (
            await s.execute(select(BudgetDay.clerk_user_id, BudgetDay.spent_microdollars))
        ).all()
    keys = {sid for sid in ids if await rt.store.get(sid, refresh=False) is not None}
    return {
        "sessions": sessions,
        "checkpoints": checkpoints,
        "ledger": ledger,
        "keys": keys,
        "budget_days": sorted(days),
    }
