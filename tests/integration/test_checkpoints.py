"""CheckpointRepository against a real PostgreSQL (BDGT-04): exact round trips,
incremental storage, retention, concurrency and payload validation."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import event, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import AgentCheckpoint, AgentSession
from app.domain import (
    CheckpointNotFound,
    CheckpointPayloadError,
    InvalidInput,
    SessionNotFound,
    SessionStatus,
)
from app.repositories import CheckpointRepository
from app.repositories.checkpoints import retention_trigger
from tests.integration.helpers import Factory, make_session


def message(i: int, size: int = 400) -> dict[str, Any]:
    rng = random.Random(i)
    body = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ,.") for _ in range(size))
    return {"role": "assistant" if i % 2 else "user", "content": body, "n": i}


def checkpoint(
    iteration: int, history: list[dict[str, Any]], session_id: str = "s-1", **extra: Any
) -> AgentCheckpoint:
    values: dict[str, Any] = {
        "sandbox_id": f"sbx-{iteration}",
        "current_phase": "implement",
        "retry_counts": {"bash": iteration % 3, "edit": 1},
        "session_cost_microdollars": 1_000 * iteration,
        "daily_budget_microdollars": 50_000,
        "agent_state": "working",
    }
    values.update(extra)
    return AgentCheckpoint(
        session_id=session_id,
        job_id="job-1",
        message_history=list(history),
        iteration_number=iteration,
        **values,
    )


def repository(
    s: AsyncSession, *, keep_last: int = 5, keyframe_every: int = 50
) -> CheckpointRepository:
    return CheckpointRepository(s, keep_last=keep_last, keyframe_every=keyframe_every)


async def save(factory: Factory, cp: AgentCheckpoint, **repo: int) -> AgentCheckpoint:
    async with factory.begin() as s:
        return await repository(s, **repo).save(cp)


async def load(factory: Factory, session_id: str, iteration: int, **repo: int) -> AgentCheckpoint:
    async with factory() as s:
        return await repository(s, **repo).load(session_id, iteration)


FIELDS = (
    "message_history",
    "sandbox_id",
    "current_phase",
    "retry_counts",
    "session_cost_microdollars",
    "daily_budget_microdollars",
    "iteration_number",
    "agent_state",
    "job_id",
)


def assert_same(got: AgentCheckpoint, want: AgentCheckpoint) -> None:
    for name in FIELDS:
        assert getattr(got, name) == getattr(want, name), name


async def rows(factory: Factory, session_id: str = "s-1") -> list[Any]:
    async with factory() as s:
        result = await s.execute(
            text(
                "SELECT iteration_number, base_message_count, parent_iteration, delta_depth,"
                " jsonb_array_length(message_history) AS stored"
                " FROM agent_checkpoints WHERE session_id = :s ORDER BY iteration_number"
            ),
            {"s": session_id},
        )
        return list(result)


# --------------------------------------------------------------------- round trip


async def test_round_trip_keyframe_and_delta(session_factory: Factory) -> None:
    await make_session(session_factory)
    history = [message(i) for i in range(6)]
    first = checkpoint(1, history[:4], sandbox_id="sbx-a", current_phase="plan")
    second = checkpoint(
        2, history, sandbox_id=None, current_phase=None, retry_counts={}, agent_state="sleeping"
    )
    await save(session_factory, first)
    await save(session_factory, second)
    stored = await rows(session_factory)
    assert [(r.base_message_count, r.stored) for r in stored] == [(0, 4), (4, 2)]
    assert_same(await load(session_factory, "s-1", 1), first)
    assert_same(await load(session_factory, "s-1", 2), second)
    async with session_factory() as s:
        latest = await CheckpointRepository(s).load_latest("s-1")
    assert latest is not None
    assert_same(latest, second)


async def test_loaded_checkpoint_is_not_attached_to_the_session(session_factory: Factory) -> None:
    await make_session(session_factory)
    await save(session_factory, checkpoint(1, [message(0)]))
    await save(session_factory, checkpoint(2, [message(0), message(1)]))
    async with session_factory.begin() as s:
        cp = await CheckpointRepository(s).load("s-1", 2)
        cp.message_history.append({"role": "user", "content": "local edit"})
        assert cp not in s
    assert len((await load(session_factory, "s-1", 2)).message_history) == 2


async def test_save_sets_last_checkpoint_at_in_the_same_transaction(
    session_factory: Factory,
) -> None:
    await make_session(session_factory)
    async with session_factory.begin() as s:
        await CheckpointRepository(s).save(checkpoint(1, [message(0)]))
        now = await s.scalar(select(func.now()))
    async with session_factory() as s:
        row = await s.get_one(AgentSession, "s-1")
    assert row.last_checkpoint_at == now


async def test_load_latest_of_a_session_without_checkpoints(session_factory: Factory) -> None:
    await make_session(session_factory)
    async with session_factory() as s:
        assert await CheckpointRepository(s).load_latest("s-1") is None
        with pytest.raises(CheckpointNotFound):
            await CheckpointRepository(s).load("s-1", 0)


async def test_same_iteration_twice_keeps_one_row_with_the_latest_content(
    session_factory: Factory,
) -> None:
    await make_session(session_factory)
    await save(session_factory, checkpoint(3, [message(0)]))
    await save(session_factory, checkpoint(3, [message(0), message(1)], current_phase="test"))
    assert len(await rows(session_factory)) == 1
    got = await load(session_factory, "s-1", 3)
    assert got.current_phase == "test"
    assert got.message_history == [message(0), message(1)]


async def test_identical_resave_is_a_no_op(session_factory: Factory) -> None:
    await make_session(session_factory)
    cp = checkpoint(1, [message(0), message(1)])
    first = await save(session_factory, cp)
    again = await save(session_factory, checkpoint(1, [message(0), message(1)]))
    assert again.updated_at == first.updated_at
    assert again.id == first.id


async def test_rewriting_a_parent_keeps_its_dependants_intact(session_factory: Factory) -> None:
    await make_session(session_factory)
    h = [message(i) for i in range(8)]
    await save(session_factory, checkpoint(1, h[:2]))
    await save(session_factory, checkpoint(2, h[:4]))
    await save(session_factory, checkpoint(3, h[:6]))
    # Iteration 2 is rewritten (a summary replaced its history): 3 must not change.
    await save(session_factory, checkpoint(2, [{"role": "system", "content": "summary"}]))
    assert (await load(session_factory, "s-1", 3)).message_history == h[:6]
    assert (await load(session_factory, "s-1", 2)).message_history == [
        {"role": "system", "content": "summary"}
    ]


async def test_out_of_order_saves(session_factory: Factory) -> None:
    await make_session(session_factory)
    h = [message(i) for i in range(12)]
    await save(session_factory, checkpoint(9, h[:9]))
    await save(session_factory, checkpoint(11, h[:11]))
    await save(session_factory, checkpoint(10, h[:10]))
    for n in (9, 10, 11):
        assert (await load(session_factory, "s-1", n)).message_history == h[:n]
    async with session_factory() as s:
        latest = await CheckpointRepository(s).load_latest("s-1")
    assert latest is not None
    assert latest.iteration_number == 11


async def test_truncation_from_the_front_writes_a_keyframe(session_factory: Factory) -> None:
    await make_session(session_factory)
    h = [message(i) for i in range(10)]
    await save(session_factory, checkpoint(1, h[:6]))
    await save(session_factory, checkpoint(2, h[3:10]))
    assert [r.base_message_count for r in await rows(session_factory)] == [0, 0]
    assert (await load(session_factory, "s-1", 2)).message_history == h[3:10]


async def test_keyframe_every_bounds_the_chain(session_factory: Factory) -> None:
    await make_session(session_factory)
    h: list[dict[str, Any]] = []
    for i in range(12):
        h.append(message(i))
        await save(session_factory, checkpoint(i, h), keyframe_every=4, keep_last=100)
    depths = [r.delta_depth for r in await rows(session_factory)]
    assert depths == [0, 1, 2, 3] * 3


# ------------------------------------------------------------------ query count


async def test_loads_are_one_select(session_factory: Factory) -> None:
    await make_session(session_factory)
    h: list[dict[str, Any]] = []
    for i in range(8):
        h.append(message(i))
        await save(session_factory, checkpoint(i, h))
    statements: list[str] = []
    async with session_factory() as s:
        sync_engine = s.bind.sync_engine  # type: ignore[union-attr]
        await s.connection()

        def record(*args: Any) -> None:
            statements.append(str(args[2]))

        event.listen(sync_engine, "before_cursor_execute", record)
        try:
            repo = CheckpointRepository(s)
            latest = await repo.load_latest("s-1")
            assert len(statements) == 1
            loaded = await repo.load("s-1", 6)
            assert len(statements) == 2
        finally:
            event.remove(sync_engine, "before_cursor_execute", record)
    assert latest is not None
    assert latest.message_history == h
    assert loaded.message_history == h[:7]
    assert all(q.lstrip().upper().startswith(("WITH", "SELECT")) for q in statements)


# --------------------------------------------------------------------- storage


@pytest.mark.parametrize("keep_last", [5, 1_000], ids=["default-retention", "keep-all"])
async def test_two_hundred_iterations_stay_under_one_and_a_half_megabytes(
    session_factory: Factory, capsys: pytest.CaptureFixture[str], keep_last: int
) -> None:
    await make_session(session_factory)
    h: list[dict[str, Any]] = []
    async with session_factory() as s:
        repo = CheckpointRepository(s, keep_last=keep_last)
        for i in range(200):
            h.extend(message(4 * i + k) for k in range(4))
            async with s.begin():
                await repo.save(checkpoint(i, h))
        size, count = (
            await s.execute(
                text(
                    "SELECT sum(pg_column_size(c.*)), count(*) FROM agent_checkpoints AS c"
                    " WHERE session_id = 's-1'"
                )
            )
        ).one()
        latest = await repo.load_latest("s-1")
    assert latest is not None
    assert latest.message_history == h
    with capsys.disabled():
        print(
            f"\n  200 iterations x 4 messages, keep_last={keep_last}:"
            f" {count} rows, {size / 1e6:.3f} MB"
        )
    assert size < 1_500_000


# ------------------------------------------------------------------- retention


async def test_retention_keeps_the_newest_and_bounds_the_rows(session_factory: Factory) -> None:
    await make_session(session_factory)
    h: list[dict[str, Any]] = []
    counts = []
    for i in range(100):
        h.append(message(i, 50))
        await save(session_factory, checkpoint(i, h), keep_last=5, keyframe_every=10)
        counts.append(len(await rows(session_factory)))
    for i in range(95, 100):
        assert (await load(session_factory, "s-1", i, keep_last=5)).message_history == h[: i + 1]
    for i in (0, 50, 94):
        with pytest.raises(CheckpointNotFound):
            await load(session_factory, "s-1", i, keep_last=5)
    # The newest 5, the chain back to their keyframe (< 10) and the rows added between
    # two retention runs.
    prune_every, _ = retention_trigger(5, 10)
    assert max(counts) <= 5 + 10 - 1 + prune_every
    async with session_factory() as s:
        listed = await CheckpointRepository(s, keep_last=5).list("s-1")
    assert [c.iteration_number for c in listed] == [99, 98, 97, 96, 95]
    assert all(c.message_count == c.iteration_number + 1 for c in listed)


async def test_prune_returns_rows_deleted_and_keeps_the_latest(session_factory: Factory) -> None:
    await make_session(session_factory)
    h: list[dict[str, Any]] = []
    for i in range(20):
        h.append(message(i, 20))
        await save(session_factory, checkpoint(i, h), keep_last=1000, keyframe_every=5)
    async with session_factory.begin() as s:
        deleted = await CheckpointRepository(s).prune("s-1", keep_last=1)
    remaining = await rows(session_factory)
    # The latest (19) is a delta on 15 (keyframe), so 15..19 stay.
    assert deleted == 15
    assert [r.iteration_number for r in remaining] == [15, 16, 17, 18, 19]
    async with session_factory.begin() as s:
        assert await CheckpointRepository(s).prune("s-1", keep_last=1) == 0
    assert (await load(session_factory, "s-1", 19, keep_last=1)).message_history == h


# ------------------------------------------------------------------ concurrency


async def test_concurrent_saves_of_neighbouring_iterations(session_factory: Factory) -> None:
    await make_session(session_factory)
    h = [message(i) for i in range(12)]
    await save(session_factory, checkpoint(9, h[:9]))
    for _ in range(5):
        await asyncio.gather(
            save(session_factory, checkpoint(10, h[:10])),
            save(session_factory, checkpoint(11, h[:11])),
        )
        assert (await load(session_factory, "s-1", 10)).message_history == h[:10]
        assert (await load(session_factory, "s-1", 11)).message_history == h[:11]


async def test_ten_writers_of_one_iteration_leave_one_row(session_factory: Factory) -> None:
    await make_session(session_factory)
    base = [message(i) for i in range(3)]
    await save(session_factory, checkpoint(1, base))
    variants = [checkpoint(2, [*base, message(100 + k)]) for k in range(10)]
    saved = await asyncio.gather(*(save(session_factory, v) for v in variants))
    stored = await rows(session_factory)
    assert [r.iteration_number for r in stored] == [1, 2]
    final = await load(session_factory, "s-1", 2)
    assert final.message_history in [v.message_history for v in variants]
    assert len({s.id for s in saved}) == 1


# -------------------------------------------------------------------- bad input


BAD = [
    ("not a list", {"message_history": {"role": "user"}}, None, ()),
    ("not objects", {"message_history": [{"a": 1}, "text"]}, 1, ()),
    ("nul", {"message_history": [{"a": 1}, {"c": [{"t": "x\x00y"}]}]}, 1, ("c", 0, "t")),
    ("nul key", {"message_history": [{"k\x00": 1}]}, 0, ("k\x00",)),
    ("unencodable", {"message_history": [{"when": datetime}]}, 0, ("when",)),
    ("datetime", {"message_history": [{"a": [datetime(2026, 1, 1, tzinfo=UTC)]}]}, 0, ("a", 0)),
    ("str enum", {"message_history": [{"role": SessionStatus.WORKING}]}, 0, ("role",)),
    ("tuple", {"message_history": [{"a": 1}, {"args": (1, 2)}]}, 1, ("args",)),
    ("float to int", {"message_history": [{"x": 1.2345678901234568e18}]}, 0, ("x",)),
    ("negative zero", {"message_history": [{"x": -0.0}]}, 0, ("x",)),
    ("nan", {"message_history": [{"score": float("nan")}]}, 0, ("score",)),
    ("surrogate", {"message_history": [{"a": "\ud800"}]}, 0, ("a",)),
    ("retry not mapping", {"retry_counts": [1, 2]}, None, ()),
    ("retry float", {"retry_counts": {"bash": 1.5}}, None, ("bash",)),
    ("retry negative", {"retry_counts": {"bash": -1}}, None, ("bash",)),
    ("retry int key", {"retry_counts": {1: 1}}, None, ("1",)),
]


@pytest.mark.parametrize(("case", "overrides", "index", "path"), BAD, ids=[b[0] for b in BAD])
async def test_bad_payloads_raise_and_write_nothing(
    session_factory: Factory,
    case: str,
    overrides: dict[str, Any],
    index: int | None,
    path: tuple[str | int, ...],
) -> None:
    await make_session(session_factory)
    await save(session_factory, checkpoint(1, [message(0)]))
    before = await rows(session_factory)
    async with session_factory() as s:
        stamp = (await s.get_one(AgentSession, "s-1")).last_checkpoint_at
    cp = checkpoint(2, [message(0), message(1)])
    for name, value in overrides.items():
        setattr(cp, name, value)
    with pytest.raises(CheckpointPayloadError) as info:
        await save(session_factory, cp)
    assert info.value.index == index
    assert tuple(str(p) for p in info.value.path) == tuple(str(p) for p in path)
    assert await rows(session_factory) == before
    async with session_factory() as s:
        assert (await s.get_one(AgentSession, "s-1")).last_checkpoint_at == stamp


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"iteration_number": -1}, "iteration_number"),
        ({"iteration_number": 2**31}, "iteration_number"),
        ({"session_cost_microdollars": -5}, "session_cost_microdollars"),
        ({"daily_budget_microdollars": 2.5}, "daily_budget_microdollars"),
        ({"agent_state": "napping"}, "agent_state"),
        ({"sandbox_id": ""}, "sandbox_id"),
        ({"current_phase": "x" * 300}, "current_phase"),
        ({"job_id": None}, "job_id"),
    ],
)
async def test_bad_fields_raise_and_write_nothing(
    session_factory: Factory, overrides: dict[str, Any], field: str
) -> None:
    await make_session(session_factory)
    cp = checkpoint(1, [message(0)])
    for name, value in overrides.items():
        setattr(cp, name, value)
    with pytest.raises(InvalidInput) as info:
        await save(session_factory, cp)
    assert info.value.field == field
    assert await rows(session_factory) == []
    async with session_factory() as s:
        assert (await s.get_one(AgentSession, "s-1")).last_checkpoint_at is None


async def test_saving_for_a_missing_session(session_factory: Factory) -> None:
    with pytest.raises(SessionNotFound):
        await save(session_factory, checkpoint(1, [message(0)], session_id="ghost"))


async def test_message_history_uses_lz4_where_available(session_factory: Factory) -> None:
    async with session_factory() as s:
        has_lz4 = await s.scalar(
            text(
                "SELECT 'lz4' = ANY(enumvals) FROM pg_settings"
                " WHERE name = 'default_toast_compression'"
            )
        )
        if not has_lz4:
            pytest.skip("this server was built without lz4; the migration skipped it")
        await make_session(session_factory)
        big = [message(i, 4000) for i in range(20)]
        await save(session_factory, checkpoint(1, big))
        method = await s.scalar(
            text("SELECT pg_column_compression(message_history) FROM agent_checkpoints")
        )
    assert method == "lz4"


# ----------------------------------------------------------------- property test

ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 4)),
        st.tuples(st.just("truncate"), st.integers(1, 3)),
        st.tuples(st.just("edit"), st.integers(0, 50)),
        st.tuples(st.just("repeat"), st.integers(0, 3)),
        st.tuples(st.just("back"), st.integers(1, 3)),
        st.tuples(st.just("prune"), st.integers(1, 4)),
    ),
    min_size=1,
    max_size=25,
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=ops, keyframe_every=st.integers(1, 4), keep_last=st.integers(1, 6))
async def test_every_retained_checkpoint_loads_as_saved(
    session_factory: Factory, ops: list[tuple[str, int]], keyframe_every: int, keep_last: int
) -> None:
    sid = f"prop-{uuid.uuid4().hex[:12]}"
    await make_session(session_factory, sid)
    repo_args = {"keep_last": keep_last, "keyframe_every": keyframe_every}
    saved: dict[int, list[dict[str, Any]]] = {}
    history: list[dict[str, Any]] = []
    iteration = 0
    serial = 0

    for op, arg in ops:
        if op == "append":
            for _ in range(arg):
                serial += 1
                history.append({"n": serial, "text": f"m{serial}", "nested": {"k": [serial]}})
        elif op == "truncate":
            history = history[arg:]
        elif op == "edit" and history:
            history[arg % len(history)] = {"edited": arg, "n": -arg}
        elif op == "repeat":
            iteration = max(0, iteration - arg)  # re-save an earlier iteration
        elif op == "back":
            iteration = iteration + arg + 1  # leave a gap, fill it later
        elif op == "prune":
            async with session_factory.begin() as s:
                await repository(s, **repo_args).prune(sid, keep_last=arg)
            saved = {k: v for k, v in saved.items() if k in sorted(saved)[-arg:]}
            continue
        await save(session_factory, checkpoint(iteration, history, session_id=sid), **repo_args)
        saved[iteration] = list(history)
        iteration += 1

    retained = sorted(saved)[-keep_last:]
    for it in retained:
        got = await load(session_factory, sid, it, **repo_args)
        assert got.message_history == saved[it], f"iteration {it}"
    async with session_factory() as s:
        latest = await repository(s, **repo_args).load_latest(sid)
    if not saved:
        assert latest is None
        return
    assert latest is not None
    assert latest.iteration_number == max(saved)
    assert latest.message_history == saved[max(saved)]


async def test_pending_orm_objects_are_flushed_before_a_save(session_factory: Factory) -> None:
    """Mixing ``session.add`` with the repository in one transaction works as with
    ``Session.execute``: the pending session row exists before the checkpoint needs it."""
    async with session_factory.begin() as s:
        s.add(
            AgentSession(id="added", job_id="j", clerk_user_id="u", tier="partner", model_used="m")
        )
        saved = await CheckpointRepository(s).save(checkpoint(0, [message(0)], session_id="added"))
    assert saved.session_id == "added"
    assert (await load(session_factory, "added", 0)).message_history == [message(0)]
