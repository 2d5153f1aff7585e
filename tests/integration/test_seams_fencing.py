"""Where runners, operators and deliveries meet (issue 24, findings 7, 8, 9 and 13;
DESIGN.md §6c): a fenced runner writes nothing, a redelivery never doubles a running
hook, and an honest append stores what it was given.

Leases are measured on the database clock, so these tests never sleep to expire one;
the budget day comes from the injected clock.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import func, select, text

from app.budget import policy
from app.db.models import AgentCheckpoint, AgentSession
from app.db.tables import agent_checkpoints, agent_events
from app.domain import (
    EventType,
    InvalidTransition,
    ResumeInProgress,
    SessionNotFound,
    SessionStatus,
    StaleRunner,
)
from app.lifecycle import (
    RestoredSession,
    Runtime,
    charge,
    complete_session,
    delete_session,
    enforce_budgets,
    heartbeat,
    latest_checkpoint,
    purge_finished,
    redeliver,
    save_checkpoint,
    sleep_session,
    start_session,
    stop_session,
)
from app.repositories import CheckpointRepository, SessionRepository
from app.repositories.checkpoint_cache import HistoryCache
from app.session_store import RedisSessionStore
from app.settings import Settings
from app.workers import WakeWorker
from tests.integration.helpers import SONNET, Factory, ManualClock, eventually, make_session

START = datetime(2027, 3, 14, 9, 0, tzinfo=UTC)


@pytest.fixture
def settings() -> Settings:
    return Settings(
        _env_file=None,
        backoff_max_seconds=0.05,
        resume_lease_seconds=60.0,
        resume_max_attempts=3,
        runner_timeout_seconds=600.0,
        sleep_grace_seconds=0,
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def rt(
    session_factory: Factory, store: RedisSessionStore, settings: Settings, clock: ManualClock
) -> Runtime:
    return Runtime(session_factory, store, settings, clock)


def message(tag: str, i: int) -> dict[str, Any]:
    return {"role": "assistant" if i % 2 else "user", "content": f"{tag}-{i}"}


def checkpoint(
    session_id: str, iteration: int, history: list[dict[str, Any]] | None = None
) -> AgentCheckpoint:
    return AgentCheckpoint(
        session_id=session_id,
        job_id="j",
        message_history=[message("m", i) for i in range(2)] if history is None else history,
        iteration_number=iteration,
        sandbox_id="sb-1",
    )


async def load(rt: Runtime, session_id: str, iteration: int) -> list[Any]:
    async with rt.session_factory() as s:
        return (await rt.checkpoints(s).load(session_id, iteration)).message_history


# ------------------------------------------------------- 13: append's cache tip


@pytest.mark.parametrize("resave", ["rewritten", "identical"])
async def test_an_honest_append_after_resaving_a_lower_iteration_stores_what_it_was_given(
    rt: Runtime, resave: str
) -> None:
    """The process saved iterations 1 and 2, then saved 1 again with as many messages
    as 2 holds (a runner went back to an earlier turn; the same content again is a
    no-op for the rows). Its next append vouches for that last save and adds one
    message: exactly that history is stored."""
    await start_session(rt, session_id="s-1", job_id="j", clerk_user_id="u-1", tier="partner")
    lower = [message("b", i) for i in range(3)]
    first = lower if resave == "identical" else [message("a", i) for i in range(2)]
    newest = [message("a", i) for i in range(3)]  # as many messages as the re-save
    await save_checkpoint(rt, checkpoint("s-1", 1, first))
    await save_checkpoint(rt, checkpoint("s-1", 2, newest))
    await save_checkpoint(rt, checkpoint("s-1", 1, lower))
    given = [*lower, message("b", 3)]
    stored = await save_checkpoint(rt, checkpoint("s-1", 3, given), new_messages=1)

    assert stored.message_history == given
    assert await load(rt, "s-1", 3) == given
    assert await load(rt, "s-1", 2) == newest
    assert await load(rt, "s-1", 1) == lower
    latest = await latest_checkpoint(rt, "s-1")
    assert latest is not None
    assert latest.message_history == given
    # The next append builds on iteration 3 again, O(new), and stays exact.
    await save_checkpoint(rt, checkpoint("s-1", 4, [*given, message("b", 4)]), new_messages=1)
    assert await load(rt, "s-1", 4) == [*given, message("b", 4)]


async def test_a_resave_below_the_newest_through_the_repository_forgets_the_tip(
    session_factory: Factory, rt: Runtime
) -> None:
    """The same seam on the repository itself, with its default shared cache."""
    await start_session(rt, session_id="s-2", job_id="j", clerk_user_id="u-2", tier="partner")
    async with session_factory.begin() as s:
        repo = CheckpointRepository(s, cache=rt.history_cache)
        await repo.save(checkpoint("s-2", 5, [message("a", i) for i in range(4)]))
        await repo.save(checkpoint("s-2", 9, [message("a", i) for i in range(5)]))
        await repo.save(checkpoint("s-2", 7, [message("c", i) for i in range(5)]))
        given = [*(message("c", i) for i in range(5)), message("c", 5)]
        stored = await repo.append(checkpoint("s-2", 10, given), new_messages=1)
    assert stored.message_history == given
    assert await load(rt, "s-2", 10) == given


# Each step: (iteration, how many new messages, whether they extend the last save).
Step = tuple[int, int, bool]
steps = st.lists(
    st.tuples(st.integers(1, 5), st.integers(0, 2), st.booleans()), min_size=1, max_size=12
)


@hypothesis_settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=steps)
async def test_any_mix_of_saves_and_honest_appends_loads_back_as_given(
    session_factory: Factory, plan: list[Step]
) -> None:
    """Saves at any iteration, in any order, some of them appends that honestly vouch
    for the process's last save: every iteration loads back as it was last given."""
    sid = f"p-{uuid.uuid4().hex[:12]}"
    await make_session(session_factory, sid)
    cache = HistoryCache(8)
    given_at: dict[int, list[Any]] = {}
    last: list[Any] | None = None
    for n, (iteration, new, extends) in enumerate(plan):
        tail = [message(f"{n}", i) for i in range(new)]
        async with session_factory.begin() as s:
            repo = CheckpointRepository(s, keep_last=100, cache=cache)
            if extends and last is not None:
                history = [*last, *tail]
                await repo.append(checkpoint(sid, iteration, history), new_messages=new)
            else:
                history = [message(f"s{n}", i) for i in range(new + 1)]  # a rewrite
                await repo.save(checkpoint(sid, iteration, history))
        given_at[iteration], last = history, history
    async with session_factory() as s:
        repo = CheckpointRepository(s, keep_last=100)
        for iteration, history in given_at.items():
            assert (await repo.load(sid, iteration)).message_history == history, iteration


