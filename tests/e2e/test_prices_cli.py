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
        env, "set", SONNET, "--input", "$1", "--output", "$1", "--from", "2001-01-01T00:00:00Z"
    )
    naive = await prices(
        env, "set", SONNET, "--input", "$1", "--output", "$1", "--from", "2999-01-01T00:00:00"
    )
    assert (past.returncode, naive.returncode) == (2, 2)
    assert "in the past" in past.stderr
    assert "offset" in naive.stderr
    assert len(json.loads((await prices(env, "list", "--model", SONNET, "--json")).stdout)) == 2


async def test_a_price_that_looks_like_dollars_is_refused_unless_confirmed(
    e2e_db: tuple[str, AsyncEngine], redis_url: str
) -> None:
    url, _ = e2e_db
    env = base_env(DATABASE_URL=url, REDIS_URL=redis_url)
    later = "2999-03-01T00:00:00Z"

    slip = await prices(env, "set", "my-model", "--input", "3", "--output", "$15", "--from", later)
    assert slip.returncode == 2
    lines = [line for line in slip.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "--input" in lines[0]
    assert "$3" in lines[0]
    listed = await prices(env, "list", "--model", "my-model")
    assert listed.returncode == 1  # nothing was written, and the list says so plainly
    assert "no price for model 'my-model'" in listed.stderr

    meant = await prices(
        env, "set", "my-model", "--input", "3", "--output", "$15", "--from", later, "--yes"
    )
    assert meant.returncode == 0, meant.stderr
    rows = json.loads((await prices(env, "list", "--model", "my-model", "--json")).stdout)
    assert [(r["input_per_mtok"], r["output_per_mtok"]) for r in rows] == [(3, 15_000_000)]
