"""SessionRepository against a real PostgreSQL: the guarded state machine and its races."""

from __future__ import annotations

import asyncio
import itertools
import json
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from sqlalchemy import func, select

from app.db.models import AgentSession
from app.domain import (
    ALLOWED_SOURCES,
    InvalidInput,
    InvalidTransition,
    SessionAlreadyExists,
    SessionNotFound,
    SessionStatus,
)
from app.repositories import WAKE_CHANNEL, SessionRepository
from tests.integration.helpers import SONNET, Factory, later, make_session
from tests.servers import plain_dsn

S = SessionStatus


async def _row(factory: Factory, session_id: str = "s-1") -> AgentSession:
    async with factory() as s:
        return await SessionRepository(s).get(session_id)


async def _count(factory: Factory) -> int:
    async with factory() as s:
        return int(await s.scalar(select(func.count()).select_from(AgentSession)) or 0)


async def _put_in(factory: Factory, status: SessionStatus, session_id: str = "s-1") -> None:
    """Walk a fresh working session along allowed edges to ``status``."""
    async with factory.begin() as s:
        repo = SessionRepository(s)
        if status is S.SLEEPING:
            await repo.transition(session_id, S.SLEEPING, expected=S.WORKING, wake_at=later())
        elif status is S.BUDGET_EXCEEDED:
            await repo.transition(session_id, S.BUDGET_EXCEEDED, expected=S.WORKING)
        elif status is S.COMPLETED:
            await repo.transition(session_id, S.COMPLETED, expected=S.WORKING)


# ------------------------------------------------------------------------ create


async def test_create_returns_a_working_session(session_factory: Factory) -> None:
    created = await make_session(session_factory, budget=5_000)
    assert (created.status, created.version, created.wake_at) == ("working", 0, None)
    stored = await _row(session_factory)
    assert stored.model_used == SONNET
    assert stored.daily_budget_microdollars == 5_000
    assert stored.started_at.tzinfo is not None


async def test_duplicate_id_is_rejected_and_the_first_row_kept(session_factory: Factory) -> None:
    await make_session(session_factory, model=SONNET)
    with pytest.raises(SessionAlreadyExists) as info:
        await make_session(session_factory, model="other-model")
    assert info.value.session_id == "s-1"
    assert (await _row(session_factory)).model_used == SONNET


async def test_duplicate_leaves_the_callers_transaction_usable(session_factory: Factory) -> None:
    await make_session(session_factory)
    async with session_factory.begin() as s:
        repo = SessionRepository(s)
        with pytest.raises(SessionAlreadyExists):
            await repo.create(
                id="s-1", job_id="j", clerk_user_id="u", tier="partner", model_used=SONNET
            )
        await repo.create(
            id="s-2", job_id="j", clerk_user_id="u", tier="partner", model_used=SONNET
        )
    assert await _count(session_factory) == 2


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tier", "enterprise"),
        ("tier", None),
        ("id", ""),
        ("id", "   "),
        ("id", "x" * 256),
        ("job_id", 42),
        ("clerk_user_id", "nul\x00byte"),
        ("model_used", ""),
        ("daily_budget_microdollars", -1),
        ("daily_budget_microdollars", 1.5),
        ("daily_budget_microdollars", True),
    ],
)
async def test_create_rejects_bad_input_before_any_sql(
    session_factory: Factory, field: str, value: object
) -> None:
    kwargs: dict[str, object] = {
        "id": "s-1",
        "job_id": "j",
        "clerk_user_id": "u",
        "tier": "partner",
        "model_used": SONNET,
    }
    kwargs[field] = value
    async with session_factory.begin() as s:
        statements: list[str] = []
        sync_engine = s.bind.sync_engine  # type: ignore[union-attr]

        def record(*args: object) -> None:
            statements.append(str(args[2]))

        from sqlalchemy import event

        event.listen(sync_engine, "before_cursor_execute", record)
        try:
            with pytest.raises(InvalidInput) as info:
                await SessionRepository(s).create(**kwargs)  # type: ignore[arg-type]
        finally:
            event.remove(sync_engine, "before_cursor_execute", record)
    assert info.value.field == field
    assert statements == []
    assert await _count(session_factory) == 0


async def test_no_method_changes_model_used(session_factory: Factory) -> None:
    """BDGT-05: the model is fixed at creation, whatever happens to the session."""
    await make_session(session_factory, model=SONNET)
    async with session_factory.begin() as s:
        repo = SessionRepository(s)
        await repo.add_cost("s-1", 10)
        await repo.transition("s-1", S.SLEEPING, expected=S.WORKING, wake_at=later())
        await repo.request_wake(session_id="s-1")
        await repo.transition("s-1", S.WORKING, expected=S.SLEEPING)
        await repo.transition("s-1", S.COMPLETED, expected=S.WORKING)
    assert (await _row(session_factory)).model_used == SONNET
    assert "model_used" not in SessionRepository.transition.__code__.co_varnames


