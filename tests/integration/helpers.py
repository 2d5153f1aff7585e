"""Small builders shared by the integration tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.models import AgentSession
from app.repositories import SessionRepository
from app.settings import OPUS, SONNET

__all__ = ["OPUS", "SONNET", "Factory", "ManualClock", "eventually", "later", "make_session"]

Factory = async_sessionmaker[AsyncSession]


class ManualClock:
    """A clock that shows whatever the test sets."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def later(seconds: float = 3600) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


async def make_session(
    factory: Factory,
    session_id: str = "s-1",
    *,
    user: str = "u-1",
    tier: str = "partner",
    model: str = SONNET,
    budget: int = 0,
) -> AgentSession:
    async with factory.begin() as s:
        return await SessionRepository(s).create(
            id=session_id,
            job_id=f"job-{session_id}",
            clerk_user_id=user,
            tier=tier,
            model_used=model,
            daily_budget_microdollars=budget,
        )


async def eventually(
    condition: Callable[[], Awaitable[bool]], *, within: float = 60.0, every: float = 0.02
) -> None:
    """Wait until ``condition()`` holds; AssertionError after ``within`` seconds. The
    deadline is generous on purpose: it bounds a hang, it does not measure speed."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        if await condition():
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition did not hold within {within:g}s")
        await asyncio.sleep(every)
