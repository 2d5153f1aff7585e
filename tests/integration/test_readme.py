"""The README's agent loop and the manual's examples run as written."""

from __future__ import annotations

import re
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select

from app.clock import VirtualClock
from app.db.engine import create_engine
from app.db.models import AgentCostEvent, AgentEvent, AgentSession
from app.repositories import CheckpointRepository
from tests.integration.helpers import Factory

ROOT = Path(__file__).resolve().parents[2]


def example(name: str, page: str = "README.md") -> str:
    text = (ROOT / page).read_text()
    match = re.search(rf"<!-- example:{name} -->\s*```python\n(.*?)```", text, re.S)
    assert match, f"{page} has no example named {name}"
    return match.group(1)


def load(name: str, page: str = "README.md") -> dict[str, Any]:
    namespace: dict[str, Any] = {}
    exec(compile(example(name, page), f"{page}:{name}", "exec"), namespace)  # noqa: S102
    return namespace


class FakeModel:
    """A model that answers every turn with one message and an Anthropic usage dict
    (prompt cache written and read; a 180k-token prompt, under the 200k price band),
    and says "done" on its last turn. A partner's day holds about eleven such turns."""

    def __init__(self, turns: int) -> None:
        self.turns = turns
        self.said: list[dict[str, Any]] = []

    async def __call__(self, history: list[dict[str, Any]]) -> tuple[dict[str, Any], Any]:
        turn = len(history)
        text = "done" if turn == self.turns - 1 else f"step {turn}"
        reply = {"role": "assistant", "content": text}
        self.said.append(reply)
        usage = {
            "input_tokens": 50_000,
            "cache_creation_input_tokens": 10_000,
            "cache_read_input_tokens": 120_000,
            "output_tokens": 3_000,
        }
        return reply, usage


@pytest.mark.timeout(120)
async def test_the_agent_loop_sleeps_wakes_on_the_next_day_and_finishes(
    database_url: str,
    redis_url: str,
    key_prefix: str,
    session_factory: Factory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": key_prefix,
        "WAKE_POLL_INTERVAL": "0.1",
    }.items():
        monkeypatch.setenv(name, value)
    # Two simulated hours before midnight, an hour a real second.
    evening = datetime.combine(datetime.now(UTC).date(), time(22, 0), tzinfo=UTC)
    clock = VirtualClock(evening, speed=3_600)
    model = FakeModel(turns=13)

    await load("agent-loop")["main"](model, clock)

    async with session_factory() as s:
        session = await s.get(AgentSession, "session-1")
        charged = await s.scalar(
            select(func.count()).where(AgentCostEvent.session_id == "session-1")
        )
        events = list(
            await s.scalars(select(AgentEvent.type).where(AgentEvent.session_id == "session-1"))
        )
        last = await CheckpointRepository(s).load_latest("session-1")
    assert session is not None
    assert session.status == "completed"
    assert charged == model.turns  # every call in the ledger once
    assert events.count("session.slept") >= 1  # 13 turns do not fit in one day
    assert events.count("session.woken") == events.count("session.slept")
    assert last is not None
    assert last.message_history == model.said  # nothing lost across the night
    assert clock() >= evening + timedelta(hours=2)  # it did wait for the next day


async def test_sessions_example(
    database_url: str, redis_url: str, redis: Redis, key_prefix: str
) -> None:
    namespace = load("sessions", "docs/api.md")
    try:
        await namespace["main"](database_url, redis_url, key_prefix)
        engine = create_engine(database_url)
        async with engine.connect() as conn:
            status = await conn.scalar(
                AgentSession.__table__.select()
                .with_only_columns(AgentSession.__table__.c.status)
                .where(AgentSession.__table__.c.id == "sess-42")
            )
        await engine.dispose()
        assert status == "sleeping"
    finally:
        await redis.delete(f"{key_prefix}:sess-42")


pytestmark = pytest.mark.integration