# ------------------------------------------------------------------- transitions

ALLOWED = [(src, dst) for dst, srcs in ALLOWED_SOURCES.items() for src in srcs]
FORBIDDEN = [(src, dst) for src, dst in itertools.product(S, S) if (src, dst) not in set(ALLOWED)]


@pytest.mark.parametrize(("source", "target"), ALLOWED, ids=lambda s: str(s))
async def test_every_allowed_edge_succeeds(
    session_factory: Factory, source: SessionStatus, target: SessionStatus
) -> None:
    await make_session(session_factory)
    await _put_in(session_factory, source)
    before = await _row(session_factory)
    wake_at = later() if target is S.SLEEPING else None
    async with session_factory.begin() as s:
        moved = await SessionRepository(s).transition(
            "s-1", target, expected=source, wake_at=wake_at
        )
    after = await _row(session_factory)
    assert moved.status == after.status == target
    assert after.version == before.version + 1
    assert (after.wake_at is not None) == (target is S.SLEEPING)
    assert (after.completed_at is not None) == (target is S.COMPLETED)


@pytest.mark.parametrize(("source", "target"), FORBIDDEN, ids=lambda s: str(s))
async def test_every_other_edge_is_refused_and_nothing_changes(
    session_factory: Factory, source: SessionStatus, target: SessionStatus
) -> None:
    await make_session(session_factory)
    await _put_in(session_factory, source)
    before = await _row(session_factory)
    wake_at = later() if target is S.SLEEPING else None
    with pytest.raises(InvalidTransition) as info:
        async with session_factory.begin() as s:
            await SessionRepository(s).transition("s-1", target, expected=source, wake_at=wake_at)
    assert info.value.current == source
    assert info.value.target == target
    assert str(source) in str(info.value)
    after = await _row(session_factory)
    assert (after.status, after.version, after.wake_at) == (
        before.status,
        before.version,
        before.wake_at,
    )


async def test_stale_expectation_raises_with_the_current_status(session_factory: Factory) -> None:
    await make_session(session_factory)
    await _put_in(session_factory, S.SLEEPING)
    with pytest.raises(InvalidTransition) as info:
        async with session_factory.begin() as s:
            await SessionRepository(s).transition("s-1", S.COMPLETED, expected=S.WORKING)
    assert info.value.current is S.SLEEPING


async def test_sleeping_requires_an_aware_wake_at(session_factory: Factory) -> None:
    await make_session(session_factory)
    for bad in (None, datetime(2030, 1, 1)):
        with pytest.raises(InvalidInput) as info:
            async with session_factory.begin() as s:
                await SessionRepository(s).transition(
                    "s-1", S.SLEEPING, expected=S.WORKING, wake_at=bad
                )
        assert info.value.field == "wake_at"
    assert (await _row(session_factory)).status == S.WORKING


async def test_wake_at_is_set_while_sleeping_and_cleared_after(session_factory: Factory) -> None:
    await make_session(session_factory)
    when = datetime(2031, 5, 1, tzinfo=UTC)
    async with session_factory.begin() as s:
        await SessionRepository(s).transition("s-1", S.SLEEPING, expected=S.WORKING, wake_at=when)
    assert (await _row(session_factory)).wake_at == when
    async with session_factory.begin() as s:
        await SessionRepository(s).transition("s-1", S.WORKING, expected=S.SLEEPING)
    assert (await _row(session_factory)).wake_at is None


async def test_version_counts_every_transition(session_factory: Factory) -> None:
    await make_session(session_factory)
    async with session_factory.begin() as s:
        repo = SessionRepository(s)
        for _ in range(3):
            await repo.transition("s-1", S.SLEEPING, expected=S.WORKING, wake_at=later())
            await repo.transition("s-1", S.WORKING, expected=S.SLEEPING)
        await repo.transition("s-1", S.BUDGET_EXCEEDED, expected=S.WORKING)
        await repo.transition("s-1", S.WORKING, expected=[S.BUDGET_EXCEEDED])
        final = await repo.transition("s-1", S.COMPLETED, expected=list(S))
    assert final.version == 9


async def test_transition_of_a_missing_session(session_factory: Factory) -> None:
    with pytest.raises(SessionNotFound):
        async with session_factory.begin() as s:
            await SessionRepository(s).transition("nope", S.COMPLETED, expected=S.WORKING)


