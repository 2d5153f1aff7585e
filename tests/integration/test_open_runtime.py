"""``open_runtime``: an application's own process gets a working Runtime from URLs, from
settings or from the environment, and a missing URL is an error naming it."""

from __future__ import annotations

import pytest

from app import lifecycle
from app.bootstrap import open_runtime
from app.domain import InvalidInput, SessionStatus, Tier
from app.settings import Settings


async def test_a_runtime_from_urls_runs_a_session(
    database_url: str, redis_url: str, key_prefix: str
) -> None:
    settings = Settings(_env_file=None, redis_prefix=key_prefix)
    async with open_runtime(database_url, redis_url, settings=settings) as rt:
        session = await lifecycle.start_session(
            rt, session_id="rt-1", job_id="j", clerk_user_id="u-rt", tier=Tier.PARTNER
        )
        charged = await lifecycle.charge(
            rt,
            session_id="rt-1",
            request_id="call-1",
            model=session.model_used,
            input_tokens=1_000,
            output_tokens=100,
        )
        state = await lifecycle.session_state(rt, "rt-1")
    assert charged.cost_microdollars > 0
    assert state["status"] == SessionStatus.WORKING
    assert state["clerk_user_id"] == "u-rt"


async def test_the_environment_fills_in_what_is_not_given(
    database_url: str, redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("REDIS_PREFIX", key_prefix)
    async with open_runtime() as rt:
        await lifecycle.start_session(
            rt, session_id="rt-env", job_id="j", clerk_user_id="u-env", tier="bootstrapper"
        )
        assert rt.settings.redis_prefix == key_prefix
        assert (await lifecycle.session_state(rt, "rt-env"))["job_id"] == "j"


async def test_a_missing_database_url_names_it(redis_url: str) -> None:
    settings = Settings(_env_file=None, database_url=None, redis_url=None)
    with pytest.raises(InvalidInput) as caught:
        async with open_runtime(redis_url=redis_url, settings=settings):
            pass
    assert caught.value.field == "database_url"


async def test_a_missing_redis_url_names_it(database_url: str) -> None:
    settings = Settings(_env_file=None, database_url=None, redis_url=None)
    with pytest.raises(InvalidInput) as caught:
        async with open_runtime(database_url, settings=settings):
            pass
    assert caught.value.field == "redis_url"
