"""PostgreSQL faults while charge, save and wake loops run: backends are terminated
under them (and, on a server the test owns, the server restarts). Every transaction
happens whole or not at all, money adds up, and the loops finish their work."""

from __future__ import annotations

import asyncio
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
from app.local_services import EmbeddedPostgres
from app.repositories import BudgetRepository, CheckpointRepository, SessionRepository
from app.session_store import RedisSessionStore
from app.settings import SONNET, Settings
from tests.fixtures import StartWorker
from tests.integration.helpers import Factory

SETTINGS = Settings(_env_file=None, wake_poll_interval=0.05, backoff_max_seconds=0.5)
#: How long a client keeps retrying one operation; a restart under a loaded CPU takes
#: seconds, and nothing here may depend on how fast the machine is.
RETRY_DEADLINE = 120.0
#: Operations each loop completes at least, faults or not.
CHARGES_PER_TASK = 25
SAVES_PER_TASK = 20
#: Operations that must complete after each fault before the next one.
PROGRESS_BETWEEN_FAULTS = 8


async def retrying(op: Callable[[], Awaitable[Any]]) -> Any:
    """What a client does when its connection dies: try again (same request id)."""
    deadline = asyncio.get_running_loop().time() + RETRY_DEADLINE
    while True:
        try:
            return await op()
        except Exception:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.02)


class Progress:
    """Completed operations, and the faults the chaos made among them. The workload
    waits for the chaos: its loops run until every fault has happened, and the chaos
    waits for work to get through after each fault before it makes the next one."""

    def __init__(self, faults_wanted: int) -> None:
        self.ops = 0
        self.faults = 0
        self.faults_wanted = faults_wanted
        self._changed = asyncio.Event()

    def done(self) -> None:
        self.ops += 1
        self._changed.set()

    @property
    def chaos_over(self) -> bool:
        return self.faults >= self.faults_wanted

    async def wait_for_ops(self, n: int) -> None:
        while self.ops < n:
            self._changed.clear()
            await self._changed.wait()


Chaos = Callable[[Progress], Awaitable[None]]


async def _workload(
    factory: Factory,
    store: RedisSessionStore,
    start_worker: StartWorker,
    chaos: Chaos,
    faults: int,
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

    progress = Progress(faults)
    charged: list[str] = []
    saved: dict[str, list[dict[str, Any]]] = {}

    async def charger(i: int) -> None:
        n = 0
        while n < CHARGES_PER_TASK or not progress.chaos_over:
            rid = f"c-{i}-{n}"

            async def op(rid: str = rid) -> None:
                async with factory.begin() as s:
                    await BudgetRepository(s, SETTINGS).charge(
                        session_id=f"c-{i}", request_id=rid, model=SONNET,
                        input_tokens=100, output_tokens=10,
                    )  # fmt: skip

            await retrying(op)
            charged.append(rid)
            progress.done()
            n += 1

    async def saver(i: int) -> None:
        history: list[dict[str, Any]] = []
        n = 0
        while n < SAVES_PER_TASK or not progress.chaos_over:
            history.append({"n": n, "text": "x" * random.randint(10, 200)})
            cp = AgentCheckpoint(
                session_id=f"c-{i}", job_id="j", message_history=list(history), iteration_number=n
            )

            async def op(cp: AgentCheckpoint = cp) -> None:
                async with factory.begin() as s:
                    await CheckpointRepository(s, keep_last=50).save(cp)

            await retrying(op)
            saved[f"c-{i}"] = list(history)
            progress.done()
            n += 1

    async def count_sleeping() -> int:
        async with factory() as s:
            return int(
                await s.scalar(select(func.count()).where(AgentSession.status == "sleeping")) or 0
            )

    async with start_worker(factory, store, SETTINGS, batch_size=3) as running:
        # The chaos returns by itself after its last fault, with the server up again.
        await asyncio.gather(
            chaos(progress), *(charger(i) for i in range(8)), *(saver(i) for i in range(8))
        )
        assert progress.faults >= faults
        deadline = asyncio.get_running_loop().time() + RETRY_DEADLINE
        while asyncio.get_running_loop().time() < deadline:
            if not await retrying(count_sleeping):
                break
            await asyncio.sleep(0.05)
    resumed = running.resumed
    # Pooled connections that the chaos killed are found dead only on use: the checks
    # start from a clean pool. Nothing is checked out now (a connection checked out
    # during dispose() would go back to the discarded pool and never be closed).
    await factory.kw["bind"].dispose()
    return {"charged": charged, "saved": saved, "resumed": resumed, "progress": progress}


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
    running_worker: StartWorker,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kills = 0

    async def chaos(progress: Progress) -> None:
        nonlocal kills
        while not progress.chaos_over:
            await progress.wait_for_ops(progress.ops + 1)
            async with engine.connect() as conn:
                killed = await conn.scalar(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                )
                await conn.commit()
            kills += int(killed or 0)
            progress.faults += 1 if killed else 0

    result = await _workload(session_factory, store, running_worker, chaos, faults=20)
    await _check(session_factory, result)
    assert kills >= 20, f"only {kills} backends were terminated"
    with capsys.disabled():
        print(
            f"\n  {kills} backends terminated under {len(result['charged'])} charges,"
            f" {result['progress'].ops - len(result['charged'])} saves, 40 wakes"
        )


@pytest.mark.timeout(600)
async def test_server_restart(
    server_dir: Path,
    store: RedisSessionStore,
    running_worker: StartWorker,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = EmbeddedPostgres(server_dir / "pg")
    try:
        await asyncio.to_thread(server.start)
    except Exception as exc:  # pragma: no cover - the wheel is part of the dev install
        pytest.fail(f"embedded PostgreSQL did not start: {exc}")
    engine = create_engine(server.url, pool_size=20)
    try:
        await upgrade(engine)
        factory = create_session_factory(engine)

        async def chaos(progress: Progress) -> None:
            while not progress.chaos_over:
                # Work gets through between restarts, so every restart lands mid-run.
                await progress.wait_for_ops(progress.ops + PROGRESS_BETWEEN_FAULTS)
                await asyncio.to_thread(server.stop)
                await asyncio.to_thread(server.start)  # returns once it accepts connections
                progress.faults += 1

        result = await _workload(factory, store, running_worker, chaos, faults=3)
        await _check(factory, result)
        with capsys.disabled():
            print(
                f"\n  {result['progress'].faults} server restarts under"
                f" {len(result['charged'])} charges, 40 wakes"
            )
    finally:
        await engine.dispose()
        await asyncio.to_thread(server.stop)
