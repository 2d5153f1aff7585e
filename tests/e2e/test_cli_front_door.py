"""The CLI as a user meets it: its own name and version, one pass of a process for
scripts and checks, and waking a sleeping session now for development."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app import __version__
from tests.e2e.conftest import base_env, make_due_sleepers, run_app

CONSOLE_SCRIPT = Path(sys.executable).with_name("agent-sleepwake")


async def console(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [str(CONSOLE_SCRIPT), *args],
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_the_console_script_says_its_own_name_and_version() -> None:
    shown = await console("--version")
    assert shown.returncode == 0
    assert shown.stdout.strip() == f"agent-sleepwake {__version__}"
    helped = await console("--help")
    assert helped.stdout.startswith("usage: agent-sleepwake ")
    as_module = await run_app(base_env(), "--version")
    assert as_module.stdout.strip() == f"python -m app {__version__}"


async def test_one_pass_of_the_worker_and_the_daemon(
    e2e_db: tuple[str, AsyncEngine], redis_url: str, key_prefix: str
) -> None:
    url, engine = e2e_db
    await make_due_sleepers(engine, 3, prefix="once")
    env = base_env(DATABASE_URL=url, REDIS_URL=redis_url, REDIS_PREFIX=key_prefix)

    worker = await run_app(env, "worker", "--once")
    daemon = await run_app(env, "daemon", "--once")

    assert worker.returncode == 0, worker.stderr
    assert "worker: one pass" in worker.stdout
    assert daemon.returncode == 0, daemon.stderr
    async with engine.connect() as conn:
        working = await conn.scalar(
            text("SELECT count(*) FROM agent_sessions WHERE status = 'working'")
        )
    assert working == 3  # the pass woke every due sleeper, and the process exited


async def test_sessions_wake_wakes_a_sleeper_now_and_refuses_anything_else(
    e2e_db: tuple[str, AsyncEngine], redis_url: str, key_prefix: str
) -> None:
    url, engine = e2e_db
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO agent_sessions (id, job_id, clerk_user_id, tier, model_used,"
                " status, wake_at, version) VALUES ('dev-1', 'j', 'u-1', 'partner',"
                " 'claude-sonnet-4-20250514', 'sleeping', now() + interval '20 hours', 1)"
            )
        )
    env = base_env(DATABASE_URL=url, REDIS_URL=redis_url, REDIS_PREFIX=key_prefix)

    woken = await run_app(env, "sessions", "wake", "dev-1")
    again = await run_app(env, "sessions", "wake", "dev-1")

    assert woken.returncode == 0, woken.stderr
    assert "wake dev-1: working" in woken.stdout
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT status, wake_at, resume_due_at IS NOT NULL AS owed"
                    " FROM agent_sessions WHERE id = 'dev-1'"
                )
            )
        ).one()
    assert (row.status, row.wake_at, row.owed) == ("working", None, True)
    assert again.returncode == 1  # it is not asleep any more: one line, no traceback
    lines = [line for line in again.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "working" in lines[0]
    assert "Traceback" not in again.stderr


async def test_users_set_and_show(
    e2e_db: tuple[str, AsyncEngine], redis_url: str, key_prefix: str
) -> None:
    url, _ = e2e_db
    env = base_env(DATABASE_URL=url, REDIS_URL=redis_url, REDIS_PREFIX=key_prefix)

    made = await run_app(
        env, "users", "set", "u-cli", "--tier", "partner", "--renewal", "2031-06-15T00:00:00Z"
    )
    changed = await run_app(env, "users", "set", "u-cli", "--budget-override", "12.50")
    shown = await run_app(env, "users", "show", "u-cli", "--json")
    missing = await run_app(env, "users", "show", "u-nobody")
    new_without_tier = await run_app(env, "users", "set", "u-new")
    bad_amount = await run_app(env, "users", "set", "u-cli", "--budget-override", "NaN")

    assert made.returncode == 0, made.stderr
    assert changed.returncode == 0, changed.stderr
    assert json.loads(shown.stdout) == {
        "clerk_user_id": "u-cli",
        "tier": "partner",
        "subscription_renewal_date": "2031-06-15T00:00:00+00:00",
        "budget_override_microdollars": 12_500_000,
    }
    assert missing.returncode == 1
    for refused, names in ((new_without_tier, "tier"), (bad_amount, "--budget-override")):
        assert refused.returncode == 2
        lines = [line for line in refused.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, lines
        assert names in lines[0]
