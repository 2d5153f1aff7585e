"""``make bench`` (resume delivery): 10,000 due sessions woken and delivered by two worker
processes whose hook awaits 50 ms, as an operator would run them.

The reference is the floor the hook alone sets: every delivery waits 50 ms, and each
worker runs ``RESUME_CONCURRENCY`` hooks at once, so no implementation can finish before
``sessions * 0.05 / (2 * RESUME_CONCURRENCY)`` seconds. The run also counts deliveries
per (session, token): more than one is a double delivery.

    python -m benchmarks.resume [--sessions 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from app.db.engine import create_engine, create_session_factory
from app.db.migrate import upgrade
from app.db.models import AgentCheckpoint
from app.local_services import local_services
from app.repositories import CheckpointRepository
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
WORKERS = 2
HOOK_SECONDS = 0.05


def dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def seed(url: str, sessions: int) -> None:
    """``sessions`` sleepers of 100 users, each with a checkpoint of 8 messages."""
    conn = await asyncpg.connect(dsn(url))
    try:
        await conn.execute(
            "INSERT INTO agent_sessions (id, job_id, clerk_user_id, tier, model_used, status,"
            " wake_at, version) SELECT 'b-' || lpad(g::text, 6, '0'), 'job', 'user-' || (g % 100),"
            " 'partner', 'claude-sonnet-4-20250514', 'sleeping', now() + interval '1 day', 1"
            " FROM generate_series(1, $1) AS g",
            sessions,
        )
    finally:
        await conn.close()
    engine = create_engine(url, pool_size=16)
    factory = create_session_factory(engine)
    history = [{"role": "user", "content": f"step {i} " + "x" * 200} for i in range(8)]

    async def save(lo: int, hi: int) -> None:
        for g in range(lo, hi):
            async with factory.begin() as s:
                await CheckpointRepository(s).save(
                    AgentCheckpoint(
                        session_id=f"b-{g:06d}",
                        job_id="job",
                        message_history=history,
                        iteration_number=1,
                        agent_state="sleeping",
                    )
                )

    step = -(-sessions // 16)
    await asyncio.gather(
        *(save(lo, min(lo + step, sessions + 1)) for lo in range(1, sessions + 1, step))
    )
    await engine.dispose()


async def count_done(url: str) -> int:
    conn = await asyncpg.connect(dsn(url))
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM agent_sessions WHERE status = 'working'"
                " AND resume_due_at IS NULL"
            )
        )
    finally:
        await conn.close()


async def main(sessions: int) -> int:
    settings = Settings()
    concurrency = settings.resume_concurrency
    with local_services(
        settings.database_url, settings.redis_url, root=ROOT / ".local" / "bench"
    ) as servers:
        admin = await asyncpg.connect(dsn(servers.database_url))
        name = f"bench_resume_{uuid.uuid4().hex[:8]}"
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = (
            make_url(servers.database_url).set(database=name).render_as_string(hide_password=False)
        )
        log = ROOT / ".local" / "bench" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        procs: list[subprocess.Popen[bytes]] = []
        try:
            engine = create_engine(url)
            await upgrade(engine)
            await engine.dispose()
            await seed(url, sessions)
            env = {
                **os.environ,
                "DATABASE_URL": url,
                "REDIS_URL": servers.redis_url,
                "REDIS_PREFIX": f"bench:{name}",
                "BENCH_RESUME_LOG": str(log),
                "WAKE_POLL_INTERVAL": "0.2",
                "LOG_LEVEL": "INFO",
            }
            outputs = [log.with_suffix(f".worker{i}.txt") for i in range(WORKERS)]
            command = [sys.executable, "-m", "app", "worker"]
            command += ["--on-resume", "benchmarks.hooks:wait_50ms"]
            procs = [
                subprocess.Popen(
                    command, env=env, cwd=ROOT, stdout=out.open("wb"), stderr=subprocess.STDOUT
                )
                for out in outputs
            ]
            # Both processes up and listening before the work lands.
            deadline = time.monotonic() + 120
            while not all(o.exists() and "listening channel" in o.read_text() for o in outputs):
                if time.monotonic() > deadline:
                    raise RuntimeError("the workers did not start")
                await asyncio.sleep(0.05)
            conn = await asyncpg.connect(dsn(url))
            try:
                started = time.perf_counter()
                await conn.execute(
                    "UPDATE agent_sessions SET wake_at = now() - interval '1 s';"
                    " NOTIFY agent_wake, '[]'"
                )
            finally:
                await conn.close()
            while await count_done(url) < sessions:
                if time.perf_counter() - started > 600:
                    raise RuntimeError("the workers did not finish within 10 minutes")
                await asyncio.sleep(0.05)
            elapsed = time.perf_counter() - started
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(60)
            for out in log.parent.glob(f"{name}.worker*.txt"):
                out.unlink()
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()
        lines = [line.split() for line in log.read_text().splitlines()]
        log.unlink()
    per_delivery = Counter((sid, token) for sid, token, _ in lines)
    per_session = Counter(sid for sid, _, _ in lines)
    per_worker = Counter(pid for _, _, pid in lines)
    floor = sessions * HOOK_SECONDS / (WORKERS * concurrency)
    print(f"\n### Resume delivery: {sessions:,} wakes, {WORKERS} worker processes, 50 ms hook\n")
    print("| measure | value |\n|---|---:|")
    print(f"| wall time, due to every resume acknowledged | {elapsed:.2f} s |")
    print(
        f"| floor set by the hook ({WORKERS} x RESUME_CONCURRENCY={concurrency}) | {floor:.2f} s |"
    )
    print(f"| vs floor | {elapsed / floor:.2f}x |")
    print(f"| wakes per second | {sessions / elapsed:,.0f} |")
    print(f"| sessions delivered | {len(per_session):,} of {sessions:,} |")
    print(
        f"| double deliveries (same session and token twice) | {sum(n - 1 for n in per_delivery.values())} |"
    )
    print(f"| split between workers | {' / '.join(str(n) for n in per_worker.values())} |")
    return 0 if len(per_session) == sessions else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=10_000)
    raise SystemExit(asyncio.run(main(parser.parse_args().sessions)))