# ------------------------------------------------ 7 and 8: fenced runner writes


async def row(rt: Runtime, session_id: str) -> AgentSession:
    async with rt.session_factory() as s:
        return await SessionRepository(s).get(session_id)


async def iterations(rt: Runtime, session_id: str) -> list[int]:
    async with rt.session_factory() as s:
        found = await s.scalars(
            select(agent_checkpoints.c.iteration_number)
            .where(agent_checkpoints.c.session_id == session_id)
            .order_by(agent_checkpoints.c.iteration_number)
        )
        return list(found)


async def events(rt: Runtime, session_id: str) -> int:
    async with rt.session_factory() as s:
        return int(
            await s.scalar(select(func.count()).where(agent_events.c.session_id == session_id)) or 0
        )


async def start(rt: Runtime, session_id: str = "s-1") -> str:
    started = await start_session(
        rt, session_id=session_id, job_id="j", clerk_user_id=f"u-{session_id}", tier="partner"
    )
    assert started.resume_token is not None
    return started.resume_token


async def orphaned_and_delivered_again(
    rt: Runtime, store: RedisSessionStore, clock: ManualClock, session_id: str
) -> str:
    """The runner went silent past RUNNER_TIMEOUT: a worker delivers the session to a
    new runner with a new token. Returns the new token."""
    async with rt.session_factory.begin() as s:
        await s.execute(
            text(
                "UPDATE agent_sessions SET last_seen_at = last_seen_at - interval '11 min',"
                " last_checkpoint_at = last_checkpoint_at - interval '11 min' WHERE id = :id"
            ),
            {"id": session_id},
        )
    got: list[RestoredSession] = []
    worker = WakeWorker(rt.session_factory, store, rt.settings, clock=clock, on_resume=got.append)
    assert (await worker.run_once()).orphans == 1
    return got[0].resume_token


