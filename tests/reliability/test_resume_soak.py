"""Resume soak: two worker processes deliver resumes while hooks fail 10 % of the time,
runners vanish, a worker is killed with SIGKILL every few seconds (and restarted), and
an operator redelivers sessions now and then, some with ``--force``.

Invariants: every wake is delivered and acknowledged in the end, and every session is
finished by a runner; no working session goes without a live runner for longer than
RUNNER_TIMEOUT_SECONDS plus a tick (and a worker's restart); nothing is parked; every
Redis key equals PostgreSQL's version after the final daemon tick.

``make check`` runs it for about 10 s, ``make soak`` for 60 s (SOAK_SECONDS).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.engine import create_session_factory
from app.db.models import AgentSession
from app.domain import InvalidTransition, ResumeInProgress
from app.lifecycle import Runtime, redeliver
from app.session_store import RedisSessionStore
from app.settings import Settings
from app.workers import BudgetDaemon
from tests.e2e.conftest import Proc, base_env, make_due_sleepers
from tests.integration.helpers import eventually

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "10"))
SESSIONS = 40
RUNNER_TIMEOUT = 2.0
LEASE = 1.0
# A worker restarts within this (a new Python process, then LISTEN); orphans are found
# by the next tick of a live worker.
RESTART_SLACK = 5.0


@pytest.mark.timeout(SOAK_SECONDS * 4 + 180)
async def test_resume_soak(
    e2e_db: tuple[str, AsyncEngine],
    redis_url: str,
    key_prefix: str,
    store: RedisSessionStore,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, engine = e2e_db
    await make_due_sleepers(engine, SESSIONS, prefix="soak")
    events, stop_file = tmp_path / "events.txt", tmp_path / "stop"
    env = base_env(
        DATABASE_URL=url, REDIS_URL=redis_url, REDIS_PREFIX=key_prefix,
        SOAK_LOG=str(events), SOAK_STOP_FILE=str(stop_file), LOG_LEVEL="WARNING",
        WAKE_POLL_INTERVAL="0.2", RESUME_LEASE_SECONDS=str(LEASE),
        RUNNER_TIMEOUT_SECONDS=str(RUNNER_TIMEOUT), RESUME_MAX_ATTEMPTS="1000",
        BACKOFF_MAX_SECONDS="0.2",
    )  # fmt: skip
    command = ["worker", "--on-resume", "tests.reliability.resume_runner:run"]

    def worker(n: int) -> Proc:
        return Proc(command, env, tmp_path / f"worker-{n}.log")

    workers = [worker(0), worker(1)]
    started = len(workers)
    settings = Settings(_env_file=None)
    factory_engine = engine  # the checks read through the test's own engine

    async def stranded() -> int:
        """Working sessions owed nothing whose runner has been silent too long."""
        async with factory_engine.connect() as conn:
            return int(
                await conn.scalar(
                    text(
                        "SELECT count(*) FROM agent_sessions s WHERE status = 'working'"
                        " AND resume_due_at IS NULL AND resume_parked_at IS NULL"
                        " AND greatest(last_seen_at, last_checkpoint_at)"
                        "     < now() - make_interval(secs => :bound)"
                        " AND NOT EXISTS (SELECT 1 FROM agent_cost_events e"
                        "     WHERE e.session_id = s.id"
                        "     AND e.created_at > now() - make_interval(secs => :bound))"
                    ),
                    {"bound": RUNNER_TIMEOUT + RESTART_SLACK},
                )
                or 0
            )

    operator = Runtime(create_session_factory(engine), store, settings)
    redeliveries: Counter[str] = Counter()
    forced: set[str] = set()  # sessions an operator gave a new token

    async def redeliver_some() -> None:
        """An operator redelivers a few sessions: refused while a hook holds one,
        forced (a new token, the running runner fenced) half of the time."""
        for _ in range(3):
            sid = f"soak-{rng.randrange(1, SESSIONS + 1):05d}"
            force = rng.random() < 0.5
            try:
                await redeliver(operator, sid, force=force)
            except ResumeInProgress:
                redeliveries["in progress"] += 1
            except InvalidTransition:
                redeliveries["not working"] += 1
            else:
                redeliveries["forced" if force else "owed"] += 1
                if force:
                    forced.add(sid)

    kills = 0
    worst = 0
    rng = random.Random(5)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SOAK_SECONDS
    try:
        while loop.time() < deadline:
            await asyncio.sleep(rng.uniform(1.5, 3.0))
            victim = rng.randrange(len(workers))
            workers[victim].popen.send_signal(signal.SIGKILL)
            workers[victim].popen.wait(10)
            workers[victim].close()
            kills += 1
            workers[victim] = worker(started)
            started += 1
            worst = max(worst, await stranded())
            await redeliver_some()
        # Winding down: runners finish their sessions from now on; the ones that died or
        # vanished are found and delivered again until every session is done.
        stop_file.touch()

        async def all_completed() -> bool:
            worst_now = await stranded()
            nonlocal worst
            worst = max(worst, worst_now)
            async with factory_engine.connect() as conn:
                left = await conn.scalar(
                    text("SELECT count(*) FROM agent_sessions WHERE status <> 'completed'")
                )
            return bool(left == 0)

        await eventually(all_completed, within=120, every=0.2)
    finally:
        for proc in workers:
            proc.popen.send_signal(signal.SIGTERM)
        for proc in workers:
            proc.popen.wait(60)
            proc.close()

    daemon = BudgetDaemon(create_session_factory(engine), store, settings)
    await daemon.run_once()  # the final tick
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(
                    AgentSession.id,
                    AgentSession.version,
                    AgentSession.resume_due_at,
                    AgentSession.resume_parked_at,
                )
            )
        ).all()
    lines = [line.split() for line in events.read_text().splitlines()]
    happened = Counter(what for what, *_ in lines)
    delivered = {(sid, token) for what, sid, token, _ in lines if what == "delivered"}
    failed = {(sid, token) for what, sid, token, _ in lines if what == "hook-failed"}

    assert worst == 0, f"{worst} working sessions went without a runner for too long"
    assert [r.id for r in rows if r.resume_parked_at is not None] == []
    assert [r.id for r in rows if r.resume_due_at is not None] == []  # all acknowledged
    # A delivery whose hook failed was delivered again with the same token.
    # (Unless an operator forced a new token meanwhile: the failed token is fenced then,
    # and the session is delivered under the new one.)
    assert {(sid, token) for sid, token in failed - delivered if sid not in forced} == set()
    assert happened["completed"] >= SESSIONS
    # The mirror: completed sessions have no key left, whatever the writes' order.
    for r in rows:
        assert await store.get(r.id, refresh=False) is None, r.id
    assert kills >= 2
    with capsys.disabled():
        print(
            f"\n  resume soak {SOAK_SECONDS:g}s: {SESSIONS} sessions, {kills} worker kills,"
            f" {len(delivered)} deliveries, {happened['hook-failed']} hook failures,"
            f" {happened['vanished']} vanished runners, {happened['fenced']} fenced,"
            f" {happened['slept']} sleeps, operator redeliveries {dict(redeliveries)};"
            " violations: 0"
        )
