"""``python -m app prices``: the price list as an operator reads and changes it, as a real
process (set goes through lifecycle.set_price; list marks the row in force)."""

from __future__ import annotations

import json
import subprocess

from sqlalchemy.ext.asyncio import AsyncEngine

from app.settings import SONNET
from tests.e2e.conftest import base_env, run_app


async def prices(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await run_app(env, "prices", *args)


async def test_list_and_set(e2e_db: tuple[str, AsyncEngine], redis_url: str) -> None:
    url, _ = e2e_db
    env = base_env(DATABASE_URL=url, REDIS_URL=redis_url)

    seeded = json.loads((await prices(env, "list", "--model", SONNET, "--json")).stdout)
    assert [(r["input_per_mtok"], r["cache_write_1h_per_mtok"], r["in_force"]) for r in seeded] == [
        (3_000_000, 6_000_000, True)
    ]
    assert "https://" in seeded[0]["source"]

    done = await prices(
        env, "set", SONNET, "--input", "$2", "--output", "10000000", "--cache-read", "$0.25",
        "--from", "2999-01-01T00:00:00Z", "--source", "test price list",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "cache_write_5m $2.50" in done.stdout
    rows = json.loads((await prices(env, "list", "--model", SONNET, "--json")).stdout)
    assert [(r["input_per_mtok"], r["cache_read_per_mtok"], r["in_force"]) for r in rows] == [
        (3_000_000, 300_000, True),
        (2_000_000, 250_000, False),  # from 2999 on: not in force yet
    ]
    table = (await prices(env, "list")).stdout
    assert f"* {SONNET}" in table

    past = await prices(
        env, "set", SONNET, "--input", "1", "--output", "1", "--from", "2001-01-01T00:00:00Z"
    )
    naive = await prices(
        env, "set", SONNET, "--input", "1", "--output", "1", "--from", "2999-01-01T00:00:00"
    )
    assert (past.returncode, naive.returncode) == (2, 2)
    assert "in the past" in past.stderr
    assert "offset" in naive.stderr
    assert len(json.loads((await prices(env, "list", "--model", SONNET, "--json")).stdout)) == 2
