"""Checkpoint saves against a real PostgreSQL: exact types through JSONB, retention that
stays bounded whatever the iteration numbers, and the O(new messages) path that the
process cache enables (and that never stores a wrong history)."""

from __future__ import annotations

import asyncio
import hashlib
import random
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.models import AgentCheckpoint
from app.domain import CheckpointNotFound, CheckpointPayloadError, InvalidInput
from app.repositories import CheckpointRepository
from app.repositories.checkpoint_cache import HistoryCache
from app.repositories.checkpoints import retention_trigger
from tests.integration.helpers import Factory, make_session
from tests.strategies import histories, same_types

db_settings = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def message(i: int, size: int = 400) -> dict[str, Any]:
    rng = random.Random(i)
    body = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ,.") for _ in range(size))
    return {"role": "assistant" if i % 2 else "user", "content": [{"text": body}], "n": i}


def checkpoint(session_id: str, iteration: int, history: list[dict[str, Any]]) -> AgentCheckpoint:
    return AgentCheckpoint(
        session_id=session_id, job_id="job", message_history=history, iteration_number=iteration
    )


async def save(
    factory: Factory,
    cp: AgentCheckpoint,
    *,
    cache: HistoryCache | None = None,
    keep_last: int = 5,
    keyframe_every: int = 50,
) -> AgentCheckpoint:
    async with factory.begin() as s:
        repo = CheckpointRepository(
            s, keep_last=keep_last, keyframe_every=keyframe_every, cache=cache
        )
        return await repo.save(cp)


async def append(
    factory: Factory,
    cp: AgentCheckpoint,
    new_messages: int,
    *,
    cache: HistoryCache,
    keep_last: int = 5,
) -> AgentCheckpoint:
    async with factory.begin() as s:
        repo = CheckpointRepository(s, keep_last=keep_last, cache=cache)
        return await repo.append(cp, new_messages=new_messages)


async def load(
    factory: Factory, session_id: str, iteration: int, *, keep_last: int = 5
) -> list[dict[str, Any]]:
    async with factory() as s:
        cp = await CheckpointRepository(s, keep_last=keep_last).load(session_id, iteration)
    return cp.message_history


async def row_count(factory: Factory, session_id: str) -> int:
    async with factory() as s:
        found = await s.scalar(
            text("SELECT count(*) FROM agent_checkpoints WHERE session_id = :s"), {"s": session_id}
        )
    return int(found or 0)


async def new_session(factory: Factory) -> str:
    sid = f"s-{uuid.uuid4().hex[:12]}"
    await make_session(factory, sid)
    return sid


# ------------------------------------------------------------------------ fidelity


@db_settings
@given(first=histories, more=histories)
async def test_any_json_exact_history_loads_back_equal_with_the_same_types(
    session_factory: Factory, first: list[dict[str, Any]], more: list[dict[str, Any]]
) -> None:
    sid = await new_session(session_factory)
    await save(session_factory, checkpoint(sid, 1, first))  # a keyframe
    await save(session_factory, checkpoint(sid, 2, first + more))  # a delta when it extends
    assert same_types(await load(session_factory, sid, 1), first)
    assert same_types(await load(session_factory, sid, 2), first + more)
    async with session_factory() as s:
        latest = await CheckpointRepository(s).load_latest(sid)
    assert latest is not None
    assert same_types(latest.message_history, first + more)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(1.2345678901234568e18, id="float-that-jsonb-makes-an-int"),
        pytest.param(-0.0, id="negative-zero"),
        pytest.param(uuid.UUID(int=1), id="uuid"),
        pytest.param((1, 2), id="tuple"),
    ],
)
async def test_a_value_jsonb_would_change_is_refused_on_the_append_path_too(
    session_factory: Factory, value: Any
) -> None:
    sid = await new_session(session_factory)
    history = [message(0), message(1)]
    await save(session_factory, checkpoint(sid, 1, history))
    bad = [*history, {"role": "tool", "content": [{"value": value}]}]
    with pytest.raises(CheckpointPayloadError) as info:
        await save(session_factory, checkpoint(sid, 2, bad))
    assert (info.value.index, info.value.path) == (2, ("content", 0, "value"))
    assert await row_count(session_factory, sid) == 1


# ------------------------------------------------------------------------ retention


