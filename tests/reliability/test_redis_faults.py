"""Redis stops in the middle of a run: no session is lost, and the keys come back from
PostgreSQL once Redis does. The Redis here is one the test owns."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from redis.asyncio import Redis
from sqlalchemy import func, select

from app.db.models import AgentSession
from app.lifecycle import RestoredSession
from app.local_services import EmbeddedRedis
from app.repositories import SessionRepository
from app.session_store import RedisSessionStore
from app.settings import SONNET, Settings
from app.workers import WakeWorker
from tests.integration.helpers import Factory


async def test_redis_stops_mid_run_and_keys_are_rebuilt(
    session_factory: Factory, server_dir: Path
) -> None:
    redis_server = EmbeddedRedis(server_dir)
    await asyncio.to_thread(redis_server.start)
    client = Redis.from_url(redis_server.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    store = RedisSessionStore(client, prefix="fault", timeout=0.5)
    settings = Settings(_env_file=None, wake_poll_interval=0.05, backoff_max_seconds=0.3)
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
        resumed: list[str] = []

        def hook(restored: RestoredSession) -> None:
            resumed.append(restored.session.id)

        stop = asyncio.Event()
        worker = WakeWorker(session_factory, store, settings, on_resume=hook, batch_size=5)
        task = asyncio.create_task(worker.run_forever(stop))
        await asyncio.sleep(0.05)
        await asyncio.to_thread(redis_server.stop)  # Redis goes away mid-run
        # The later half falls due while it is down: PostgreSQL wakes must not wait for it.
        asleep = -1
        for _ in range(200):
            async with session_factory() as s:
                asleep = int(
                    await s.scalar(select(func.count()).where(AgentSession.status == "sleeping"))
                    or 0
                )
            if asleep == 0:
                break
            await asyncio.sleep(0.05)
        assert asleep == 0, "PostgreSQL wakes must not wait for Redis"
        assert worker.rt.pending_keys, "some keys should have failed while Redis was down"
        await asyncio.to_thread(redis_server.start)  # back, empty: it keeps nothing on disk
        for _ in range(100):
            if not worker.rt.pending_keys:
                break
            await asyncio.sleep(0.05)
        stop.set()
        await task
        assert worker.rt.pending_keys == set()
        keys = {k.decode() async for k in client.scan_iter(match="fault:*")}
        missing = {f"fault:r-{i:02d}" for i in range(60)} - keys
        # Keys written before the outage died with that Redis; the rest were rebuilt.
        for key in sorted(keys):
            state = await store.get(key.removeprefix("fault:"))
            assert state is not None
            assert state["status"] == "working"
        assert len(keys) + len(missing) == 60
        assert len(keys) >= 1
        assert sorted(set(resumed)) == [f"r-{i:02d}" for i in range(60)]
        assert len(resumed) == 60
    finally:
        await client.aclose()
        await asyncio.to_thread(redis_server.stop)
