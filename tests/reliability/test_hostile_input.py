"""Hostile input to every public method: the only outcomes allowed are success or a
typed ``DomainError``, and after an error the database is exactly as it was."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from datetime import UTC
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import AgentCheckpoint
from app.domain import DomainError
from app.repositories import BudgetRepository, CheckpointRepository, SessionRepository
from app.session_store import RedisSessionStore
from app.settings import SONNET, Settings
from tests.integration.helpers import Factory

SETTINGS = Settings(_env_file=None)
TABLES = (
    "agent_sessions",
    "agent_checkpoints",
    "agent_cost_events",
    "budget_days",
    "user_settings",
)
HOSTILE = settings(
    max_examples=int(os.environ.get("HOSTILE_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

any_char = st.characters(codec=None, categories=None)  # NUL and lone surrogates included
weird_text = st.one_of(
    st.text(any_char, max_size=20),
    st.text(any_char, min_size=250, max_size=600),
    st.sampled_from(
        [
            "",
            " ",
            "x'; DROP TABLE agent_sessions; --",
            "' OR '1'='1",
            "s-1\x00",
            "\ud800",
            "%s%s%n",
            "$1",
            "*",
            "../../etc/passwd",
            "base",
        ]
    ),
)
weird_int = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, -1, 2**31, 2**63 - 1, 2**63, True, False]),
    st.floats(allow_nan=True),
    st.none(),
    st.text(max_size=5),
)
weird_status = st.one_of(
    st.sampled_from(["working", "sleeping", "completed", "budget_exceeded"]), weird_text
)
json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(any_char, max_size=10),
)
weird_json = st.recursive(
    json_leaf,
    lambda c: (
        st.lists(c, max_size=3) | st.dictionaries(st.text(any_char, max_size=5), c, max_size=3)
    ),
    max_leaves=10,
)


async def fingerprint(factory: Factory) -> list[str]:
    """A digest of every row of every table."""
    digests = []
    async with factory() as s:
        for table in TABLES:  # fixed names, not input
            query = f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {table} t"  # noqa: S608, E501
            digests.append(str(await s.scalar(text(query))))
    return digests


async def attempt(factory: Factory, call: Callable[[AsyncSession], Awaitable[Any]]) -> str:
    before = await fingerprint(factory)
    try:
        async with factory.begin() as s:
            await call(s)
    except DomainError:
        assert await fingerprint(factory) == before, "an error left a trace in the database"
        return "error"
    return "ok"


async def _base(factory: Factory) -> None:
    async with factory.begin() as s:
        repo = SessionRepository(s)
        if await repo.get_or_none("base") is None:
            await repo.create(
                id="base", job_id="j", clerk_user_id="u", tier="partner", model_used=SONNET
            )


@HOSTILE
@given(
    sid=weird_text,
    job=weird_text,
    user=weird_text,
    tier=weird_text,
    model=weird_text,
    budget=weird_int,
)
async def test_create(
    session_factory: Factory, sid: Any, job: Any, user: Any, tier: Any, model: Any, budget: Any
) -> None:
    async def call(s: AsyncSession) -> None:
        await SessionRepository(s).create(
            id=sid, job_id=job, clerk_user_id=user, tier=tier, model_used=model,
            daily_budget_microdollars=budget,
        )  # fmt: skip

    await attempt(session_factory, call)


@HOSTILE
@given(
    sid=weird_text,
    to=weird_status,
    expected=st.one_of(weird_status, st.lists(weird_status, max_size=3)),
    wake=st.one_of(st.none(), st.datetimes(), st.datetimes(timezones=st.just(UTC))),
    amount=weird_int,
)
async def test_transition_and_add_cost(
    session_factory: Factory, sid: Any, to: Any, expected: Any, wake: Any, amount: Any
) -> None:
    await _base(session_factory)
    await attempt(
        session_factory,
        lambda s: SessionRepository(s).transition(sid, to, expected=expected, wake_at=wake),
    )
    await attempt(session_factory, lambda s: SessionRepository(s).add_cost(sid, amount))
    await attempt(session_factory, lambda s: SessionRepository(s).request_wake(session_id=sid))
    await attempt(session_factory, lambda s: SessionRepository(s).list_by_status(to, after_id=sid))


@HOSTILE
@given(
    sid=st.one_of(st.just("base"), weird_text),
    rid=weird_text,
    model=st.one_of(st.just(SONNET), weird_text),
    i=weird_int,
    o=weird_int,
)
async def test_charge(
    session_factory: Factory, sid: Any, rid: Any, model: Any, i: Any, o: Any
) -> None:
    await _base(session_factory)
    await attempt(
        session_factory,
        lambda s: BudgetRepository(s, SETTINGS).charge(
            session_id=sid, request_id=rid, model=model, input_tokens=i, output_tokens=o
        ),
    )


@HOSTILE
@given(
    sid=st.one_of(st.just("base"), weird_text),
    history=st.one_of(
        st.lists(
            st.dictionaries(st.text(any_char, max_size=5), weird_json, max_size=3), max_size=4
        ),
        weird_json,
    ),
    retry=st.one_of(st.dictionaries(weird_text, weird_int, max_size=3), weird_json),
    iteration=weird_int,
    phase=st.one_of(st.none(), weird_text),
    state=weird_status,
    cost=weird_int,
)
async def test_checkpoint_save_and_load(
    session_factory: Factory,
    sid: Any,
    history: Any,
    retry: Any,
    iteration: Any,
    phase: Any,
    state: Any,
    cost: Any,
) -> None:
    await _base(session_factory)
    cp = AgentCheckpoint(session_id=sid, job_id="j")
    cp.message_history, cp.retry_counts, cp.iteration_number = history, retry, iteration
    cp.current_phase, cp.agent_state, cp.session_cost_microdollars = phase, state, cost
    if await attempt(session_factory, lambda s: CheckpointRepository(s).save(cp)) == "ok":
        async with session_factory() as s:
            loaded = await CheckpointRepository(s).load(sid, iteration)
        assert loaded.message_history == history
        assert loaded.retry_counts == retry
    await attempt(session_factory, lambda s: CheckpointRepository(s).load(sid, iteration))


@HOSTILE
@given(sid=weird_text, state=st.dictionaries(st.text(max_size=5), weird_json, max_size=3))
async def test_store_keys_stay_under_the_prefix(
    store: RedisSessionStore, sid: Any, state: Any
) -> None:
    try:
        await store.put(sid, state)
    except DomainError:
        return
    key = store.key(sid)
    assert key.startswith(store.prefix + ":")
    assert key.removeprefix(store.prefix + ":") == sid
    assert await store.get(sid) is not None
    await store.delete(sid)
