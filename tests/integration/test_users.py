"""Users are created and changed in code (``upsert_user``): a new user needs a tier,
a field not given is kept, ``None`` clears, two creators make one row, bad input is
refused with nothing written, and a top-up works on a user made this way."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from app import lifecycle
from app.db.models import UserSettings
from app.domain import InvalidInput, Tier
from app.lifecycle import Runtime
from app.session_store import RedisSessionStore
from app.settings import Settings
from tests.integration.helpers import Factory

RENEWAL = datetime(2031, 6, 15, tzinfo=UTC)


@pytest.fixture
def rt(session_factory: Factory, store: RedisSessionStore) -> Runtime:
    return Runtime(session_factory, store, Settings(_env_file=None))


async def users(session_factory: Factory) -> int:
    async with session_factory() as s:
        return int(await s.scalar(select(func.count()).select_from(UserSettings)) or 0)


async def test_create_then_change_only_what_is_given(rt: Runtime) -> None:
    made = await lifecycle.upsert_user(
        rt, clerk_user_id="u-1", tier=Tier.PARTNER, subscription_renewal_date=RENEWAL
    )
    changed = await lifecycle.upsert_user(
        rt, clerk_user_id="u-1", budget_override_microdollars=7_000_000
    )
    cleared = await lifecycle.upsert_user(rt, clerk_user_id="u-1", subscription_renewal_date=None)
    shown = await lifecycle.get_user(rt, "u-1")

    assert (made.tier, made.subscription_renewal_date) == ("partner", RENEWAL)
    assert (changed.tier, changed.subscription_renewal_date) == ("partner", RENEWAL)
    assert changed.budget_override_microdollars == 7_000_000
    assert shown is not None
    assert (shown.tier, shown.subscription_renewal_date) == ("partner", None)
    assert shown.budget_override_microdollars == 7_000_000
    assert cleared.budget_override_microdollars == 7_000_000
    assert await lifecycle.get_user(rt, "nobody") is None


async def test_two_creators_at_once_make_one_row(rt: Runtime, session_factory: Factory) -> None:
    made = await asyncio.gather(
        *(
            lifecycle.upsert_user(rt, clerk_user_id="u-race", tier=tier)
            for tier in (Tier.PARTNER, Tier.CTO_SCALE) * 4
        )
    )
    assert await users(session_factory) == 1
    final = await lifecycle.get_user(rt, "u-race")
    assert final is not None
    assert final.tier in {m.tier for m in made}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({}, "tier"),  # a new user needs a tier
        ({"tier": "platinum"}, "tier"),
        ({"tier": "partner", "subscription_renewal_date": datetime(2031, 6, 15)}, None),
        ({"tier": "partner", "budget_override_microdollars": -1}, None),
        ({"tier": "partner", "budget_override_microdollars": 2**63}, None),
    ],
)
async def test_bad_input_is_refused_and_nothing_written(
    rt: Runtime, session_factory: Factory, changes: dict[str, object], field: str | None
) -> None:
    with pytest.raises(InvalidInput) as caught:
        await lifecycle.upsert_user(rt, clerk_user_id="u-bad", **changes)  # type: ignore[arg-type]
    if field is not None:
        assert caught.value.field == field
    assert await users(session_factory) == 0


async def test_a_bad_id_is_refused(rt: Runtime, session_factory: Factory) -> None:
    with pytest.raises(InvalidInput) as caught:
        await lifecycle.upsert_user(rt, clerk_user_id="a\nb", tier="partner")
    assert caught.value.field == "clerk_user_id"
    assert await users(session_factory) == 0


async def test_a_user_made_in_code_can_be_topped_up(rt: Runtime) -> None:
    # A top-up needs a user_settings row: before upsert_user, that meant a hand-written row.
    now = datetime.now(UTC)
    await lifecycle.upsert_user(
        rt,
        clerk_user_id="u-buyer",
        tier="bootstrapper",
        subscription_renewal_date=now + timedelta(days=9),
    )
    moved = await lifecycle.top_up(
        rt, clerk_user_id="u-buyer", amount_microdollars=5_000_000, now=now
    )
    assert moved == 0  # no sessions yet; the credit is what counts
    with pytest.raises(InvalidInput):
        await lifecycle.top_up(rt, clerk_user_id="u-nobody", amount_microdollars=1, now=now)