@pytest.mark.parametrize(
    ("to", "expected"), [("paused", "working"), ("completed", "paused"), ("completed", [])]
)
async def test_unknown_statuses_are_typed_errors(
    session_factory: Factory, to: str, expected: object
) -> None:
    await make_session(session_factory)
    with pytest.raises(InvalidInput):
        async with session_factory.begin() as s:
            await SessionRepository(s).transition("s-1", to, expected=expected)  # type: ignore[arg-type]
    assert (await _row(session_factory)).version == 0


# ------------------------------------------------------------------------- races


async def test_twenty_racers_one_sleep(session_factory: Factory) -> None:
    await make_session(session_factory)
    start = asyncio.Event()

    async def racer() -> str:
        try:
            async with session_factory.begin() as s:
                await s.connection()  # each racer holds its own connection before the start
                await start.wait()
                await SessionRepository(s).transition(
                    "s-1", S.SLEEPING, expected=S.WORKING, wake_at=later()
                )
        except InvalidTransition as exc:
            return f"lost to {exc.current}"
        return "won"

    tasks = [asyncio.create_task(racer()) for _ in range(20)]
    await asyncio.sleep(0.05)
    start.set()
    outcomes = await asyncio.gather(*tasks)
    assert outcomes.count("won") == 1
    assert outcomes.count("lost to sleeping") == 19
    assert (await _row(session_factory)).version == 1


async def test_concurrent_add_cost_sums_exactly(session_factory: Factory) -> None:
    await make_session(session_factory)
    amounts = [(i * 7919) % 100_003 + 1 for i in range(200)]
    gate = asyncio.Semaphore(30)

    async def add(amount: int) -> int:
        async with gate, session_factory.begin() as s:
            return await SessionRepository(s).add_cost("s-1", amount)

    totals = await asyncio.gather(*(add(a) for a in amounts))
    assert (await _row(session_factory)).cumulative_cost_microdollars == sum(amounts)
    assert len(set(totals)) == 200  # every call saw its own running total


@pytest.mark.parametrize("amount", [-1, 1.5, True, "10", None, 2**63])
async def test_add_cost_rejects_bad_amounts(session_factory: Factory, amount: object) -> None:
    await make_session(session_factory)
    with pytest.raises(InvalidInput) as info:
        async with session_factory.begin() as s:
            await SessionRepository(s).add_cost("s-1", amount)  # type: ignore[arg-type]
    assert info.value.field == "microdollars"
    assert (await _row(session_factory)).cumulative_cost_microdollars == 0


async def test_add_cost_to_a_missing_session(session_factory: Factory) -> None:
    with pytest.raises(SessionNotFound):
        async with session_factory.begin() as s:
            await SessionRepository(s).add_cost("ghost", 1)


async def _make_sleepers(factory: Factory, n: int, wake_at: datetime, prefix: str) -> list[str]:
    ids = [f"{prefix}-{i:04d}" for i in range(n)]
    async with factory.begin() as s:
        repo = SessionRepository(s)
        for sid in ids:
            await repo.create(
                id=sid, job_id="j", clerk_user_id="u", tier="partner", model_used=SONNET
            )
            await repo.transition(sid, S.SLEEPING, expected=S.WORKING, wake_at=wake_at)
    return ids


async def test_two_claimers_get_disjoint_sets_covering_all_due(session_factory: Factory) -> None:
    now = datetime.now(UTC)
    due = await _make_sleepers(session_factory, 500, now - timedelta(minutes=1), "due")
    await _make_sleepers(session_factory, 50, now + timedelta(hours=1), "later")

    async def claimer() -> list[str]:
        claimed: list[str] = []
        while True:
            async with session_factory.begin() as s:
                repo = SessionRepository(s)
                batch = await repo.claim_due_for_wake(now=now, limit=37)
                if not batch:
                    return claimed
                for row in batch:
                    await repo.transition(row.id, S.WORKING, expected=S.SLEEPING)
                claimed += [row.id for row in batch]
                await asyncio.sleep(0)  # hold the locks while the other claimer runs

    a, b = await asyncio.gather(claimer(), claimer())
    assert set(a).isdisjoint(b)
    assert sorted(a + b) == due
    assert a, "both claimers should have taken part"
    assert b, "both claimers should have taken part"


async def test_claim_skips_rows_locked_by_another_claimer(session_factory: Factory) -> None:
    now = datetime.now(UTC)
    due = await _make_sleepers(session_factory, 10, now - timedelta(seconds=1), "due")
    async with session_factory.begin() as first:
        held = await SessionRepository(first).claim_due_for_wake(now=now, limit=4)
        async with session_factory.begin() as second:
            rest = await SessionRepository(second).claim_due_for_wake(now=now, limit=100)
    assert {r.id for r in held}.isdisjoint({r.id for r in rest})
    assert sorted([r.id for r in held] + [r.id for r in rest]) == due