Write = Callable[[Runtime, str], Awaitable[object]]

# Every write a runner makes with its token, as (name, call(rt, token)).
RUNNER_WRITES: list[tuple[str, Write]] = [
    ("heartbeat", lambda rt, tok: heartbeat(rt, "s-1", resume_token=tok)),
    ("save", lambda rt, tok: save_checkpoint(rt, checkpoint("s-1", 9), resume_token=tok)),
    (
        "append",
        lambda rt, tok: save_checkpoint(
            rt, checkpoint("s-1", 9, [message("m", i) for i in range(3)]),
            resume_token=tok, new_messages=1,
        ),
    ),
    ("sleep", lambda rt, tok: sleep_session(rt, checkpoint("s-1", 9), resume_token=tok)),
    (
        "stop",
        lambda rt, tok: stop_session(rt, "s-1", checkpoint=checkpoint("s-1", 9), resume_token=tok),
    ),
    (
        "complete",
        lambda rt, tok: complete_session(
            rt, "s-1", checkpoint=checkpoint("s-1", 9), resume_token=tok
        ),
    ),
]  # fmt: skip
WRITE_IDS = [name for name, _ in RUNNER_WRITES]


@pytest.mark.parametrize("write", [w for _, w in RUNNER_WRITES], ids=WRITE_IDS)
async def test_a_redelivered_sessions_old_runner_changes_nothing(
    rt: Runtime, store: RedisSessionStore, clock: ManualClock, write: Write
) -> None:
    """Finding 7: after a redelivery, the old runner's stop and complete (with their
    checkpoints) raised nothing and overwrote the new runner's work. Every runner write
    with the old token is StaleRunner now, and leaves the row, the checkpoints, the
    outbox and the Redis key as they were."""
    old = await start(rt)
    await save_checkpoint(rt, checkpoint("s-1", 1), resume_token=old)
    new = await orphaned_and_delivered_again(rt, store, clock, "s-1")
    await save_checkpoint(rt, checkpoint("s-1", 2, [message("new", 0)]), resume_token=new)
    before = await row(rt, "s-1")
    events_before, key_before = await events(rt, "s-1"), await store.get("s-1", refresh=False)

    with pytest.raises(StaleRunner):
        await write(rt, old)

    after = await row(rt, "s-1")
    assert (after.status, after.version, after.resume_token) == (
        SessionStatus.WORKING,
        before.version,
        new,
    )
    assert await iterations(rt, "s-1") == [1, 2]
    latest = await latest_checkpoint(rt, "s-1")
    assert latest is not None
    assert (latest.iteration_number, latest.message_history) == (2, [message("new", 0)])
    assert await events(rt, "s-1") == events_before
    assert await store.get("s-1", refresh=False) == key_before
    # The new runner's writes go through, all of them.
    await write(rt, new)


async def test_the_current_runner_stops_and_completes_and_completing_retires_its_token(
    rt: Runtime,
) -> None:
    token = await start(rt)
    stopped = await stop_session(rt, "s-1", checkpoint=checkpoint("s-1", 3), resume_token=token)
    assert stopped.status == SessionStatus.BUDGET_EXCEEDED
    # A stopped session keeps its token: the runner's final save still lands.
    assert stopped.resume_token == token
    await heartbeat(rt, "s-1", resume_token=token)
    done = await complete_session(rt, "s-1", checkpoint=checkpoint("s-1", 4), resume_token=token)
    assert (done.status, done.resume_token) == (SessionStatus.COMPLETED, None)
    assert (await row(rt, "s-1")).resume_token is None
    assert await iterations(rt, "s-1") == [3, 4]
    with pytest.raises(StaleRunner):
        await heartbeat(rt, "s-1", resume_token=token)


async def test_a_session_the_daemon_stopped_keeps_its_token_for_the_runners_final_save(
    rt: Runtime, clock: ManualClock
) -> None:
    token = await start(rt)
    # One call past 110 % of the day's budget; the charge (or the daemon) stops it.
    budget = (await row(rt, "s-1")).daily_budget_microdollars
    await charge(
        rt, session_id="s-1", request_id="r-1", model=SONNET,
        input_tokens=budget, output_tokens=budget // 10, now=clock.now,
    )  # fmt: skip
    await enforce_budgets(rt, limit=10)
    assert (await row(rt, "s-1")).status == SessionStatus.BUDGET_EXCEEDED
    stopped = await stop_session(rt, "s-1", checkpoint=checkpoint("s-1", 5), resume_token=token)
    assert (stopped.status, stopped.resume_token) == (SessionStatus.BUDGET_EXCEEDED, token)
    slept = await sleep_session(rt, checkpoint("s-1", 6), resume_token=token)
    assert slept.status == SessionStatus.BUDGET_EXCEEDED
    assert await iterations(rt, "s-1") == [5, 6]
    latest = await latest_checkpoint(rt, "s-1")
    assert latest is not None
    assert latest.iteration_number == 6


