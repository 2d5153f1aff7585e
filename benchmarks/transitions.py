"""Transitions and wakes: one guarded transition against raw SQL, then N due sessions woken
by two real worker processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from dataclasses import asdict
from typing import Any

import asyncpg

from app.db.engine import create_engine, create_session_factory
from app.repositories import SessionRepository
from app.settings import SONNET
from benchmarks.common import ROOT, Recorder, dsn, table


async def transitions_and_wakes(
    url: str, rounds: int, ops: int, wakes: int
) -> tuple[str, dict[str, Any]]:
    """One guarded transition against the raw SQL; then N due sessions, 2 worker processes."""
    from datetime import UTC, datetime, timedelta

    engine = create_engine(url, pool_size=2)
    factory = create_session_factory(engine)
    pool = await asyncpg.create_pool(dsn(url), min_size=1, max_size=2)
    sid_repo, sid_raw = (f"bench-{uuid.uuid4().hex[:10]}" for _ in range(2))
    async with factory.begin() as s:
        for sid in (sid_repo, sid_raw):
            await SessionRepository(s).create(
                id=sid, job_id="j", clerk_user_id="bench", tier="partner", model_used=SONNET
            )
    wake_at = datetime.now(UTC) + timedelta(days=1)

    async def repo(i: int) -> None:
        to, frm = ("sleeping", "working") if i % 2 == 0 else ("working", "sleeping")
        async with factory.begin() as s:
            await SessionRepository(s).transition(
                sid_repo, to, expected=frm, wake_at=wake_at if to == "sleeping" else None
            )

    async def raw(i: int) -> None:
        to, frm = ("sleeping", "working") if i % 2 == 0 else ("working", "sleeping")
        async with pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "UPDATE agent_sessions SET status = $2, version = version + 1, wake_at = $3"
                " WHERE id = $1 AND status = ANY($4::varchar[]) RETURNING *",
                sid_raw, to, wake_at if to == "sleeping" else None, [frm],
            )  # fmt: skip
            assert row is not None

    recs = {"SessionRepository.transition": Recorder("SessionRepository.transition"),
            "raw asyncpg": Recorder("raw asyncpg")}  # fmt: skip
    for warm_up in (repo, raw):
        await warm_up(0)
        await warm_up(1)
    for r in range(rounds):
        pairs = list(recs.items())
        for name, rec in pairs if r % 2 == 0 else list(reversed(pairs)):
            await rec.round(repo if name.startswith("Session") else raw, ops)
    stats = [r.stats() for r in recs.values()]
    text = table("Guarded transition (one statement in a transaction)", stats, "raw asyncpg")

    # N due sessions, woken by two real worker processes.
    prefix = f"wake-{uuid.uuid4().hex[:6]}"
    await pool.execute(
        "INSERT INTO agent_sessions (id, job_id, clerk_user_id, tier, model_used, status,"
        " wake_at, version) SELECT $1 || '-' || g, 'j', 'u-' || (g % 200), 'partner', $3,"
        " 'sleeping', now() - interval '1 minute', 1 FROM generate_series(1, $2) AS g",
        prefix, wakes, SONNET,
    )  # fmt: skip
    env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": os.environ["BENCH_REDIS_URL"],
           "REDIS_PREFIX": f"bench:{prefix}", "WAKE_POLL_INTERVAL": "0.5", "LOG_LEVEL": "WARNING"}  # fmt: skip
    started = time.perf_counter()
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "app", "worker", "--batch-size", "200"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for _ in range(2)
    ]
    while (
        await pool.fetchval(
            "SELECT count(*) FROM agent_sessions WHERE id LIKE $1 || '-%' AND status = 'working'",
            prefix,
        )
        < wakes
    ):
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - started
    for w in workers:
        w.terminate()
        w.wait(30)
    doubles = await pool.fetchval(
        "SELECT count(*) FROM agent_sessions WHERE id LIKE $1 || '-%' AND version <> 2", prefix
    )
    await pool.close()
    await engine.dispose()
    text += (
        f"\n\n### Waking {wakes:,} due sessions with 2 worker processes\n\n"
        f"| total s (incl. process start) | wakes/s | double wakes |\n|---:|---:|---:|\n"
        f"| {elapsed:.2f} | {wakes / elapsed:,.0f} | {doubles} |"
    )
    return text, {
        "transition": {s.name: asdict(s) for s in stats},
        "wakes": {"n": wakes, "seconds": elapsed, "double_wakes": doubles},
    }