# --------------------------------------------------------------------- top-up wake


@pytest.mark.parametrize("by", ["session", "user"])
async def test_request_wake_notifies_and_makes_sessions_due(
    session_factory: Factory, database_url: str, by: str
) -> None:
    far = datetime.now(UTC) + timedelta(days=1)
    mine = await _make_sleepers(session_factory, 3, far, "mine")
    async with session_factory.begin() as s:
        repo = SessionRepository(s)
        await repo.create(
            id="other", job_id="j", clerk_user_id="u-2", tier="partner", model_used=SONNET
        )
        await repo.transition("other", S.SLEEPING, expected=S.WORKING, wake_at=far)

    received: asyncio.Queue[list[str]] = asyncio.Queue()
    listener = await asyncpg.connect(plain_dsn(database_url))
    await listener.add_listener(WAKE_CHANNEL, lambda *a: received.put_nowait(json.loads(a[3])))
    try:
        async with session_factory.begin() as s:
            repo = SessionRepository(s)
            if by == "session":
                n = await repo.request_wake(session_id=mine[0])
                expected = mine[:1]
            else:
                n = await repo.request_wake(clerk_user_id="u")
                expected = mine
        got = await asyncio.wait_for(received.get(), 5)
    finally:
        await listener.close()
    assert n == len(expected)
    assert sorted(got) == expected
    async with session_factory.begin() as s:
        claimed = await SessionRepository(s).claim_due_for_wake(now=datetime.now(UTC))
    assert sorted(r.id for r in claimed) == expected


async def test_request_wake_ignores_sessions_that_are_not_sleeping(
    session_factory: Factory,
) -> None:
    await make_session(session_factory)
    async with session_factory.begin() as s:
        assert await SessionRepository(s).request_wake(clerk_user_id="u-1") == 0
    with pytest.raises(InvalidInput):
        async with session_factory.begin() as s:
            await SessionRepository(s).request_wake()
    with pytest.raises(InvalidInput):
        async with session_factory.begin() as s:
            await SessionRepository(s).request_wake(session_id="a", clerk_user_id="b")


# ---------------------------------------------------------------- listing, counts


async def test_keyset_pages_do_not_skip_or_repeat_under_inserts(session_factory: Factory) -> None:
    initial = [f"s-{i:03d}" for i in range(0, 200, 2)]
    for sid in initial:
        await make_session(session_factory, sid)
    seen: list[str] = []
    after: str | None = None
    inserted = iter(f"s-{i:03d}" for i in range(1, 200, 2))
    added = 0
    while True:
        async with session_factory() as s:
            page = await SessionRepository(s).list_by_status(S.WORKING, limit=7, after_id=after)
        if not page:
            break
        seen += [r.id for r in page]
        after = page[-1].id
        # Insert rows on both sides of the cursor between pages.
        for _ in range(2):
            extra = next(inserted, None)
            if extra is not None:
                await make_session(session_factory, extra)
                added += 1
    assert len(seen) == len(set(seen))
    assert seen == sorted(seen)
    assert set(initial) <= set(seen)
    async with session_factory() as s:
        counts = await SessionRepository(s).count_by_status()
        everything: list[str] = []
        after = None
        while page := await SessionRepository(s).list_by_status(
            "working", limit=50, after_id=after
        ):
            everything += [r.id for r in page]
            after = page[-1].id
    assert counts[S.WORKING] == len(everything) == len(initial) + added
    assert counts[S.SLEEPING] == counts[S.COMPLETED] == counts[S.BUDGET_EXCEEDED] == 0


async def test_count_by_status_matches_the_rows(session_factory: Factory) -> None:
    for i, status in enumerate([S.WORKING, S.SLEEPING, S.SLEEPING, S.COMPLETED, S.BUDGET_EXCEEDED]):
        await make_session(session_factory, f"s-{i}")
        await _put_in(session_factory, status, f"s-{i}")
    async with session_factory() as s:
        counts = await SessionRepository(s).count_by_status()
        for status in S:
            assert counts[status] == len(await SessionRepository(s).list_by_status(status))
    assert counts == {S.WORKING: 1, S.SLEEPING: 2, S.COMPLETED: 1, S.BUDGET_EXCEEDED: 1}


async def test_list_by_status_rejects_unknown_status(session_factory: Factory) -> None:
    async with session_factory() as s:
        with pytest.raises(InvalidInput):
            await SessionRepository(s).list_by_status("paused")
