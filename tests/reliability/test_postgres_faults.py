"""PostgreSQL faults while charge, save and wake loops run: backends are terminated
under them (and, on a server the test owns, the server restarts). Every transaction
happens whole or not at all, money adds up, and the loops finish their work."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.engine import create_engine, create_session_factory
from app.db.migrate import upgrade
from app.db.models import AgentCheckpoint, AgentCostEvent, AgentSession, BudgetDay
from app.lifecycle import RestoredSession
from app.local_services import EmbeddedPostgres
from app.repositories import BudgetRepository, CheckpointRepository, SessionRepository
from app.session_store import RedisSessionStore
from app.settings import SONNET, Settings
from app.workers import WakeWorker
from tests.integration.helpers import Factory

SETTINGS = Settings(_env_file=None, wake_poll_interval=0.05, backoff_max_seconds=0.5)


async def retrying(op: Callable[[], Awaitable[Any]], attempts: int = 200) -> Any:
    """What a client does when its connection dies: try again (same request id)."""
    for attempt in range(attempts):
        try:
            return await op()
        except Exception:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.02)
    return None  # pragma: no cover


async def _workload(
    factory: Factory, store: RedisSessionStore, chaos: Callable[[], Awaitable[None]]
) -> dict[str, Any]:
    now = datetime.now(UTC)
    async with factory.begin() as s:
        repo = SessionRepository(s)
        for i in range(8):
            await repo.create(
                id=f"c-{i}",
                job_id="j",
                clerk_user_id=f"u-{i % 2}",
                tier="partner",
                model_used=SONNET,
            )
        for i in range(40):
            await repo.create(
                id=f"w-{i:02d}",
                job_id="j",
                clerk_user_id="sleepy",
                tier="partner",
                model_used=SONNET,
            )
            await repo.transition(
                f"w-{i:02d}", "sleeping", expected="working", wake_at=now - timedelta(seconds=1)
            )

    charged: list[str] = []
    saved: dict[str, list[dict[str, Any]]] = {}

    async def charger(i: int) -> None:
        for n in range(25):
            rid = f"c-{i}-{n}"

            async def op(rid: str = rid) -> None:
                async with factory.begin() as s:
                    await BudgetRepository(s, SETTINGS).charge(
                        session_id=f"c-{i}", request_id=rid, model=SONNET,
                        input_tokens=100, output_tokens=10,
                    )  # fmt: skip

            await retrying(op)
            charged.append(rid)

    async def saver(i: int) -> None:
        history: list[dict[str, Any]] = []
        for n in range(20):
            history.append({"n": n, "text": "x" * random.randint(10, 200)})
            cp = AgentCheckpoint(
                session_id=f"c-{i}", job_id="j", message_history=list(history), iteration_number=n
            )

            async def op(cp: AgentCheckpoint = cp) -> None:
                async with factory.begin() as s:
                    await CheckpointRepository(s, keep_last=50).save(cp)

            await retrying(op)
            saved[f"c-{i}"] = list(history)

    resumed: list[str] = []

    def hook(restored: RestoredSession) -> None:
        resumed.append(restored.session.id)

    stop = asyncio.Event()
    worker = WakeWorker(factory, store, SETTINGS, on_resume=hook, batch_size=3)
    worker_task = asyncio.create_task(worker.run_forever(stop))
    chaos_task = asyncio.create_task(chaos())
    await asyncio.gather(*(charger(i) for i in range(8)), *(saver(i) for i in range(8)))
    chaos_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await chaos_task
    # Pooled connections that the chaos killed are found dead only on use; start the
    # checks below from a clean pool (the worker keeps its own retry loop).
    await factory.kw["bind"].dispose()
    deadline = asyncio.get_running_loop().time() + 30
    while asyncio.get_running_loop().time() < deadline:

        async def count_sleeping() -> int:
            async with factory() as s:
                return int(
                    await s.scalar(select(func.count()).where(AgentSession.status == "sleeping"))
                    or 0
                )

        if not await retrying(count_sleeping):
            break
        await asyncio.sleep(0.1)
    stop.set()
    await worker_task
    return {"charged": charged, "saved": saved, "resumed": resumed}


async def _check(factory: Factory, result: dict[str, Any]) -> None:
    async with factory() as s:
        ledger_ids = set((await s.scalars(select(AgentCostEvent.request_id))).all())
        ledger = await s.scalar(select(func.sum(AgentCostEvent.cost_microdollars)))
        days = await s.scalar(select(func.sum(BudgetDay.spent_microdollars)))
        cumulative = await s.scalar(select(func.sum(AgentSession.cumulative_cost_microdollars)))
        sleeping = await s.scalar(select(func.count()).where(AgentSession.status == "sleeping"))
        versions = set(
            (await s.scalars(select(AgentSession.version).where(AgentSession.id.like("w-%")))).all()
        )
        for sid, history in result["saved"].items():
            latest = await CheckpointRepository(s, keep_last=50).load_latest(sid)
            assert latest is not None
            assert latest.message_history == history, sid
    # Every acknowledged charge is on the books exactly once (ids are unique), no more.
    assert ledger_ids == set(result["charged"])
    assert ledger == days == cumulative
    assert sleeping == 0
    assert versions == {2}  # one sleep, one wake: nobody woken twice
    assert sorted(set(result["resumed"])) == [f"w-{i:02d}" for i in range(40)]


async def test_terminated_backends(
    session_factory: Factory,
    store: RedisSessionStore,
    engine: AsyncEngine,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kills = 0

    async def chaos() -> None:
        nonlocal kills
        while True:
            await asyncio.sleep(0.03)
            async with engine.connect() as conn:
                killed = await conn.scalar(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                )
                await conn.commit()
            kills += int(killed or 0)

    result = await _workload(session_factory, store, chaos)
    await _check(session_factory, result)
    assert kills >= 20, f"only {kills} backends were terminated"
    with capsys.disabled():
        print(f"\n  {kills} backends terminated under 200 charges, 160 saves, 40 wakes")


@pytest.mark.timeout(300)
async def test_server_restart(
    tmp_path: Path, store: RedisSessionStore, capsys: pytest.CaptureFixture[str]
) -> None:
    server = EmbeddedPostgres(tmp_path / "pg")
    try:
        await asyncio.to_thread(server.start)
    except Exception as exc:  # pragma: no cover - the wheel is part of the dev install
        pytest.fail(f"embedded PostgreSQL did not start: {exc}")
    engine = create_engine(server.url, pool_size=20)
    try:
        await upgrade(engine)
        factory = create_session_factory(engine)
        restarts = 0

        async def chaos() -> None:
            nonlocal restarts
            while True:
                await asyncio.sleep(0.4)
                await asyncio.to_thread(server.stop)
                await asyncio.sleep(0.2)
                await asyncio.to_thread(server.start)
                restarts += 1

        result = await _workload(factory, store, chaos)
        await _check(factory, result)
        assert restarts >= 1
        with capsys.disabled():
            print(f"\n  {restarts} server restarts under 200 charges, 160 saves, 40 wakes")
    finally:
        await engine.dispose()
        await asyncio.to_thread(server.stop)
