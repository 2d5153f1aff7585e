"""The resume hook of the resume soak, loaded by worker processes (``--on-resume``).

The hook fails now and then; otherwise it starts a runner in the worker process and
returns. A runner works a little (heartbeat, checkpoint with its token), then sleeps the
session for a moment so it is woken again, or completes it once the soak is winding
down. Some runners vanish without a word, some stall past the runner timeout and come
back (to be fenced off), and a SIGKILL of the worker takes every runner
it holds with it: the orphan detection has to find those sessions again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis

from app.db.engine import create_engine, create_session_factory
from app.db.models import AgentCheckpoint
from app.domain import StaleRunner
from app.lifecycle import RestoredSession, Runtime, complete_session, heartbeat
from app.repositories import CheckpointRepository, ResumeRepository, SessionRepository
from app.session_store import RedisSessionStore
from app.settings import Settings

log = logging.getLogger("soak.runner")
HOOK_FAILS = 0.10
RUNNER_VANISHES = 0.05
RUNNER_STALLS = 0.05
_runtime: Runtime | None = None
_runners: set[asyncio.Task[None]] = set()


def runtime() -> Runtime:
    global _runtime
    if _runtime is None:
        settings = Settings()
        assert settings.database_url
        assert settings.redis_url
        store = RedisSessionStore(Redis.from_url(settings.redis_url), prefix=settings.redis_prefix)
        engine = create_engine(settings.database_url, pool_size=10)
        _runtime = Runtime(create_session_factory(engine), store, settings)
    return _runtime


def record(event: str, restored: RestoredSession) -> None:
    with open(os.environ["SOAK_LOG"], "a") as out:
        out.write(f"{event} {restored.session.id} {restored.resume_token} {os.getpid()}\n")


async def run(restored: RestoredSession) -> None:
    """The hook."""
    if random.random() < HOOK_FAILS:
        record("hook-failed", restored)
        raise RuntimeError("the runner pool is full, try again")
    record("delivered", restored)
    task = asyncio.create_task(_runner(restored))
    _runners.add(task)
    task.add_done_callback(_runners.discard)


async def _runner(restored: RestoredSession) -> None:
    rt = runtime()
    sid, token = restored.session.id, restored.resume_token
    if random.random() < RUNNER_VANISHES:
        record("vanished", restored)
        return
    try:
        if random.random() < RUNNER_STALLS:
            # Silent for longer than RUNNER_TIMEOUT_SECONDS, then back: by now another
            # runner has the session, and this one must be fenced off.
            await asyncio.sleep(2 * rt.settings.runner_timeout_seconds)
        await asyncio.sleep(random.uniform(0.05, 0.3))
        await heartbeat(rt, sid, resume_token=token)
        iteration = restored.checkpoint.iteration_number + 1 if restored.checkpoint else 1
        history = [{"role": "assistant", "n": i} for i in range(iteration)]
        async with rt.session_factory.begin() as s:
            await CheckpointRepository(s).save(
                AgentCheckpoint(
                    session_id=sid, job_id="soak", message_history=history,
                    iteration_number=iteration,
                ),
                resume_token=token,
            )  # fmt: skip
        if await asyncio.to_thread(os.path.exists, os.environ["SOAK_STOP_FILE"]):
            await complete_session(rt, sid, resume_token=token)  # fenced like the rest
            record("completed", restored)
            return
        async with rt.session_factory.begin() as s:
            # Fenced like a save: the heartbeat locks the row and checks the token first.
            await ResumeRepository(s).heartbeat(sid, token)
            await SessionRepository(s).transition(
                sid, "sleeping", expected="working",
                wake_at=datetime.now(UTC) + timedelta(seconds=random.uniform(0.1, 0.6)),
            )  # fmt: skip
        record("slept", restored)
    except StaleRunner:
        record("fenced", restored)
    except Exception as exc:  # a runner that fails goes silent: the orphan path takes over
        log.warning("runner session=%s error=%r", sid, str(exc))
