"""Every public repository method raises only the domain's typed errors for driver
failures (an unreachable server, a serialisation failure, a constraint), and no
repository ever commits: the caller's transaction decides."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.budget.pricing import rates
from app.db.engine import create_engine, create_session_factory
from app.db.models import AgentCheckpoint, AgentCostEvent, AgentSession, BudgetDay
from app.domain import DatabaseUnavailable, EventType, SessionNotFound, TransactionConflict
from app.repositories import (
    BudgetRepository,
    CheckpointRepository,
    EventRepository,
    NewEvent,
    PriceRepository,
    ResumeRepository,
    RetentionRepository,
    SessionRepository,
    UserRepository,
)
from app.settings import SONNET, Settings
from tests.integration.helpers import Factory, make_session

NOW = datetime(2031, 5, 1, 12, 0, tzinfo=UTC)
DAY = date(2031, 5, 1)
SETTINGS = Settings(_env_file=None)
REPOSITORIES = (
    SessionRepository,
    BudgetRepository,
    CheckpointRepository,
    ResumeRepository,
    EventRepository,
    PriceRepository,
    RetentionRepository,
    UserRepository,
)

Call = Callable[[AsyncSession], Awaitable[Any]]


def checkpoint() -> AgentCheckpoint:
    return AgentCheckpoint(
        session_id="s-1", job_id="j", message_history=[{"n": 1}], iteration_number=1
    )


# One well-formed call of every public method: what each would do against a server.
CALLS: dict[str, Call] = {
    "SessionRepository.create": lambda s: SessionRepository(s).create(
        id="s-9", job_id="j", clerk_user_id="u", tier="partner", model_used=SONNET
    ),
    "SessionRepository.get": lambda s: SessionRepository(s).get("s-1"),
    "SessionRepository.head": lambda s: SessionRepository(s).head("s-1"),
    "SessionRepository.get_or_none": lambda s: SessionRepository(s).get_or_none("s-1"),
    "SessionRepository.lock": lambda s: SessionRepository(s).lock("s-1"),
    "SessionRepository.transition": lambda s: SessionRepository(s).transition(
        "s-1", "completed", expected="working"
    ),
    "SessionRepository.add_cost": lambda s: SessionRepository(s).add_cost("s-1", 5),
    "SessionRepository.wake_many": lambda s: SessionRepository(s).wake_many({"s-1": 1}),
    "SessionRepository.set_working_budget": lambda s: SessionRepository(s).set_working_budget(
        "s-1", 7
    ),
    "SessionRepository.claim_due_for_wake": lambda s: SessionRepository(s).claim_due_for_wake(
        now=NOW
    ),
    "SessionRepository.defer_wakes": lambda s: SessionRepository(s).defer_wakes({"s-1": NOW}),
    "SessionRepository.next_wake_at": lambda s: SessionRepository(s).next_wake_at(),
    "SessionRepository.due_stats": lambda s: SessionRepository(s).due_stats(now=NOW),
    "SessionRepository.sleep_over_budget": lambda s: SessionRepository(s).sleep_over_budget(
        day=DAY, silent_for=timedelta(0), wake_at=NOW
    ),
    "SessionRepository.stop_over_budget": lambda s: SessionRepository(s).stop_over_budget(day=DAY),
    "SessionRepository.resume_within_budget": lambda s: SessionRepository(s).resume_within_budget(
        clerk_user_id="u", day=DAY
    ),
    "SessionRepository.request_wake": lambda s: SessionRepository(s).request_wake(
        session_id="s-1", now=NOW
    ),
    "SessionRepository.notify_workers": lambda s: SessionRepository(s).notify_workers(),
    "SessionRepository.snapshot_rows": lambda s: SessionRepository(s).snapshot_rows(["s-1"]),
    "SessionRepository.changed_since": lambda s: SessionRepository(s).changed_since(
        None, horizon=timedelta(hours=1)
    ),
    "SessionRepository.list_by_status": lambda s: SessionRepository(s).list_by_status("working"),
    "SessionRepository.count_by_status": lambda s: SessionRepository(s).count_by_status(),
    "BudgetRepository.charge": lambda s: BudgetRepository(s, SETTINGS).charge(
        session_id="s-1",
        request_id="r-1",
        model=SONNET,
        input_tokens=1,
        output_tokens=1,
        now=NOW,
    ),
    "BudgetRepository.charge_usage": lambda s: BudgetRepository(s, SETTINGS).charge_usage(
        session_id="s-1",
        request_id="r-2",
        model=SONNET,
        usage={"input_tokens": 1, "output_tokens": 1, "cache_read_input_tokens": 5},
        now=NOW,
    ),
    "BudgetRepository.reserve": lambda s: BudgetRepository(s, SETTINGS).reserve(
        session_id="s-1",
        request_id="r-3",
        model=SONNET,
        max_input_tokens=10,
        max_output_tokens=10,
        now=NOW,
    ),
    "UserRepository.upsert": lambda s: UserRepository(s).upsert("u-9", tier="partner"),
    "UserRepository.get": lambda s: UserRepository(s).get("u"),
    "PriceRepository.list": lambda s: PriceRepository(s).list(),
    "PriceRepository.in_force": lambda s: PriceRepository(s).in_force(SONNET, at=NOW),
    "PriceRepository.add": lambda s: PriceRepository(s).add(
        model="test-errors-model", rates=rates(1, 1), effective_from=NOW, source="test"
    ),
    "BudgetRepository.release_reservations": lambda s: BudgetRepository(
        s, SETTINGS
    ).release_reservations(["s-1"]),
    "BudgetRepository.daily_budget": lambda s: BudgetRepository(s, SETTINGS).daily_budget(
        "u", DAY, tier="partner"
    ),
    "BudgetRepository.daily_budgets": lambda s: BudgetRepository(s, SETTINGS).daily_budgets(
        {"u": "partner"}, DAY
    ),
    "BudgetRepository.top_up": lambda s: BudgetRepository(s, SETTINGS).top_up(
        "u", 1_000_000, now=NOW
    ),
    "BudgetRepository.last_charge_day": lambda s: BudgetRepository(s, SETTINGS).last_charge_day(
        "s-1"
    ),
    "BudgetRepository.day_spend": lambda s: BudgetRepository(s, SETTINGS).day_spend(DAY),
    "BudgetRepository.spent": lambda s: BudgetRepository(s, SETTINGS).spent("u", DAY),
    "CheckpointRepository.save": lambda s: CheckpointRepository(s).save(checkpoint()),
    "CheckpointRepository.append": lambda s: CheckpointRepository(s).append(
        checkpoint(), new_messages=0
    ),
    "CheckpointRepository.load_latest": lambda s: CheckpointRepository(s).load_latest("s-1"),
    "CheckpointRepository.load_latest_many": lambda s: CheckpointRepository(s).load_latest_many(
        ["s-1"]
    ),
    "CheckpointRepository.load": lambda s: CheckpointRepository(s).load("s-1", 1),
    "CheckpointRepository.list": lambda s: CheckpointRepository(s).list("s-1"),
    "CheckpointRepository.prune": lambda s: CheckpointRepository(s).prune("s-1", keep_last=1),
    "ResumeRepository.claim_deliveries": lambda s: ResumeRepository(s).claim_deliveries(
        lease=timedelta(seconds=1), max_attempts=3
    ),
    "ResumeRepository.park_exhausted": lambda s: ResumeRepository(s).park_exhausted(max_attempts=3),
    "ResumeRepository.redeliver_orphans": lambda s: ResumeRepository(s).redeliver_orphans(
        runner_timeout=timedelta(minutes=1)
    ),
    "ResumeRepository.acknowledge": lambda s: ResumeRepository(s).acknowledge({"s-1": "t"}),
    "ResumeRepository.renew": lambda s: ResumeRepository(s).renew(
        {"s-1": "t"}, lease=timedelta(seconds=1)
    ),
    "ResumeRepository.retry_later": lambda s: ResumeRepository(s).retry_later(
        "s-1", "t", delay=timedelta(seconds=1)
    ),
    "ResumeRepository.heartbeat": lambda s: ResumeRepository(s).heartbeat("s-1", "t"),
    "ResumeRepository.retire_token": lambda s: ResumeRepository(s).retire_token("s-1"),
    "ResumeRepository.redeliver": lambda s: ResumeRepository(s).redeliver("s-1"),
    "ResumeRepository.stuck": lambda s: ResumeRepository(s).stuck(overdue=timedelta(1)),
    "ResumeRepository.seconds_until_next_delivery": lambda s: ResumeRepository(
        s
    ).seconds_until_next_delivery(),
    "ResumeRepository.count_parked": lambda s: ResumeRepository(s).count_parked(),
    "EventRepository.add": lambda s: EventRepository(s).add(
        [NewEvent(EventType.SLEPT, "session.slept:s-1:1", session_id="s-1")]
    ),
    "EventRepository.claim": lambda s: EventRepository(s).claim(
        lease=timedelta(seconds=1), limit=10
    ),
    "EventRepository.delivered": lambda s: EventRepository(s).delivered([1]),
    "EventRepository.retry_later": lambda s: EventRepository(s).retry_later(
        1, 1, delay=timedelta(seconds=1), error="503"
    ),
    "EventRepository.pending": lambda s: EventRepository(s).pending(),
    "EventRepository.seconds_until_next": lambda s: EventRepository(s).seconds_until_next(),
    "RetentionRepository.purge_checkpoints": lambda s: RetentionRepository(s).purge_checkpoints(
        older_than_days=30, limit=10
    ),
    "RetentionRepository.preview_purge": lambda s: RetentionRepository(s).preview_purge(
        older_than_days=30
    ),
    "RetentionRepository.delete_session": lambda s: RetentionRepository(s).delete_session("s-1"),
}


def test_every_public_method_is_covered_here_and_translates_errors() -> None:
    public = {
        f"{cls.__name__}.{name}"
        for cls in REPOSITORIES
        for name, member in vars(cls).items()
        if not name.startswith("_") and inspect.iscoroutinefunction(member)
    }
    assert public == set(CALLS)
    for cls in REPOSITORIES:
        for name, member in vars(cls).items():
            if not name.startswith("_") and inspect.iscoroutinefunction(member):
                assert hasattr(member, "__wrapped__"), f"{cls.__name__}.{name}"


@pytest.fixture(scope="module")
def unreachable() -> Factory:
    """A session factory for a server that refuses every connection."""
    return create_session_factory(
        create_engine("postgresql://postgres@127.0.0.1:1/none", connect_args={"timeout": 2})
    )


@pytest.mark.parametrize("name", sorted(CALLS))
async def test_an_unreachable_server_is_database_unavailable(
    unreachable: Factory, name: str
) -> None:
    async def call() -> None:
        async with unreachable() as s:
            await CALLS[name](s)

    with pytest.raises(DatabaseUnavailable):
        await call()


async def test_a_serialisation_failure_is_a_transaction_conflict(session_factory: Factory) -> None:
    await make_session(session_factory, "s-1")
    first, second = session_factory(), session_factory()
    try:
        for s in (first, second):
            await s.connection(execution_options={"isolation_level": "SERIALIZABLE"})
            await SessionRepository(s).get("s-1")  # both read the row first
        await SessionRepository(first).add_cost("s-1", 5)
        await first.commit()
        with pytest.raises(TransactionConflict):
            await SessionRepository(second).add_cost("s-1", 7)
    finally:
        await first.close()
        await second.close()
    async with session_factory() as s:
        assert (await SessionRepository(s).get("s-1")).cumulative_cost_microdollars == 5


async def test_a_foreign_key_names_the_missing_session(session_factory: Factory) -> None:
    async def charge_a_missing_session() -> None:
        async with session_factory.begin() as s:
            await CALLS["BudgetRepository.charge"](s)

    with pytest.raises(SessionNotFound) as caught:
        await charge_a_missing_session()
    assert caught.value.session_id == "s-1"


async def test_no_repository_commits(session_factory: Factory) -> None:
    """Writes through every repository inside the caller's transaction, then the caller
    fails: nothing is left behind."""

    class Abandon(Exception):
        pass

    async def write_everything_then_fail() -> None:
        async with session_factory.begin() as s:
            await CALLS["SessionRepository.create"](s)
            await SessionRepository(s).create(
                id="s-1", job_id="j", clerk_user_id="u", tier="partner", model_used=SONNET
            )
            await CALLS["BudgetRepository.charge"](s)
            await CALLS["CheckpointRepository.save"](s)
            await CALLS["SessionRepository.add_cost"](s)
            await CALLS["SessionRepository.transition"](s)
            raise Abandon

    with pytest.raises(Abandon):
        await write_everything_then_fail()
    async with session_factory() as s:
        counts = [
            await s.scalar(select(func.count()).select_from(model))
            for model in (AgentSession, AgentCheckpoint, AgentCostEvent, BudgetDay)
        ]
    assert counts == [0, 0, 0, 0]
