"""``python -m app sessions redeliver ID [--force]`` as a real process: a delivery a
hook holds is refused in one line and left alone; ``--force`` fences its runner."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.e2e.conftest import base_env, make_due_sleepers, run_app


async def app(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await run_app(env, "sessions", "redeliver", *args)


async def resume_state(engine: AsyncEngine, session_id: str) -> dict[str, Any]:
    async with engine.connect() as conn:
        found = (
            await conn.execute(
                text(
                    "SELECT resume_token, resume_due_at, resume_attempts, version,"
                    " resume_due_at > now() AS held FROM agent_sessions WHERE id = :id"
                ),
                {"id": session_id},
            )
        ).one()
    return dict(found._mapping)


async def test_redeliver_refuses_a_held_delivery_and_force_fences_its_runner(
    e2e_db: tuple[str, AsyncEngine], redis_url: str, key_prefix: str
) -> None:
    url, engine = e2e_db
    await make_due_sleepers(engine, 1, prefix="held")
    async with engine.begin() as conn:
        # A worker delivered the wake and its hook is running: the lease holds it for
        # another hour, on the database clock.
        await conn.execute(
            text(
                "UPDATE agent_sessions SET status = 'working', wake_at = NULL, version = 2,"
                " resume_token = 'tok-running', resume_attempts = 1,"
                " resume_due_at = now() + interval '1 hour' WHERE id = 'held-00001'"
            )
        )
    env = base_env(DATABASE_URL=url, REDIS_URL=redis_url, REDIS_PREFIX=f"{key_prefix}-redeliver")
    before = await resume_state(engine, "held-00001")

    refused = await app(env, "held-00001")
    assert refused.returncode == 1
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, refused.stderr
    assert "held-00001" in lines[0]
    assert "being resumed" in lines[0]
    assert "force" in lines[0]
    assert "Traceback" not in refused.stderr
    assert refused.stdout == ""
    assert await resume_state(engine, "held-00001") == before

    forced = await app(env, "held-00001", "--force", "--json")
    assert forced.returncode == 0, forced.stderr
    shown = json.loads(forced.stdout)
    assert shown["resume"] == "owed"
    assert shown["resume_attempts"] == 0
    assert shown["resume_token"] not in (None, "tok-running")
    after = await resume_state(engine, "held-00001")
    assert after["resume_token"] == shown["resume_token"]
    assert after["held"] is False  # owed at once, to whichever worker claims it
    async with engine.connect() as conn:
        fenced = await conn.scalar(
            text(
                "SELECT count(*) FROM agent_events"
                " WHERE session_id = 'held-00001' AND type = 'runner.fenced'"
            )
        )
    assert fenced == 1

    # Due at once and held by nobody: a plain redelivery goes through, same token.
    again = await app(env, "held-00001")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "redeliver held-00001: owed"
    assert (await resume_state(engine, "held-00001"))["resume_token"] == shown["resume_token"]
