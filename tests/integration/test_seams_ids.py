"""Ids at the seams (DESIGN.md §6c, issue 24): the id rule on every way in, every key
derived from an accepted id fits its column, the store's own Redis names out of any
session's reach, and an erased session's id used again as a new incarnation. Real
PostgreSQL and Redis throughout."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select

from app.db.models import AgentCostEvent, AgentEvent, AgentSession, BudgetDay, UserSettings
from app.domain import EventType, InvalidInput
from app.lifecycle import (
    Runtime,
    charge,
    start_session,
    top_up,
)
from app.repositories import BudgetRepository, SessionRepository
from app.session_store import RedisClient, RedisSessionStore
from app.settings import ModelPrice, Settings
from tests.integration.helpers import Factory
from tests.integration.money import ONE_PER_TOKEN

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
DAY_BUDGET = 10_000  # a partner without a billing row: 300,000 / 30 µ$


def make_settings() -> Settings:
    # 1 µ$ per token, so every figure is checked by hand; deliveries run out after two.
    return Settings(
        _env_file=None,
        model_prices={
            ONE_PER_TOKEN: ModelPrice(input_per_mtok=1_000_000, output_per_mtok=1_000_000)
        },
        tier_allowance_partner=300_000,
        resume_max_attempts=2,
        resume_lease_seconds=60.0,
        backoff_max_seconds=0.05,
    )


@pytest.fixture
def rt(session_factory: Factory, store: RedisSessionStore) -> Runtime:
    return Runtime(session_factory, store, make_settings(), lambda: NOW)


async def spend(rt: Runtime, session_id: str, request_id: str, microdollars: int) -> None:
    await charge(
        rt,
        session_id=session_id,
        request_id=request_id,
        model=ONE_PER_TOKEN,
        input_tokens=microdollars,
        output_tokens=0,
        now=NOW,
    )


async def events(factory: Factory, type: EventType) -> list[AgentEvent]:
    async with factory() as s:
        stmt = select(AgentEvent).where(AgentEvent.type == type.value).order_by(AgentEvent.id)
        return list(await s.scalars(stmt))


async def status_of(factory: Factory, session_id: str) -> str:
    async with factory() as s:
        return (await SessionRepository(s).get(session_id)).status


async def begin(rt: Runtime, session_id: str, user: str) -> AgentSession:
    return await start_session(
        rt, session_id=session_id, job_id="j", clerk_user_id=user, tier="partner"
    )


# ------------------------------------------------------------------- the id rule

BAD_IDS: list[Any] = [
    "",
    " \t ",
    "\u3000",  # blank: an ideographic space only
    "line\nbreak",
    "nul\x00byte",
    "c1\x85control",
    "\x7f",
    "esc\x1b[31m",
    "x" * 256,
    "lone\ud800surrogate",
    7,
    None,
]


async def count_rows(factory: Factory) -> dict[str, int]:
    async with factory() as s:
        return {
            model.__tablename__: int(await s.scalar(select(func.count()).select_from(model)) or 0)
            for model in (AgentSession, BudgetDay, AgentCostEvent, AgentEvent, UserSettings)
        }


async def redis_keys(redis: RedisClient, key_prefix: str) -> list[bytes]:
    return [k async for k in redis.scan_iter(match=f"{key_prefix}*")]


@pytest.mark.parametrize("bad", BAD_IDS, ids=repr)
@pytest.mark.parametrize("field", ["session_id", "job_id", "clerk_user_id"])
async def test_start_session_refuses_an_id_outside_the_rule_and_writes_nothing(
    rt: Runtime, session_factory: Factory, redis: RedisClient, key_prefix: str, field: str, bad: Any
) -> None:
    given = {"session_id": "s-1", "job_id": "j", "clerk_user_id": "u-1", field: bad}
    with pytest.raises(InvalidInput) as caught:
        await start_session(rt, tier="partner", **given)
    assert caught.value.field == field
    assert set((await count_rows(session_factory)).values()) == {0}
    assert await redis_keys(redis, key_prefix) == []


@pytest.mark.parametrize("bad", BAD_IDS, ids=repr)
async def test_the_repositories_and_user_settings_refuse_an_id_outside_the_rule(
    rt: Runtime, session_factory: Factory, bad: Any
) -> None:
    await begin(rt, "s-1", "u-1")
    before = await count_rows(session_factory)
    for field in ("id", "job_id", "clerk_user_id"):
        given = {"id": "s-2", "job_id": "j", "clerk_user_id": "u-1", field: bad}
        with pytest.raises(InvalidInput) as caught:
            async with session_factory.begin() as s:
                await SessionRepository(s).create(tier="partner", model_used="m", **given)
        assert caught.value.field == field
    for field in ("session_id", "request_id"):
        call = {"session_id": "s-1", "request_id": "r-1", field: bad}
        with pytest.raises(InvalidInput) as caught:
            async with session_factory.begin() as s:
                await BudgetRepository(s, rt.settings).charge(
                    model=ONE_PER_TOKEN, input_tokens=10, output_tokens=0, now=NOW, **call
                )
        assert caught.value.field == field
    with pytest.raises(InvalidInput) as caught:
        async with session_factory.begin() as s:
            s.add(UserSettings(clerk_user_id=bad, tier="partner"))
    assert caught.value.field == "clerk_user_id"
    with pytest.raises(InvalidInput) as caught:
        async with session_factory.begin() as s:
            s.add(
                AgentSession(
                    id=bad, job_id="j", clerk_user_id="u-1", tier="partner", model_used="m"
                )
            )
    assert caught.value.field == "id"
    with pytest.raises(InvalidInput) as caught:
        await top_up(rt, clerk_user_id=bad, amount_microdollars=5, now=NOW)
    assert caught.value.field == "clerk_user_id"
    assert await count_rows(session_factory) == before
