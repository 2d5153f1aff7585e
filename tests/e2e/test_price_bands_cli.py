"""``python -m app prices`` with bands and web search, as a real process (issue 29)."""

from __future__ import annotations

import json

from sqlalchemy.ext.asyncio import AsyncEngine

from tests.e2e.conftest import base_env, run_app


async def test_set_and_list_a_banded_price(e2e_db: tuple[str, AsyncEngine], redis_url: str) -> None:
    url, _ = e2e_db
    env = base_env(DATABASE_URL=url, REDIS_URL=redis_url)
    model = "test-cli-bands"
    done = await run_app(
        env, "prices", "set", model, "--input", "$3", "--output", "$15",
        "--band", "200000:$6:$22.50", "--band", "500_000:$9:$30:10000000:20000000:900000",
        "--web-search-per-1k", "$10", "--from", "2999-01-01T00:00:00Z",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "prompt above 200,000 tokens: input $6.00" in done.stdout
    assert "web search $10.00 per 1,000" in done.stdout

    rows = json.loads((await run_app(env, "prices", "list", "--model", model, "--json")).stdout)
    assert len(rows) == 1
    assert rows[0]["web_search_per_1k"] == 10_000_000
    assert rows[0]["bands"] == [
        {
            "threshold_tokens": 200_000,
            "input_per_mtok": 6_000_000,
            "output_per_mtok": 22_500_000,
            "cache_write_5m_per_mtok": 7_500_000,  # scaled like the input: 2x
            "cache_write_1h_per_mtok": 12_000_000,
            "cache_read_per_mtok": 600_000,
        },
        {
            "threshold_tokens": 500_000,
            "input_per_mtok": 9_000_000,
            "output_per_mtok": 30_000_000,
            "cache_write_5m_per_mtok": 10_000_000,
            "cache_write_1h_per_mtok": 20_000_000,
            "cache_read_per_mtok": 900_000,
        },
    ]
    # The seeded bands show in the table, under their row.
    table = (await run_app(env, "prices", "list", "--model", "claude-sonnet-4-5")).stdout
    assert "prompt > 200,000" in table
    assert "$10.00" in table  # web search per 1,000

    bad = await run_app(
        env, "prices", "set", model, "--input", "$1", "--output", "$1", "--band", "200000:$6",
        "--from", "2999-02-01T00:00:00Z",
    )  # fmt: skip
    assert bad.returncode == 2
    assert "not a band" in bad.stderr
    assert "Traceback" not in bad.stderr
    again = json.loads((await run_app(env, "prices", "list", "--model", model, "--json")).stdout)
    assert len(again) == 1