async def test_retention_runs_whatever_the_iteration_numbers(session_factory: Factory) -> None:
    """The issue's case: keep_last=60, keyframe_every=50 and odd iterations."""
    sid = await new_session(session_factory)
    history: list[dict[str, Any]] = []
    most = 0
    for i in range(400):
        history.append({"n": i})
        await save(
            session_factory, checkpoint(sid, 2 * i + 1, history), keep_last=60, keyframe_every=50
        )
        if i % 10 == 9:
            most = max(most, await row_count(session_factory, sid))
    assert most <= 170
    assert await row_count(session_factory, sid) <= 170
    for i in (340, 399):
        assert await load(session_factory, sid, 2 * i + 1, keep_last=60) == history[: i + 1]


patterns = st.lists(
    st.one_of(
        st.tuples(st.just("next"), st.integers(1, 3)),  # in order, with gaps
        st.tuples(st.just("back"), st.integers(1, 6)),  # below the newest (fills a gap)
        st.tuples(st.just("resave"), st.integers(0, 4)),  # an iteration saved before
        st.tuples(st.just("rewrite"), st.integers(1, 3)),  # a history that does not extend
    ),
    min_size=30,
    max_size=60,
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=patterns, keep_last=st.integers(1, 3), keyframe_every=st.integers(1, 3))
async def test_rows_kept_stay_bounded_for_any_iteration_pattern(
    session_factory: Factory, ops: list[tuple[str, int]], keep_last: int, keyframe_every: int
) -> None:
    sid = await new_session(session_factory)
    # Retention keeps the newest keep_last and the chains they need (at most
    # keyframe_every rows each); a keyframe on top runs it above row_cap rows; and at
    # most prune_every rows are added between runs.
    prune_every, row_cap = retention_trigger(keep_last, keyframe_every)
    bound = max(keep_last * keyframe_every, row_cap) + prune_every
    saved: dict[int, list[dict[str, Any]]] = {}
    history: list[dict[str, Any]] = []
    top = 0
    for serial, (op, arg) in enumerate(ops, 1):
        if op == "next":
            top += arg
            iteration = top
            history = [*history, {"n": serial}]
        elif op == "back":
            iteration = max(0, top - arg)
            history = [*history, {"n": serial}]
        elif op == "resave" and saved:
            iteration = sorted(saved)[-1 - arg % len(saved)]
            history = list(saved[iteration]) if arg % 2 else [*saved[iteration], {"n": serial}]
        else:
            top += 1
            iteration = top
            history = [{"rewritten": serial}, *history[arg:]]
        await save(
            session_factory,
            checkpoint(sid, iteration, history),
            keep_last=keep_last,
            keyframe_every=keyframe_every,
        )
        saved[iteration] = history
        assert await row_count(session_factory, sid) <= bound
    for it in sorted(saved)[-keep_last:]:
        assert await load(session_factory, sid, it, keep_last=keep_last) == saved[it]


# --------------------------------------------------------------- O(new messages)


@contextmanager
def sent_bytes(engine: AsyncEngine) -> Iterator[list[int]]:
    """Collects the size of the parameters of every statement sent."""
    sizes: list[int] = []

    def record(*args: Any) -> None:
        params = args[3]
        values = params.values() if isinstance(params, dict) else params
        sizes.append(sum(len(v) for v in values if isinstance(v, str | bytes)))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield sizes
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


@pytest.mark.parametrize("how", ["save", "append"])
async def test_an_extending_save_sends_only_the_new_messages(
    session_factory: Factory, engine: AsyncEngine, how: str
) -> None:
    sid = await new_session(session_factory)
    cache = HistoryCache(8)
    history = [message(i) for i in range(300)]
    with sent_bytes(engine) as first:
        await save(session_factory, checkpoint(sid, 1, history), cache=cache)
    assert sum(first) > 120_000  # the first save sends everything
    history.extend([message(300), message(301)])  # the same list, extended in place
    cp = checkpoint(sid, 2, history)
    with sent_bytes(engine) as second:
        if how == "append":
            stored = await append(session_factory, cp, 2, cache=cache)
        else:
            stored = await save(session_factory, cp, cache=cache)
    assert sum(second) < 3_000  # two messages of ~450 bytes, plus the fixed fields
    assert (stored.message_count, stored.base_message_count) == (302, 300)
    assert await load(session_factory, sid, 2) == history


