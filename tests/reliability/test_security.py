"""Security basics: parameterised queries, masked passwords, keys inside their prefix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from app.db.migrate import VERSION_TABLE
from app.db.models import AgentCheckpoint, AgentCostEvent, AgentSession
from app.repositories import BudgetRepository, CheckpointRepository, SessionRepository
from app.settings import SONNET, Settings
from tests.e2e.conftest import base_env
from tests.integration.helpers import Factory

EVIL = [
    "x'; DROP TABLE agent_sessions; --",
    'x"; DELETE FROM agent_cost_events; --',
    "1 OR 1=1",
    "$1; SELECT pg_sleep(10)",
    "') ; TRUNCATE budget_days CASCADE; --",
]
ROOT = Path(__file__).resolve().parents[2]


async def test_sql_looking_ids_are_just_data(session_factory: Factory) -> None:
    settings = Settings(_env_file=None)
    for i, evil in enumerate(EVIL):
        async with session_factory.begin() as s:
            await SessionRepository(s).create(
                id=evil, job_id=evil, clerk_user_id=evil, tier="partner", model_used=SONNET
            )
            await BudgetRepository(s, settings).charge(
                session_id=evil,
                request_id=f"{evil}-{i}",
                model=SONNET,
                input_tokens=1,
                output_tokens=1,
            )
            await CheckpointRepository(s).save(
                AgentCheckpoint(
                    session_id=evil, job_id=evil, message_history=[{"q": evil}], sandbox_id=evil
                )
            )
    async with session_factory() as s:
        ids = sorted((await s.scalars(select(AgentSession.id))).all())
        events = await s.scalar(select(func.count()).select_from(AgentCostEvent))
        tables = set(
            (
                await s.scalars(
                    text("SELECT tablename FROM pg_tables WHERE tablename LIKE 'agent_%'")
                )
            ).all()
        )
        loaded = await CheckpointRepository(s).load_latest(EVIL[0])
    assert ids == sorted(EVIL)
    assert events == len(EVIL)
    assert tables == {
        "agent_sessions",
        "agent_checkpoints",
        "agent_cost_events",
        "agent_events",
        VERSION_TABLE,
    }
    assert loaded is not None
    assert loaded.message_history == [{"q": EVIL[0]}]


def test_passwords_are_masked_in_cli_output(database_url: str, redis_url: str) -> None:
    # Trust authentication ignores the password, so the command really connects.
    with_password = make_url(database_url).set(password="hunter2-secret")
    env = base_env(
        DATABASE_URL=with_password.render_as_string(hide_password=False),
        REDIS_URL=redis_url,
    )
    result = subprocess.run(
        [sys.executable, "-m", "app", "status"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "hunter2-secret" not in output
    assert ":***@" in output
    assert "sessions  working=" in output
