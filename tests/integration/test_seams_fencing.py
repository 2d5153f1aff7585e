"""Where runners, operators and deliveries meet (issue 24, findings 7, 8, 9 and 13;
DESIGN.md §6c): a fenced runner writes nothing, a redelivery never doubles a running
hook, and an honest append stores what it was given.

Leases are measured on the database clock, so these tests never sleep to expire one;
the budget day comes from the injected clock.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from app.db.models import AgentCheckpoint
from app.lifecycle import Runtime, latest_checkpoint, save_checkpoint, start_session
from app.repositories import CheckpointRepository
from app.session_store import RedisSessionStore
from app.settings import Settings
from tests.integration.helpers import Factory, ManualClock

START = datetime(2027, 3, 14, 9, 0, tzinfo=UTC)


@pytest.fixture
def settings() -> Settings:
    return Settings(
        _env_file=None,
        backoff_max_seconds=0.05,
        resume_lease_seconds=60.0,
        resume_max_attempts=3,
        runner_timeout_seconds=600.0,
        sleep_grace_seconds=0,
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def rt(
    session_factory: Factory, store: RedisSessionStore, settings: Settings, clock: ManualClock
) -> Runtime:
    return Runtime(session_factory, store, settings, clock)


def message(tag: str, i: int) -> dict[str, Any]:
    return {"role": "assistant" if i % 2 else "user", "content": f"{tag}-{i}"}


def checkpoint(
    session_id: str, iteration: int, history: list[dict[str, Any]] | None = None
) -> AgentCheckpoint:
    return AgentCheckpoint(
        session_id=session_id,
        job_id="j",
        message_history=[message("m", i) for i in range(2)] if history is None else history,
        iteration_number=iteration,
        sandbox_id="sb-1",
    )


async def load(rt: Runtime, session_id: str, iteration: int) -> list[Any]:
    async with rt.session_factory() as s:
        return (await rt.checkpoints(s).load(session_id, iteration)).message_history


# ------------------------------------------------------- 13: append's cache tip


@pytest.mark.parametrize("resave", ["rewritten", "identical"])
async def test_an_honest_append_after_resaving_a_lower_iteration_stores_what_it_was_given(
    rt: Runtime, resave: str
) -> None:
    """The process saved iterations 1 and 2, then saved 1 again with as many messages
    as 2 holds (a runner went back to an earlier turn; the same content again is a
    no-op for the rows). Its next append vouches for that last save and adds one
    message: exactly that history is stored."""
    await start_session(rt, session_id="s-1", job_id="j", clerk_user_id="u-1", tier="partner")
    lower = [message("b", i) for i in range(3)]
    first = lower if resave == "identical" else [message("a", i) for i in range(2)]
    newest = [message("a", i) for i in range(3)]  # as many messages as the re-save
    await save_checkpoint(rt, checkpoint("s-1", 1, first))
    await save_checkpoint(rt, checkpoint("s-1", 2, newest))
    await save_checkpoint(rt, checkpoint("s-1", 1, lower))
    given = [*lower, message("b", 3)]
    stored = await save_checkpoint(rt, checkpoint("s-1", 3, given), new_messages=1)

    assert stored.message_history == given
    assert await load(rt, "s-1", 3) == given
    assert await load(rt, "s-1", 2) == newest
    assert await load(rt, "s-1", 1) == lower
    latest = await latest_checkpoint(rt, "s-1")
    assert latest is not None
    assert latest.message_history == given
    # The next append builds on iteration 3 again, O(new), and stays exact.
    await save_checkpoint(rt, checkpoint("s-1", 4, [*given, message("b", 4)]), new_messages=1)
    assert await load(rt, "s-1", 4) == [*given, message("b", 4)]


async def test_a_resave_below_the_newest_through_the_repository_forgets_the_tip(
    session_factory: Factory, rt: Runtime
) -> None:
    """The same seam on the repository itself, with its default shared cache."""
    await start_session(rt, session_id="s-2", job_id="j", clerk_user_id="u-2", tier="partner")
    async with session_factory.begin() as s:
        repo = CheckpointRepository(s, cache=rt.history_cache)
        await repo.save(checkpoint("s-2", 5, [message("a", i) for i in range(4)]))
        await repo.save(checkpoint("s-2", 9, [message("a", i) for i in range(5)]))
        await repo.save(checkpoint("s-2", 7, [message("c", i) for i in range(5)]))
        given = [*(message("c", i) for i in range(5)), message("c", 5)]
        stored = await repo.append(checkpoint("s-2", 10, given), new_messages=1)
    assert stored.message_history == given
    assert await load(rt, "s-2", 10) == given
