"""A worker hook may take the Runtime that delivered it, as ``hook(restored, rt)``,
async or plain; ``hook(restored)`` keeps working; a worker without a hook says so."""

from __future__ import annotations

import logging
import threading

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app import lifecycle
from app.db.models import AgentCheckpoint
from app.lifecycle import RestoredSession, Runtime
from app.repositories import CheckpointRepository
from app.session_store import RedisSessionStore
from app.settings import Settings
from app.workers import WakeWorker
from app.workers.wake import takes_runtime
from tests.e2e.conftest import make_due_sleepers
from tests.integration.helpers import Factory

SETTINGS = Settings(_env_file=None)


def test_how_many_arguments_a_hook_takes() -> None:
    async def one(restored: RestoredSession) -> None: ...

    async def two(restored: RestoredSession, rt: Runtime) -> None: ...

    def plain_two(restored: RestoredSession, rt: Runtime) -> None: ...

    def keyword_only(restored: RestoredSession, *, rt: Runtime | None = None) -> None: ...

    assert (takes_runtime(one), takes_runtime(two), takes_runtime(plain_two)) == (
        False,
        True,
        True,
    )
    assert takes_runtime(keyword_only) is False
    assert takes_runtime(print) is True  # *args: it is handed both


async def test_an_async_hook_gets_the_runtime_it_was_delivered_by(
    engine: AsyncEngine, session_factory: Factory, store: RedisSessionStore
) -> None:
    await make_due_sleepers(engine, 3, prefix="hook-rt")
    seen: list[tuple[str, Runtime]] = []

    async def hook(restored: RestoredSession, rt: Runtime) -> None:
        # The Runtime works: the hook reads the session through it.
        state = await lifecycle.session_state(rt, restored.session.id)
        assert state["status"] == "working"
        seen.append((restored.session.id, rt))

    worker = WakeWorker(session_factory, store, SETTINGS, on_resume=hook)
    await worker.run_once()

    assert sorted(sid for sid, _ in seen) == [f"hook-rt-0000{i}" for i in (1, 2, 3)]
    assert all(rt is worker.rt for _, rt in seen)


async def test_a_plain_hook_with_the_runtime_runs_in_a_thread(
    engine: AsyncEngine, session_factory: Factory, store: RedisSessionStore
) -> None:
    await make_due_sleepers(engine, 2, prefix="hook-plain")
    seen: list[tuple[str, Runtime, bool]] = []

    def hook(restored: RestoredSession, rt: Runtime) -> None:
        main = threading.current_thread() is threading.main_thread()
        seen.append((restored.session.id, rt, main))

    worker = WakeWorker(session_factory, store, SETTINGS, on_resume=hook)
    await worker.run_once()

    assert sorted(sid for sid, _, _ in seen) == ["hook-plain-00001", "hook-plain-00002"]
    assert all(rt is worker.rt and not main for _, rt, main in seen)


async def test_a_one_argument_hook_still_works(
    engine: AsyncEngine, session_factory: Factory, store: RedisSessionStore
) -> None:
    await make_due_sleepers(engine, 1, prefix="hook-one")
    seen: list[str] = []

    async def hook(restored: RestoredSession) -> None:
        seen.append(restored.session.id)

    await WakeWorker(session_factory, store, SETTINGS, on_resume=hook).run_once()
    assert seen == ["hook-one-00001"]


def test_a_worker_without_a_hook_warns(
    session_factory: Factory, store: RedisSessionStore, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="app.worker"):
        WakeWorker(session_factory, store, SETTINGS)
    assert any("without a resume hook" in r.getMessage() for r in caplog.records)


async def test_a_restored_checkpoint_says_working_and_saves_as_such(
    session_factory: Factory, store: RedisSessionStore
) -> None:
    rt = Runtime(session_factory, store, SETTINGS)
    session = await lifecycle.start_session(
        rt, session_id="st-1", job_id="j", clerk_user_id="u-st", tier="partner"
    )
    await lifecycle.sleep_session(
        rt,
        AgentCheckpoint(
            session_id="st-1", job_id="j", message_history=[{"n": 1}], iteration_number=1
        ),
        resume_token=session.resume_token,
    )
    restored = await lifecycle.wake_session(rt, "st-1")
    assert restored.checkpoint is not None
    assert restored.checkpoint.agent_state == "working"  # not the "sleeping" it was saved with
    async with session_factory() as s:  # the stored row is left as it was
        stored = await CheckpointRepository(s).load_latest("st-1")
    assert stored is not None
    assert stored.agent_state == "sleeping"

    saved = await lifecycle.save_checkpoint(
        rt, restored.checkpoint, resume_token=restored.resume_token
    )  # as is, the way a hook that only resumes might
    assert saved.agent_state == "working"