async def test_an_in_place_edit_of_a_saved_message_is_stored(session_factory: Factory) -> None:
    sid = await new_session(session_factory)
    cache = HistoryCache(8)
    history = [message(i) for i in range(5)]
    await save(session_factory, checkpoint(sid, 1, history), cache=cache)
    history[2]["content"][0]["text"] = "trimmed"  # an agent shortening an old tool result
    history.append(message(5))
    await save(session_factory, checkpoint(sid, 2, history), cache=cache)
    history.append(message(6))
    await save(session_factory, checkpoint(sid, 3, history), cache=cache)
    assert (await load(session_factory, sid, 2))[2]["content"][0]["text"] == "trimmed"
    assert await load(session_factory, sid, 3) == history


async def test_append_trusts_the_prefix_and_save_still_catches_an_edit(
    session_factory: Factory,
) -> None:
    """append's contract: the caller vouches that the earlier messages are unchanged, so
    they are not read; an edit made in place is stored by the next plain save."""
    sid = await new_session(session_factory)
    cache = HistoryCache(8)
    history = [message(i) for i in range(5)]
    original = orjson.loads(orjson.dumps(history))
    await save(session_factory, checkpoint(sid, 1, history), cache=cache)
    history[2]["content"][0]["text"] = "trimmed"  # edited in place, then vouched for
    history.append(message(5))
    await append(session_factory, checkpoint(sid, 2, history), 1, cache=cache)
    assert await load(session_factory, sid, 2) == [*original, message(5)]
    history.append(message(6))
    await save(session_factory, checkpoint(sid, 3, history), cache=cache)
    assert await load(session_factory, sid, 3) == history


async def test_append_without_a_matching_last_save_is_a_plain_save(
    session_factory: Factory,
) -> None:
    sid = await new_session(session_factory)
    cache = HistoryCache(8)
    h = [message(i) for i in range(12)]
    await save(session_factory, checkpoint(sid, 1, h[:4]), cache=cache)
    # Three messages are new, the caller says one: the prefix is compared as by save().
    await append(session_factory, checkpoint(sid, 2, h[:7]), 1, cache=cache)
    # Another process (its own cache) saves on top; this one's entry is stale.
    await save(session_factory, checkpoint(sid, 3, h[2:9]), cache=HistoryCache(8))
    await append(session_factory, checkpoint(sid, 4, h[:8]), 1, cache=cache)
    # A process that never saved the session (an empty cache).
    await append(session_factory, checkpoint(sid, 5, h), 4, cache=HistoryCache(8))
    assert await load(session_factory, sid, 2) == h[:7]
    assert await load(session_factory, sid, 3) == h[2:9]
    assert await load(session_factory, sid, 4) == h[:8]
    assert await load(session_factory, sid, 5) == h


@pytest.mark.parametrize("bad", [-1, 4, True, 1.0, "1", None])
async def test_append_refuses_a_bad_count_and_writes_nothing(
    session_factory: Factory, bad: Any
) -> None:
    sid = await new_session(session_factory)
    with pytest.raises(InvalidInput) as caught:
        await append(
            session_factory,
            checkpoint(sid, 1, [message(i) for i in range(3)]),
            bad,
            cache=HistoryCache(8),
        )
    assert caught.value.field == "new_messages"
    assert await row_count(session_factory, sid) == 0


async def test_another_process_saving_in_between_is_seen(session_factory: Factory) -> None:
    """Two caches stand for two processes: each one's tip goes stale when the other saves."""
    sid = await new_session(session_factory)
    mine, theirs = HistoryCache(8), HistoryCache(8)
    h = [message(i) for i in range(10)]
    await save(session_factory, checkpoint(sid, 1, h[:4]), cache=mine)
    await save(session_factory, checkpoint(sid, 2, h[:5]), cache=mine)
    # The other process rewrites iteration 2, then appends 3 on top of its own history.
    other = [{"role": "system", "content": "summary"}]
    await save(session_factory, checkpoint(sid, 2, other), cache=theirs)
    await save(session_factory, checkpoint(sid, 3, [*other, message(50)]), cache=theirs)
    # This process still believes 2 holds h[:5]; its next save must not build on that.
    await save(session_factory, checkpoint(sid, 4, h[:7]), cache=mine)
    await save(session_factory, checkpoint(sid, 5, h[:8]), cache=mine)
    last = [*other, message(50), message(51)]
    await save(session_factory, checkpoint(sid, 6, last), cache=theirs)
    assert await load(session_factory, sid, 2) == other
    assert await load(session_factory, sid, 3) == [*other, message(50)]
    assert await load(session_factory, sid, 4) == h[:7]
    assert await load(session_factory, sid, 5) == h[:8]
    assert await load(session_factory, sid, 6) == last