async def test_without_a_token_stop_and_complete_are_an_operators_and_not_fenced(
    rt: Runtime, store: RedisSessionStore, clock: ManualClock
) -> None:
    await start(rt)
    await orphaned_and_delivered_again(rt, store, clock, "s-1")
    stopped = await stop_session(rt, "s-1", checkpoint=checkpoint("s-1", 1))
    assert stopped.status == SessionStatus.BUDGET_EXCEEDED
    done = await complete_session(rt, "s-1")
    assert (done.status, done.resume_token) == (SessionStatus.COMPLETED, None)


async def test_a_stale_stop_racing_a_redelivery_either_lands_first_or_changes_nothing(
    rt: Runtime,
) -> None:
    """Real races: the old runner completes with its checkpoint while an operator
    forces a redelivery. Whichever takes the row first wins whole; the other is
    refused, and nothing of it is written."""
    outcomes: set[str] = set()
    for n in range(12):
        sid = f"race-{n}"
        old = await start(rt, sid)
        done, moved = await asyncio.gather(
            complete_session(rt, sid, checkpoint=checkpoint(sid, 7), resume_token=old),
            redeliver(rt, sid, force=True),
            return_exceptions=True,
        )
        now = await row(rt, sid)
        if isinstance(done, AgentSession):  # the runner first: the session is finished
            assert isinstance(moved, InvalidTransition)
            assert (now.status, now.resume_token) == (SessionStatus.COMPLETED, None)
            assert await iterations(rt, sid) == [7]
            outcomes.add("completed")
        else:  # the operator first: a new runner owns it, the old one wrote nothing
            assert isinstance(done, StaleRunner), done
            assert isinstance(moved, AgentSession)
            assert (now.status, now.resume_token) == (SessionStatus.WORKING, moved.resume_token)
            assert now.resume_token != old
            assert await iterations(rt, sid) == []
            outcomes.add("redelivered")
    assert outcomes  # each round ended one way or the other, never half of both


async def test_a_cancelled_sessions_runner_is_fenced_and_its_charges_still_count(
    rt: Runtime, clock: ManualClock
) -> None:
    """Finding 8: an operator's ``sessions cancel`` completes the session without a
    token. Its runner's heartbeat and every token write now raise StaleRunner (its
    signal to stop) and write nothing; the money it spent is still recorded."""
    token = await start(rt)
    await save_checkpoint(rt, checkpoint("s-1", 1), resume_token=token)
    await complete_session(rt, "s-1")  # the operator
    for name, write in RUNNER_WRITES:
        with pytest.raises(StaleRunner):
            await write(rt, token)
        assert await iterations(rt, "s-1") == [1], name
    assert (await row(rt, "s-1")).status == SessionStatus.COMPLETED
    charged = await charge(
        rt, session_id="s-1", request_id="late", model=SONNET,
        input_tokens=100, output_tokens=10, now=clock.now,
    )  # fmt: skip
    assert charged.cost_microdollars > 0
    assert not charged.duplicate


@pytest.mark.parametrize("token_kept", [False, True], ids=["retired", "completed-before"])
async def test_a_purged_sessions_runner_writes_nothing_after_the_purge(
    rt: Runtime, token_kept: bool
) -> None:
    """Finding 8: checkpoints a runner saved after its session was purged were never
    purged. Its saves are fenced now, also for a session completed before tokens were
    retired on completion (the row still holds one)."""
    token = await start(rt)
    await save_checkpoint(rt, checkpoint("s-1", 1), resume_token=token)
    await complete_session(rt, "s-1")
    async with rt.session_factory.begin() as s:
        await s.execute(
            text(
                "UPDATE agent_sessions SET completed_at = completed_at - interval '40 days',"
                " resume_token = CAST(:kept AS varchar) WHERE id = 's-1'"
            ),
            {"kept": token if token_kept else None},
        )
    purged = await purge_finished(rt, older_than_days=30)
    assert purged.session_ids == ["s-1"]
    assert await iterations(rt, "s-1") == []
    for name, write in RUNNER_WRITES:
        with pytest.raises(StaleRunner):
            await write(rt, token)
        assert await iterations(rt, "s-1") == [], name
    assert (await row(rt, "s-1")).purged_at is not None


