"""``python -m app sessions``: what an operator sees and does, as a real process."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.engine import create_session_factory
from app.lifecycle import Runtime
from app.session_store import RedisSessionStore, connect_redis
from app.settings import Settings
from tests.e2e.conftest import base_env, make_due_sleepers, run_app
from tests.fleet import AGE_DAYS, FLEET, OLD, census, make_fleet


async def app(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await run_app(env, "sessions", *args)


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


async def test_purge_deletes_what_it_says_and_nothing_else(
    e2e_db: tuple[str, AsyncEngine], redis_url: str, key_prefix: str
) -> None:
    """Sessions in every status; ``purge`` reports the completed sessions past the line,
    deletes exactly their checkpoints and keys, and a dry run deletes nothing."""
    url, engine = e2e_db
    prefix = f"{key_prefix}-purge"
    redis = connect_redis(redis_url)
    rt = Runtime(
        create_session_factory(engine), RedisSessionStore(redis, prefix=prefix), Settings()
    )
    try:
        await make_fleet(rt, FLEET, AGE_DAYS)
        before = await census(rt)
        env = base_env(DATABASE_URL=url, REDIS_URL=redis_url, REDIS_PREFIX=prefix)

        dry = await app(env, "purge", "--older-than", "30", "--dry-run", "--json")
        assert dry.returncode == 0, dry.stderr
        said = json.loads(dry.stdout)
        assert (sorted(said["session_ids"]), said["checkpoints"], said["redis_keys"]) == (
            OLD,
            6,
            2,
        )
        assert said["dry_run"] is True
        assert await census(rt) == before

        done = await app(env, "purge", "--older-than", "30")
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[0] == (
            "purge: 2 sessions completed more than 30 days ago: deleted 6 checkpoints and"
            " 2 Redis keys (session rows and ledger kept)"
        )
        assert sorted(line.strip() for line in done.stdout.splitlines()[1:]) == OLD
        after = await census(rt)
        assert after["checkpoints"] == {
            sid: n for sid, n in before["checkpoints"].items() if sid not in OLD
        }
        assert after["keys"] == before["keys"] - set(OLD)
        for table in ("sessions", "ledger", "budget_days"):
            assert after[table] == before[table]

        bad = await app(env, "purge", "--older-than", "-3")
        assert bad.returncode == 2
        assert "days must be 0 or more" in bad.stderr

        erased = await app(env, "delete", "working", "--json")
        assert erased.returncode == 0, erased.stderr
        assert json.loads(erased.stdout) == {
            "session_id": "working", "status": "working", "sessions": 1,
            "checkpoints": 3, "cost_events": 2, "redis_keys": 1,
        }  # fmt: skip
        assert "working" not in (await census(rt))["sessions"]
        missing = await app(env, "delete", "working")
        assert missing.returncode == 1
        assert "working" in missing.stderr
    finally:
        async for key in redis.scan_iter(match=f"{prefix}:*"):
            await redis.delete(key)
        await redis.aclose()
