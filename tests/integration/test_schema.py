"""What the schema itself guarantees, whatever code writes to it."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.models import AgentCheckpoint, AgentSession, UserSettings

Factory = async_sessionmaker[AsyncSession]


def _session(**overrides: object) -> AgentSession:
    values: dict[str, object] = {
        "id": "s-1",
        "job_id": "j-1",
        "clerk_user_id": "u-1",
        "tier": "partner",
        "model_used": "claude-sonnet-4-20250514",
    }
    values.update(overrides)
    return AgentSession(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "constraint"),
    [
        ({"tier": "enterprise"}, "ck_agent_sessions_tier"),
        ({"status": "paused"}, "ck_agent_sessions_status"),
        ({"cumulative_cost_microdollars": -1}, "ck_agent_sessions_cumulative_cost_non_negative"),
        ({"status": "sleeping"}, "ck_agent_sessions_wake_at_iff_sleeping"),
    ],
)
async def test_named_checks_reject_bad_rows(
    session_factory: Factory, overrides: dict[str, object], constraint: str
) -> None:
    with pytest.raises(IntegrityError) as info:
        async with session_factory.begin() as s:
            s.add(_session(**overrides))
    assert constraint in str(info.value)
    async with session_factory() as s:
        assert await s.scalar(select(AgentSession).where(AgentSession.id == "s-1")) is None


async def test_user_settings_tier_is_checked(session_factory: Factory) -> None:
    with pytest.raises(IntegrityError, match="ck_user_settings_tier"):
        async with session_factory.begin() as s:
            s.add(UserSettings(clerk_user_id="u-1", tier="gold"))


async def test_cumulative_cost_holds_a_trillion(session_factory: Factory) -> None:
    async with session_factory.begin() as s:
        s.add(_session(cumulative_cost_microdollars=10**12))
    async with session_factory() as s:
        row = await s.get_one(AgentSession, "s-1")
        assert row.cumulative_cost_microdollars == 10**12
        assert row.started_at.tzinfo is not None


HISTORY: list[dict[str, Any]] = [
    {"role": "user", "content": "Fix the tests — naïve café, 日本語, emoji 🚀, RTL שלום"},
    {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Running them."},
            {
                "type": "tool_use",
                "id": "toolu_01",
                "name": "bash",
                "input": {"command": "pytest -q", "env": {"CI": "1"}, "args": [1, 2.5, None, True]},
            },
        ],
    },
    {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": "3 passed"}],
        "meta": {"nested": {"deeper": {"deepest": ['\\escaped"quote', "\t\n"]}}},
    },
]


async def test_jsonb_history_round_trips_exactly(session_factory: Factory) -> None:
    async with session_factory.begin() as s:
        s.add(_session())
        await s.flush()
        s.add(
            AgentCheckpoint(
                session_id="s-1", job_id="j-1", message_history=HISTORY, retry_counts={"bash": 2}
            )
        )
    async with session_factory() as s:
        cp = await s.scalar(select(AgentCheckpoint).where(AgentCheckpoint.session_id == "s-1"))
        assert cp is not None
        assert cp.message_history == HISTORY
        assert cp.retry_counts == {"bash": 2}
        # What PostgreSQL holds is the same document, not a string of it.
        kind = await s.scalar(
            text("SELECT jsonb_typeof(message_history -> 1 -> 'content') FROM agent_checkpoints")
        )
        assert kind == "array"