async def test_a_session_deleted_under_its_runner_is_not_found(rt: Runtime) -> None:
    token = await start(rt)
    await delete_session(rt, "s-1")
    for name, write in RUNNER_WRITES:
        with pytest.raises(SessionNotFound):
            await write(rt, token)
        assert await iterations(rt, "s-1") == [], name


# ------------------------------------------- 9: redelivery while a hook runs


async def asleep_and_due(rt: Runtime, clock: ManualClock, *ids: str) -> None:
    for sid in ids:
        await start(rt, sid)
        await sleep_session(rt, checkpoint(sid, 3))
    clock.now = policy.next_budget_day_start(START) + timedelta(seconds=1)


class Runners:
    """A resume hook standing for runners that keep running until released; it records
    every delivery (session id, token), in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.release = asyncio.Event()

    async def __call__(self, restored: RestoredSession) -> None:
        self.calls.append((restored.session.id, restored.resume_token))
        await self.release.wait()

    async def running(self, n: int) -> None:
        async def started() -> bool:
            return len(self.calls) >= n

        await eventually(started)


async def test_redeliver_while_a_hook_runs_is_refused_and_changes_nothing(
    rt: Runtime, store: RedisSessionStore, clock: ManualClock
) -> None:
    """Finding 9: ``sessions redeliver`` while a hook ran made the delivery due at once,
    and a second worker started a second runner with the same token. Now the held
    delivery is left alone: ResumeInProgress, and no second delivery."""
    await asleep_and_due(rt, clock, "s-1")
    runners = Runners()
    one = WakeWorker(rt.session_factory, store, rt.settings, clock=clock, on_resume=runners)
    first = asyncio.create_task(one.run_once())
    await runners.running(1)
    held = await row(rt, "s-1")

    with pytest.raises(ResumeInProgress) as refused:
        await redeliver(rt, "s-1")
    assert refused.value.session_id == "s-1"
    assert refused.value.until == held.resume_due_at
    after = await row(rt, "s-1")
    assert (after.resume_token, after.resume_due_at, after.resume_attempts, after.version) == (
        held.resume_token,
        held.resume_due_at,
        held.resume_attempts,
        held.version,
    )
    two = WakeWorker(rt.session_factory, store, rt.settings, clock=clock, on_resume=runners)
    assert (await asyncio.wait_for(two.run_once(), 60)).delivered == 0

    runners.release.set()
    assert (await first).acknowledged == 1
    assert runners.calls == [("s-1", held.resume_token)]
    # The hook returned: nothing is held, so the operator may redeliver (same wake,
    # same token), and it is delivered once more.
    again = await redeliver(rt, "s-1")
    assert again.resume_token == held.resume_token
    assert (await two.run_once()).acknowledged == 1
    assert runners.calls == [("s-1", held.resume_token)] * 2


async def test_a_forced_redelivery_fences_the_running_runner(
    rt: Runtime, store: RedisSessionStore, clock: ManualClock
) -> None:
    await asleep_and_due(rt, clock, "s-1")
    runners = Runners()
    one = WakeWorker(rt.session_factory, store, rt.settings, clock=clock, on_resume=runners)
    first = asyncio.create_task(one.run_once())
    await runners.running(1)
    old = runners.calls[0][1]

    forced = await redeliver(rt, "s-1", force=True)
    assert forced.resume_token not in (None, old)
    assert forced.resume_due_at is not None
    seen: list[str] = []
    two = WakeWorker(
        rt.session_factory,
        store,
        rt.settings,
        clock=clock,
        on_resume=lambda r: seen.append(r.resume_token),
    )
    assert (await two.run_once()).acknowledged == 1
    assert seen == [forced.resume_token]
    # The runner that was running is fenced: its heartbeat and saves are refused.
    with pytest.raises(StaleRunner):
        await heartbeat(rt, "s-1", resume_token=old)
    with pytest.raises(StaleRunner):
        await save_checkpoint(rt, checkpoint("s-1", 4), resume_token=old)
    runners.release.set()
    assert (await first).acknowledged == 0  # its late return acknowledges nothing
    assert (await row(rt, "s-1")).resume_token == forced.resume_token
    async with rt.session_factory() as s:
        fenced = await s.scalar(
            select(func.count()).where(
                agent_events.c.session_id == "s-1",
                agent_events.c.type == EventType.RUNNER_FENCED.value,
            )
        )
    assert fenced == 1


async def test_redeliver_racing_the_workers_delivery_never_doubles_a_hook(
    rt: Runtime, store: RedisSessionStore, clock: ManualClock
) -> None:
    """Real races: a worker wakes and delivers eight sessions while an operator keeps
    redelivering each of them, from before its wake until its hook is running. Each
    hook runs once: a redelivery before the wake is refused (still asleep), the first
    one after it is ResumeInProgress, and a second worker finds nothing to deliver."""
    ids = [f"race-{n}" for n in range(8)]
    await asleep_and_due(rt, clock, *ids)
    runners = Runners()
    one = WakeWorker(rt.session_factory, store, rt.settings, clock=clock, on_resume=runners)

    async def operator(sid: str) -> list[str]:
        tried: list[str] = []
        async with asyncio.timeout(60):
            while True:
                try:
                    await redeliver(rt, sid)
                except InvalidTransition:
                    tried.append("asleep")
                    await asyncio.sleep(0)
                    continue
                except ResumeInProgress:
                    tried.append("in progress")
                else:
                    tried.append("owed")
                return tried

    first = asyncio.create_task(one.run_once())
    outcomes = await asyncio.gather(*(operator(sid) for sid in ids))
    assert [tried[-1] for tried in outcomes] == ["in progress"] * len(ids)
    assert all(set(tried[:-1]) <= {"asleep"} for tried in outcomes)
    await runners.running(len(ids))
    two = WakeWorker(rt.session_factory, store, rt.settings, clock=clock, on_resume=runners)
    assert (await asyncio.wait_for(two.run_once(), 60)).delivered == 0
    runners.release.set()
    assert (await first).acknowledged == len(ids)
    assert sorted(sid for sid, _ in runners.calls) == ids


async def test_a_worker_running_both_runners_keeps_the_new_ones_lease(
    session_factory: Factory, store: RedisSessionStore, clock: ManualClock
) -> None:
    """A forced redelivery taken by the very worker whose hook still runs the old
    delivery: when the old hook returns, the worker must go on renewing the new one's
    lease, or another worker would start the new runner a second time."""
    settings = Settings(
        _env_file=None, resume_lease_seconds=1.5, wake_poll_interval=0.1, sleep_grace_seconds=0
    )
    rt = Runtime(session_factory, store, settings, clock)
    await asleep_and_due(rt, clock, "s-1")
    calls: list[str] = []
    old_done, new_done = asyncio.Event(), asyncio.Event()

    async def runner(restored: RestoredSession) -> None:
        calls.append(restored.resume_token)
        await (old_done if len(calls) == 1 else new_done).wait()

    one = WakeWorker(session_factory, store, settings, clock=clock, on_resume=runner)
    stop = asyncio.Event()
    forever = asyncio.create_task(one.run_forever(stop))

    def called(n: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return len(calls) >= n

        return check

    try:
        await eventually(called(1))
        forced = await redeliver(rt, "s-1", force=True)
        await eventually(called(2))  # the same worker runs both now
        assert calls == [calls[0], forced.resume_token]
        old_done.set()  # the fenced runner returns; its acknowledgement is void
        two = WakeWorker(session_factory, store, settings, clock=clock, on_resume=runner)
        deadline = asyncio.get_running_loop().time() + 3 * settings.resume_lease_seconds
        while asyncio.get_running_loop().time() < deadline:
            assert (await two.run_once()).delivered == 0
            await asyncio.sleep(0.05)
        new_done.set()
        await eventually(lambda: _acknowledged(rt, "s-1"))
        assert len(calls) == 2
    finally:
        old_done.set()
        new_done.set()
        stop.set()
        await asyncio.wait_for(forever, 60)


async def _acknowledged(rt: Runtime, session_id: str) -> bool:
    return (await row(rt, session_id)).resume_due_at is None