async def test_a_rolled_back_save_leaves_no_stale_tip(session_factory: Factory) -> None:
    sid = await new_session(session_factory)
    cache = HistoryCache(8)
    h = [message(i) for i in range(6)]
    await save(session_factory, checkpoint(sid, 1, h[:2]), cache=cache)
    async with session_factory() as s, s.begin():
        await CheckpointRepository(s, cache=cache).save(checkpoint(sid, 2, h[:4]))
        await s.rollback()
    await save(session_factory, checkpoint(sid, 3, h[:5]), cache=cache)
    await save(session_factory, checkpoint(sid, 4, h), cache=cache)
    assert await load(session_factory, sid, 3) == h[:5]
    assert await load(session_factory, sid, 4) == h
    with pytest.raises(CheckpointNotFound):
        await load(session_factory, sid, 2)


async def test_the_append_path_keeps_keyframes_and_retention(session_factory: Factory) -> None:
    sid = await new_session(session_factory)
    cache = HistoryCache(8)
    history: list[dict[str, Any]] = []
    for i in range(30):
        history.append(message(i, 40))
        await save(
            session_factory, checkpoint(sid, i, history), cache=cache, keep_last=3, keyframe_every=4
        )
    async with session_factory() as s:
        depths = (
            await s.execute(
                text(
                    "SELECT iteration_number, delta_depth FROM agent_checkpoints"
                    " WHERE session_id = :s ORDER BY 1"
                ),
                {"s": sid},
            )
        ).all()
    assert all(d < 4 for _, d in depths)
    assert len(depths) <= 3 * 4 + 3
    for i in (27, 28, 29):
        assert await load(session_factory, sid, i, keep_last=3) == history[: i + 1]


async def wait_for_lock_wait(
    engine: AsyncEngine, query: str, waiter: asyncio.Task[Any] | None = None
) -> None:
    """Poll until a backend of this database waits on a lock while running ``query``;
    if ``waiter`` (the task expected to block) ends first, say how it ended."""
    async with engine.connect() as probe:
        for _ in range(3_000):
            if waiter is not None and waiter.done():
                raise AssertionError(f"the blocked task ended instead: {waiter.result()!r}")
            waiting = await probe.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND strpos(query, :q) > 0"
                ),
                {"q": query},
            )
            # A transaction sees pg_stat_activity as it was at its first read: end it,
            # or a probe that started before the waiter blocked never sees it block.
            await probe.rollback()
            if waiting:
                return
            await asyncio.sleep(0.01)
    raise AssertionError(f"no backend blocked on {query!r}")


async def test_a_writer_holding_the_session_that_rewrites_the_tip_neither_deadlocks_nor_corrupts(
    session_factory: Factory, engine: AsyncEngine
) -> None:
    """T1 locks the session and, while a cached append waits for that lock, rewrites the
    row the append would build on. The append must wait for the lock before it looks at
    the row (no deadlock), then see the rewrite and store a correct history."""
    sid = await new_session(session_factory)
    cache = HistoryCache(8)
    h = [message(i) for i in range(6)]
    await save(session_factory, checkpoint(sid, 1, h[:3]), cache=cache)
    rewritten = [{"role": "system", "content": "summary"}]
    body = orjson.dumps(rewritten, option=orjson.OPT_SORT_KEYS)
    async with engine.connect() as t1:
        await t1.begin()
        await t1.execute(
            text("UPDATE agent_sessions SET last_checkpoint_at = now() WHERE id = :s"), {"s": sid}
        )
        pending = asyncio.create_task(save(session_factory, checkpoint(sid, 2, h), cache=cache))
        await wait_for_lock_wait(engine, "INSERT INTO agent_checkpoints", pending)
        await t1.execute(
            text(
                "UPDATE agent_checkpoints SET message_history = CAST(:h AS jsonb),"
                " message_count = 1, history_digest = :d"
                " WHERE session_id = :s AND iteration_number = 1"
            ),
            {"h": body.decode(), "d": hashlib.sha256(body).digest(), "s": sid},
        )
        await t1.commit()
    await pending
    assert await load(session_factory, sid, 1) == rewritten
    assert await load(session_factory, sid, 2) == h


