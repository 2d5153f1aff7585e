"""Builders for the budget-edge tests: clocks, subscribers, charges, checkpoints."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import date, datetime

from sqlalchemy import select

from app.db.models import AgentCheckpoint, AgentSession, BudgetDay, UserSettings
from app.lifecycle import Runtime
from app.repositories import BudgetRepository, ChargeResult
from tests.integration.helpers import Factory

#: A price of exactly 1 µ$ per token, so every figure can be checked by hand.
ONE_PER_TOKEN = "one-per-token"


class SteppingClock:
    """A clock that shows each of ``times`` in turn, then keeps the last one."""

    def __init__(self, *times: datetime) -> None:
        self.times = list(times)

    def __call__(self) -> datetime:
        return self.times.pop(0) if len(self.times) > 1 else self.times[0]


async def add_user(
    factory: Factory,
    user: str = "u-1",
    *,
    tier: str = "partner",
    renewal: datetime | None = None,
    override: int | None = None,
) -> None:
    async with factory.begin() as s:
        s.add(
            UserSettings(
                clerk_user_id=user,
                tier=tier,
                subscription_renewal_date=renewal,
                budget_override_microdollars=override,
            )
        )


async def add_spend(factory: Factory, user: str, spends: dict[date, int]) -> None:
    """Days already spent (their own budgets do not matter to later days)."""
    async with factory.begin() as s:
        s.add_all(
            BudgetDay(clerk_user_id=user, day=day, budget_microdollars=0, spent_microdollars=v)
            for day, v in spends.items()
        )


async def charge(
    rt: Runtime, session_id: str, request_id: str, microdollars: int, now: datetime | None = None
) -> ChargeResult:
    """Charge exactly ``microdollars`` (the one-per-token model) at ``now`` or the clock."""
    async with rt.session_factory.begin() as s:
        return await BudgetRepository(s, rt.settings).charge(
            session_id=session_id,
            request_id=request_id,
            model=ONE_PER_TOKEN,
            input_tokens=microdollars,
            output_tokens=0,
            now=now or rt.clock(),
        )


async def day_row(factory: Factory, user: str, day: date) -> tuple[int, int] | None:
    """``(spent, budget)`` of the user's day, or None when there is no row."""
    async with factory() as s:
        row = (
            await s.execute(
                select(BudgetDay.spent_microdollars, BudgetDay.budget_microdollars).where(
                    BudgetDay.clerk_user_id == user, BudgetDay.day == day
                )
            )
        ).one_or_none()
    return None if row is None else (int(row[0]), int(row[1]))


async def statuses(factory: Factory) -> dict[str, str]:
    async with factory() as s:
        rows = await s.execute(select(AgentSession.id, AgentSession.status))
        return {sid: status for sid, status in rows}


def checkpoint(session_id: str, iteration: int = 1) -> AgentCheckpoint:
    return AgentCheckpoint(
        session_id=session_id,
        job_id=f"job-{session_id}",
        message_history=[{"role": "assistant", "content": f"step {iteration}"}],
        sandbox_id=f"sbx-{session_id}",
        iteration_number=iteration,
    )


async def wait_for(
    condition: Callable[[], Awaitable[bool]], *, deadline: float = 30.0, what: str = ""
) -> None:
    """Poll ``condition`` until it holds; fail after ``deadline`` seconds (not a timing
    threshold: a generous bound on a wait for something that must happen)."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + deadline
    while not await condition():
        if loop.time() > give_up:
            raise AssertionError(f"gave up waiting for {what or condition}")
        await asyncio.sleep(0.02)


class LogWatch(logging.Handler):
    """Collects the messages of one logger, so a test can wait for a line."""

    def __init__(self, logger: str) -> None:
        super().__init__(level=logging.DEBUG)
        self.logger = logging.getLogger(logger)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> LogWatch:
        self.previous_level = self.logger.level
        self.logger.setLevel(logging.DEBUG)
        self.logger.addHandler(self)
        return self

    def __exit__(self, *_: object) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self.previous_level)

    def seen(self, prefix: str) -> bool:
        return any(m.startswith(prefix) for m in self.messages)
