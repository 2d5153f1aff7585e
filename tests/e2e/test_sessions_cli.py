"""``python -m app sessions``: what an operator sees and does, as a real process."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.e2e.conftest import base_env, make_due_sleepers

ROOT = Path(__file__).resolve().parents[2]


async def app(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "app", "sessions", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_list_show_redeliver_and_cancel(
    e2e_db: tuple[str, AsyncEngine], redis_url: str, key_prefix: str
) -> None:
    url, engine = e2e_db
    await make_due_sleepers(engine, 3, prefix="cli")
    async with engine.begin() as conn:
        # cli-00001 ran out of delivery attempts; cli-00002 is working with nothing owed.
        await conn.execute(
            text(
                "UPDATE agent_sessions SET status = 'working', wake_at = NULL, version = 2,"
                " resume_token = 'tok-' || id, resume_attempts = 5, resume_parked_at = now()"
                " WHERE id = 'cli-00001'"
            )
        )
        await conn.execute(
            text(
                "UPDATE agent_sessions SET status = 'working', wake_at = NULL, version = 2,"
                " resume_token = 'tok-' || id WHERE id = 'cli-00002'"
            )
        )
    env = base_env(DATABASE_URL=url, REDIS_URL=redis_url, REDIS_PREFIX=key_prefix)

    stuck = await app(env, "list", "--stuck", "--json")
    assert stuck.returncode == 0, stuck.stderr
    rows: list[dict[str, Any]] = json.loads(stuck.stdout)
    assert [(r["id"], r["resume"], r["resume_attempts"]) for r in rows] == [
        ("cli-00001", "parked", 5)
    ]
    table = await app(env, "list", "--status", "sleeping")
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split()[:3] == ["id", "status", "version"]
    assert [line.split()[0] for line in table.stdout.splitlines()[1:]] == ["cli-00003"]

    shown = await app(env, "show", "cli-00001", "--json")
    view = json.loads(shown.stdout)
    assert view["session"]["resume_token"] == "tok-cli-00001"
    assert (view["checkpoint"], view["redis"]) == (None, None)

    assert (await app(env, "redeliver", "cli-00001")).returncode == 0
    again = json.loads((await app(env, "show", "cli-00001", "--json")).stdout)["session"]
    assert (again["resume"], again["resume_attempts"], again["resume_token"]) == (
        "owed",
        0,
        "tok-cli-00001",
    )
    assert (await app(env, "list", "--stuck", "--json")).stdout.strip() == "[]"

    assert (await app(env, "cancel", "cli-00002")).returncode == 0
    async with engine.connect() as conn:
        status = await conn.scalar(text("SELECT status FROM agent_sessions WHERE id = 'cli-00002'"))
    assert status == "completed"

    missing = await app(env, "show", "nobody")
    assert missing.returncode == 1
    assert "nobody" in missing.stderr
    assert "Traceback" not in missing.stderr
    not_working = await app(env, "redeliver", "cli-00003")
    assert not_working.returncode == 1
    assert "sleeping" in not_working.stderr