async def test_two_processes_appending_to_one_session_at_once_store_what_each_gave(
    session_factory: Factory,
) -> None:
    """Two runners (two caches: two processes) append to one session at the same time,
    each to its own history, on interleaved iterations: every save either builds on a
    tip that is still the session's newest or falls back to the full path, so each
    iteration loads back as the runner that saved it gave it."""
    sid = await new_session(session_factory)
    saved: dict[int, list[dict[str, Any]]] = {}

    async def runner(first: int, offset: int) -> None:
        cache = HistoryCache(8)
        history: list[dict[str, Any]] = []
        for iteration in range(first, 60, 2):
            history.extend([message(offset + 2 * iteration), message(offset + 2 * iteration + 1)])
            saved[iteration] = list(history)
            cp = checkpoint(sid, iteration, history)
            await append(session_factory, cp, 2, cache=cache, keep_last=10**6)
            await asyncio.sleep(0)

    await asyncio.gather(runner(0, 0), runner(1, 10_000))
    for iteration, history in saved.items():
        assert await load(session_factory, sid, iteration, keep_last=10**6) == history


async def test_the_periodic_keyframe_is_built_in_the_database(
    session_factory: Factory, engine: AsyncEngine
) -> None:
    """Every keyframe_every-th save stores the whole history, yet sends only the new
    messages: the database assembles the keyframe from the chain."""
    sid = await new_session(session_factory)
    cache = HistoryCache(8)
    history = [message(i) for i in range(200)]
    await save(session_factory, checkpoint(sid, 0, history), cache=cache, keyframe_every=3)
    for it in range(1, 7):
        history.append(message(1000 + it))
        with sent_bytes(engine) as sent:
            await save(session_factory, checkpoint(sid, it, history), cache=cache, keyframe_every=3)
        assert sum(sent) < 3_000, it
        assert await load(session_factory, sid, it) == history
    async with session_factory() as s:
        stored = (
            await s.execute(
                text(
                    "SELECT iteration_number, base_message_count, message_count,"
                    " jsonb_array_length(message_history) FROM agent_checkpoints"
                    " WHERE session_id = :s ORDER BY 1"
                ),
                {"s": sid},
            )
        ).all()
    keyframes = [(it, n, length) for it, base, n, length in stored if base == 0]
    assert [it for it, _, _ in keyframes] == [0, 3, 6]
    assert all(n == length for _, n, length in keyframes)  # whole histories


edits = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 3)),
        st.tuples(st.just("edit"), st.integers(0, 1_000)),  # in place, nested
        st.tuples(st.just("retag"), st.integers(0, 1_000)),  # add/remove a key in place
        st.tuples(st.just("truncate"), st.integers(1, 2)),
        st.tuples(st.just("other"), st.integers(0, 3)),  # another process appends
        st.tuples(st.just("resave"), st.integers(1, 3)),  # an earlier iteration again
    ),
    min_size=5,
    max_size=30,
)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=edits, keyframe_every=st.integers(1, 4))
async def test_whatever_the_caller_does_to_its_list_each_save_loads_as_it_was(
    session_factory: Factory, ops: list[tuple[str, int]], keyframe_every: int
) -> None:
    """One list object, appended to and edited in place between saves (as agents do
    when they move a cache_control marker or trim an old tool result), saved by this
    process and sometimes by another: every checkpoint loads as the list was."""
    sid = await new_session(session_factory)
    mine, theirs = HistoryCache(4), HistoryCache(4)
    history: list[dict[str, Any]] = []
    saved: dict[int, list[dict[str, Any]]] = {}
    iteration = 0
    for n, (op, arg) in enumerate(ops):
        cache = mine
        if op == "append":
            history.extend({"role": "user", "content": [{"text": f"m{n}.{k}"}]} for k in range(arg))
        elif op == "edit" and history:
            history[arg % len(history)]["content"][0]["text"] = f"edited {n}"
        elif op == "retag" and history:
            message = history[arg % len(history)]
            if "cache_control" in message:
                del message["cache_control"]
            else:
                message["cache_control"] = {"type": "ephemeral"}
        elif op == "truncate":
            del history[:arg]
        elif op == "other":
            cache = theirs
            history.extend(
                {"role": "assistant", "content": [{"text": f"o{n}.{k}"}]} for k in range(arg)
            )
        elif op == "resave" and saved:
            iteration = max(0, iteration - arg)
        iteration += 1
        await save(
            session_factory,
            checkpoint(sid, iteration, history),
            cache=cache,
            keep_last=100,
            keyframe_every=keyframe_every,
        )
        saved[iteration] = orjson.loads(orjson.dumps(history))  # a deep snapshot
    for it, expected in saved.items():
        assert same_types(await load(session_factory, sid, it, keep_last=100), expected), it


