"""Retention of finished sessions and whole-session deletion: what goes, and that nothing
else does. Ages are set by moving ``completed_at`` back in SQL, on the database clock
that retention reads, so no test depends on the date."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select

from app.db.models import AgentCheckpoint, AgentSession
from app.domain import InvalidInput, SessionNotFound
from app.lifecycle import (
    Runtime,
    charge,
    delete_session,
    purge_finished,
)
from app.session_store import RedisSessionStore
from app.settings import Settings
from app.workers import BudgetDaemon
from tests.fleet import AGE_DAYS, FLEET, OLD, census, make_fleet
from tests.integration.helpers import SONNET, Factory


@pytest.fixture
def settings() -> Settings:
    return Settings(_env_file=None, retention_days=30, retention_batch=500)


@pytest.fixture
def rt(session_factory: Factory, store: RedisSessionStore, settings: Settings) -> Runtime:
    return Runtime(session_factory, store, settings)


async def test_purge_deletes_what_it_says_and_nothing_else(rt: Runtime) -> None:
    await make_fleet(rt, FLEET, AGE_DAYS)
    before = await census(rt)
    assert set(before["sessions"].values()) == {
        "working", "sleeping", "budget_exceeded", "completed"
    }  # fmt: skip
    # complete_session kept 3 checkpoints and saves none of its own without one given.
    assert all(before["checkpoints"][sid] == 3 for sid in FLEET)

    preview = await purge_finished(rt, dry_run=True)
    assert (sorted(preview.session_ids), preview.checkpoints, preview.redis_keys) == (OLD, 6, 2)
    assert preview.dry_run
    assert await census(rt) == before  # a dry run deletes nothing

    done = await purge_finished(rt)
    assert (sorted(done.session_ids), done.checkpoints, done.redis_keys) == (OLD, 6, 2)
    after = await census(rt)
    # Exactly what it reported went: the old sessions' checkpoints and keys.
    assert after["checkpoints"] == {
        sid: n for sid, n in before["checkpoints"].items() if sid not in OLD
    }
    assert after["keys"] == before["keys"] - set(OLD)
    # Everything else stays: every session row and status, the whole ledger, the days.
    for table in ("sessions", "ledger", "budget_days"):
        assert after[table] == before[table]
    # Purged once: a second pass finds nothing, and a dry run agrees.
    assert (await purge_finished(rt)).session_ids == []
    assert (await purge_finished(rt, dry_run=True)).session_ids == []


async def test_purge_older_than_moves_the_line(rt: Runtime) -> None:
    await make_fleet(rt, FLEET, AGE_DAYS)
    assert sorted((await purge_finished(rt, older_than_days=365, dry_run=True)).session_ids) == [
        "done-400d"
    ]
    # Zero days: every completed session, and still no live one.
    everything = await purge_finished(rt, older_than_days=0)
    assert sorted(everything.session_ids) == ["done-29d", "done-31d", "done-400d", "done-recent"]
    remaining = (await census(rt))["checkpoints"]
    assert sorted(remaining) == ["sleeping", "stopped", "working"]


@pytest.mark.parametrize("days", [-1, True, 1.5, "30"])
async def test_bad_retention_ages_are_typed_errors(rt: Runtime, days: object) -> None:
    with pytest.raises(InvalidInput):
        await purge_finished(rt, older_than_days=days)  # type: ignore[arg-type]


async def test_the_daemon_purges_in_bounded_batches(
    session_factory: Factory, store: RedisSessionStore
) -> None:
    settings = Settings(_env_file=None, retention_days=30, retention_batch=3)
    rt = Runtime(session_factory, store, settings)
    old = {f"old-{i}": "completed" for i in range(7)}
    await make_fleet(rt, {**old, "working": "working"}, dict.fromkeys(old, 45))
    daemon = BudgetDaemon(session_factory, store, settings)
    assert [(await daemon.run_once()).purged for _ in range(4)] == [3, 3, 1, 0]
    async with session_factory() as s:
        left = dict(
            (
                await s.execute(
                    select(AgentCheckpoint.session_id, func.count()).group_by(
                        AgentCheckpoint.session_id
                    )
                )
            ).all()
        )
        purged = await s.scalar(select(func.count()).where(AgentSession.purged_at.is_not(None)))
    assert left == {"working": 3}
    assert purged == 7


async def test_delete_session_removes_it_entirely_and_says_what_it_removed(
    rt: Runtime,
) -> None:
    await make_fleet(rt, {"gone": "sleeping", "kept": "working"}, {})
    before = await census(rt, ["gone", "kept"])
    assert before["keys"] == {"gone", "kept"}
    removed = await delete_session(rt, "gone")
    assert removed.as_dict() == {
        "session_id": "gone",
        "status": "sleeping",
        "sessions": 1,
        "checkpoints": 3,
        "cost_events": 2,
        "redis_keys": 1,
    }
    after = await census(rt, ["gone", "kept"])
    assert "gone" not in after["sessions"]
    assert "gone" not in after["checkpoints"]
    assert "gone" not in after["ledger"]
    assert "gone" not in after["keys"]
    # The other session is untouched, and the user's day keeps the money spent.
    assert after["sessions"] == {"kept": "working"}
    assert after["keys"] == {"kept"}
    assert after["checkpoints"] == {"kept": 3}
    assert after["ledger"] == {"kept": 2}
    assert after["budget_days"] == before["budget_days"]
    with pytest.raises(SessionNotFound):
        await delete_session(rt, "gone")
    with pytest.raises(SessionNotFound):
        await charge(
            rt, session_id="gone", request_id="late", model=SONNET,
            input_tokens=1, output_tokens=1,
        )  # fmt: skip


async def test_retention_with_redis_down_still_deletes_the_checkpoints(
    rt: Runtime, session_factory: Factory, settings: Settings
) -> None:
    await make_fleet(rt, FLEET, AGE_DAYS)
    dead = RedisSessionStore(Redis(host="127.0.0.1", port=1), prefix="unused", timeout=0.3)
    try:
        down = Runtime(session_factory, dead, settings)
        preview = await purge_finished(down, dry_run=True)
        assert (sorted(preview.session_ids), preview.redis_keys, preview.store_errors) == (
            OLD,
            0,
            1,
        )
        done = await purge_finished(down)
        assert (sorted(done.session_ids), done.checkpoints, done.store_errors) == (OLD, 6, 1)
    finally:
        await dead.redis.aclose()
    left = (await census(rt))["checkpoints"]
    assert not set(OLD) & set(left)
