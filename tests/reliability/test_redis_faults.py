"""Redis stops in the middle of a run: no session is lost, and the keys come back from
PostgreSQL once Redis does. The Redis here is one the test owns."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from redis.asyncio import Redis
from sqlalchemy import func, select

from app.db.models import AgentSession
from app.domain import SessionStoreUnavailable
from app.local_services import EmbeddedRedis
from app.repositories import SessionRepository
from app.session_store import RedisSessionStore
from app.settings import SONNET, Settings
from tests.fixtures import StartWorker
from tests.integration.helpers import Factory, eventually


async def count(factory: Factory, status: str) -> int:
    async with factory() as s:
        return int(await s.scalar(select(func.count()).where(AgentSession.status == status)) or 0)


async def versions(factory: Factory) -> dict[str, tuple[str, int]]:
    async with factory() as s:
        rows = await s.execute(select(AgentSession.id, AgentSession.status, AgentSession.version))
        return {sid: (status, version) for sid, status, version in rows}


async def mirrored(
    store: RedisSessionStore, expected: dict[str, tuple[str, int]]
) -> dict[str, tuple[str, int]]:
    found: dict[str, tuple[str, int]] = {}
    for sid in expected:
        try:
            state = await store.get(sid, refresh=False)
        except SessionStoreUnavailable:
            return {}
        if state is not None:
            found[sid] = (state["status"], state["version"])
    return found


async def test_redis_stops_mid_run_and_keys_are_rebuilt(
    session_factory: Factory, server_dir: Path, running_worker: StartWorker
) -> None:
    redis_server = EmbeddedRedis(server_dir)
    await asyncio.to_thread(redis_server.start)
    client = Redis.from_url(redis_server.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    store = RedisSessionStore(client, prefix="fault", timeout=0.5)
    settings = Settings(
        _env_file=None, wake_poll_interval=0.05, daemon_interval=0.2, backoff_max_seconds=0.3
    )
    now = datetime.now(UTC)
    try:
        async with session_factory.begin() as s:
            repo = SessionRepository(s)
            for i in range(60):
                await repo.create(
                    id=f"r-{i:02d}",
                    job_id="j",
                    clerk_user_id="u",
                    tier="partner",
                    model_used=SONNET,
                )
                # Half are due now, half a little later: some wakes happen while Redis is down.
                due = now - timedelta(seconds=1) if i % 2 else now + timedelta(seconds=1)
                await repo.transition(f"r-{i:02d}", "sleeping", expected="working", wake_at=due)

        async def all_awake() -> bool:
            return await count(session_factory, "sleeping") == 0

        async with running_worker(
            session_factory, store, settings, with_daemon=True, batch_size=5
        ) as running:
            await asyncio.to_thread(redis_server.stop)  # Redis goes away mid-run
            # The later half falls due while it is down: PostgreSQL wakes must not wait.
            await eventually(all_awake)
            await asyncio.to_thread(redis_server.start)  # back, empty: it keeps nothing on disk
            # Any process's next reconciliation pass rebuilds every key from PostgreSQL, the
            # ones written before the outage (lost with that Redis) included.
            expected = await versions(session_factory)

            async def converged() -> bool:
                return await mirrored(store, expected) == expected

            await eventually(converged)
        assert await mirrored(store, expected) == expected
        resumed = running.resumed
        assert sorted(set(resumed)) == [f"r-{i:02d}" for i in range(60)]
    finally:
        await client.aclose()
        await asyncio.to_thread(redis_server.stop)