# ------------------------------------------------------------------------- loads


async def test_a_load_outside_a_transaction_leaves_the_session_without_one(
    session_factory: Factory, engine: AsyncEngine
) -> None:
    """Loads on a session with no transaction run in autocommit mode: one statement, no
    BEGIN and ROLLBACK around it, and the caller's session is left as it was."""
    sid = await new_session(session_factory)
    history = [message(i) for i in range(3)]
    await save(session_factory, checkpoint(sid, 1, history))
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(args[2])

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        async with session_factory() as s:
            repo = CheckpointRepository(s)
            latest = await repo.load_latest(sid)
            assert not s.in_transaction()
            assert (await repo.load(sid, 1)).message_history == history
            assert [info.iteration_number for info in await repo.list(sid)] == [1]
            assert not s.in_transaction()
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)
    assert latest is not None
    assert latest.message_history == history
    assert len(statements) == 3  # the three SELECTs, nothing else on the connection


async def test_a_load_inside_the_callers_transaction_sees_what_it_wrote(
    session_factory: Factory,
) -> None:
    sid = await new_session(session_factory)
    await save(session_factory, checkpoint(sid, 1, [message(0)]))
    async with session_factory() as s, s.begin():
        repo = CheckpointRepository(s)
        await repo.save(checkpoint(sid, 2, [message(0), message(1)]))
        latest = await repo.load_latest(sid)
        assert latest is not None
        assert latest.iteration_number == 2
        found = (await repo.load_latest_many([sid]))[sid]
        assert isinstance(found, AgentCheckpoint)
        assert found.iteration_number == 2
        await s.rollback()
    async with session_factory() as s:
        latest = await CheckpointRepository(s).load_latest(sid)
    assert latest is not None
    assert latest.iteration_number == 1


COLUMNS = (
    "id",
    "session_id",
    "job_id",
    "iteration_number",
    "sandbox_id",
    "current_phase",
    "retry_counts",
    "session_cost_microdollars",
    "daily_budget_microdollars",
    "agent_state",
    "message_count",
    "base_message_count",
    "parent_iteration",
    "delta_depth",
    "history_digest",
    "created_at",
    "updated_at",
    "message_history",
)


async def test_what_a_save_returns_is_what_a_load_finds(session_factory: Factory) -> None:
    """A save planned from the cache gets back only what the database generated and
    builds the rest from what it sent: every field must still be what is stored, for
    the first keyframe, the deltas and the keyframe the database assembles."""
    sid = await new_session(session_factory)
    cache = HistoryCache(8)
    history: list[dict[str, Any]] = []
    for it in range(1, 6):
        history.append(message(it))
        cp = AgentCheckpoint(
            session_id=sid,
            job_id="job",
            message_history=history,
            iteration_number=it,
            sandbox_id="sbx",
            current_phase=f"phase {it}",
            retry_counts={"bash": it},
            session_cost_microdollars=1_000 * it,
            daily_budget_microdollars=50_000,
        )
        returned = await save(session_factory, cp, cache=cache, keyframe_every=3)
        async with session_factory() as s:
            loaded = await CheckpointRepository(s).load(sid, it)
        assert {c: getattr(returned, c) for c in COLUMNS} == {
            c: getattr(loaded, c) for c in COLUMNS
        }
        assert loaded.message_history == history
    assert (returned.base_message_count, returned.delta_depth) == (4, 1)  # 5: a delta on 4
