"""The README's examples run as written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from app.db.engine import create_engine
from app.db.models import AgentSession

README = Path(__file__).resolve().parents[2] / "README.md"


def example(name: str) -> str:
    match = re.search(rf"<!-- example:{name} -->\s*```python\n(.*?)```", README.read_text(), re.S)
    assert match, f"README has no example named {name}"
    return match.group(1)


async def test_sessions_example(
    database_url: str, redis_url: str, redis: Redis, key_prefix: str
) -> None:
    namespace: dict[str, Any] = {}
    exec(compile(example("sessions"), "README.md:sessions", "exec"), namespace)  # noqa: S102
    try:
        await namespace["main"](database_url, redis_url, key_prefix)
        engine = create_engine(database_url)
        async with engine.connect() as conn:
            status = await conn.scalar(
                AgentSession.__table__.select()
                .with_only_columns(AgentSession.__table__.c.status)
                .where(AgentSession.__table__.c.id == "sess-42")
            )
        await engine.dispose()
        assert status == "sleeping"
    finally:
        await redis.delete(f"{key_prefix}:sess-42")


pytestmark = pytest.mark.integration
