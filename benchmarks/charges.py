"""The charge case: 32 concurrent tasks charging calls with every token class, as a fleet
does (many users, several sessions each), BudgetRepository against the same work written
by hand on raw asyncpg, and a reservation before each charge against a plain charge.

A user's charges take turns on the user's budget_days row, so 32 tasks charging one
user measure that row's lock, not the charge: here 64 users share the 32 tasks (each
task charges a different user's session in turn), as in production. ``--only charge``
also reports the one-user figure for comparison.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
from sqlalchemy import text

from app.db.engine import create_engine, create_session_factory
from app.repositories import BudgetRepository, SessionRepository
from app.settings import SONNET, Settings
from benchmarks.common import AGENT_CALL, dsn, time_day

TASKS = 32
USERS = 64
SESSIONS_PER_USER = 4

# What a hand-written asyncpg charge runs: one statement that looks up the price in force,
# prices every class, appends the ledger row once per request id, settles a reservation,
# adds to the day's spend and to the session's cost (stopping it above 110 %). The first
# charge of a user's day (the day's row missing) is not covered: the benchmark makes the
# rows first, so both sides measure the steady state.
RAW_CHARGE = """
WITH owner AS (
    SELECT id, clerk_user_id FROM agent_sessions WHERE id = $1
), price AS (
    SELECT * FROM prices WHERE model = $3 AND effective_from <= $4
    ORDER BY effective_from DESC LIMIT 1
), priced AS (
    SELECT (div($5::numeric * p.input_per_mtok, $10)
          + div(($7::numeric - $8) * p.cache_write_5m_per_mtok, $10)
          + div($8::numeric * p.cache_write_1h_per_mtok, $10)
          + div($9::numeric * p.cache_read_per_mtok, $10)
          + div($6::numeric * p.output_per_mtok, $10))::bigint AS cost
    FROM price p
), event AS (
    INSERT INTO agent_cost_events (request_id, session_id, clerk_user_id, model, input_tokens,
        output_tokens, cache_creation_input_tokens, cache_creation_1h_input_tokens,
        cache_read_input_tokens, batch, cost_microdollars, budget_day)
    SELECT $2, owner.id, owner.clerk_user_id, $3, $5, $6, $7, $8, $9, $11, priced.cost, $12
    FROM owner, priced
    ON CONFLICT (clerk_user_id, request_id) DO NOTHING
    RETURNING clerk_user_id, cost_microdollars
), settled AS (
    DELETE FROM budget_reservations
    WHERE clerk_user_id = (SELECT clerk_user_id FROM owner) AND request_id = $2
        AND budget_day = $12 AND EXISTS (SELECT FROM event)
    RETURNING amount_microdollars
), spend AS (
    UPDATE budget_days d
    SET spent_microdollars = d.spent_microdollars + event.cost_microdollars,
        reserved_microdollars = greatest(d.reserved_microdollars
            - (SELECT coalesce(sum(amount_microdollars), 0) FROM settled), 0)
    FROM event WHERE d.clerk_user_id = event.clerk_user_id AND d.day = $12
    RETURNING d.spent_microdollars, d.budget_microdollars
), session_update AS (
    UPDATE agent_sessions s
    SET cumulative_cost_microdollars = s.cumulative_cost_microdollars
            + (SELECT cost_microdollars FROM event),
        status = CASE WHEN s.status = 'working' AND spend.budget_microdollars > 0
            AND spend.spent_microdollars::numeric * 100 > spend.budget_microdollars::numeric * 110
            THEN 'budget_exceeded' ELSE s.status END
    FROM spend, owner WHERE s.id = owner.id
    RETURNING s.id
)
SELECT (SELECT cost FROM priced) AS cost, EXISTS (SELECT FROM event) AS inserted,
       (SELECT spent_microdollars FROM spend) AS spent,
       (SELECT budget_microdollars FROM spend) AS budget,
       EXISTS (SELECT FROM session_update) AS session_updated
"""

# The same statement as SQLAlchemy text with named parameters, run on a bare
# AsyncConnection: what SQLAlchemy's async engine alone costs for this SQL (pool checkout,
# BEGIN, execute, COMMIT, check-in), without the ORM session or the repository.
# (A space after each name keeps a following ``::numeric`` cast out of it.)
RAW_CHARGE_TEXT = text(re.sub(r"\$(\d+)", r":p\1 ", RAW_CHARGE))


async def _fleet(factory: Any, settings: Settings, users: int, tag: str) -> list[str]:
    """Sessions of ``users`` users (SESSIONS_PER_USER each), each day's row made."""
    sessions = [f"bench-{tag}-{u}-{k}" for u in range(users) for k in range(SESSIONS_PER_USER)]
    async with factory.begin() as s:
        repo = SessionRepository(s)
        for sid in sessions:
            user = sid.rsplit("-", 1)[0]
            await repo.create(
                id=sid, job_id="j", clerk_user_id=user, tier="partner", model_used=SONNET
            )
    async with factory.begin() as s:  # the days' rows exist: the steady state
        budget = BudgetRepository(s, settings)
        for u in range(users):
            await budget.daily_budget(f"bench-{tag}-{u}", time_day(), tier="partner")
    return sessions


def _raw_values(session_id: str, request_id: str) -> tuple[Any, ...]:
    """RAW_CHARGE's parameters, in order, for one AGENT_CALL (the request id made unique)."""
    call = AGENT_CALL
    return (
        session_id, f"{request_id}-{uuid.uuid4().hex[:6]}", SONNET, datetime.now(UTC),
        call["input_tokens"], call["output_tokens"], call["cache_creation_input_tokens"],
        call["cache_creation_1h_input_tokens"], call["cache_read_input_tokens"], 1_000_000,
        False, time_day(),
    )  # fmt: skip


def _session_for(sessions: list[str], users: int, task: int, i: int) -> str:
    # Task k charges user (k + 32 i) mod users: concurrent tasks are on different users.
    user = (task + TASKS * i) % users
    return sessions[user * SESSIONS_PER_USER + (i % SESSIONS_PER_USER)]


async def charges(url: str, rounds: int, per_task: int) -> tuple[str, dict[str, Any]]:
    """Charges with every token class: BudgetRepository, raw asyncpg, the same statement
    on a bare SQLAlchemy AsyncConnection (the async engine's own floor), reserve +
    charge, and BudgetRepository on one user (the row lock's ceiling)."""
    # A large allowance: no session stops mid-benchmark, whatever the number of rounds.
    settings = Settings(_env_file=None, tier_allowance_partner=10**15)
    engine = create_engine(url, pool_size=TASKS, max_overflow=0)
    factory = create_session_factory(engine)
    pool = await asyncpg.create_pool(dsn(url), min_size=TASKS, max_size=TASKS)
    fleet = await _fleet(factory, settings, USERS, "fleet")
    lone = await _fleet(factory, settings, 1, "lone")
    run = uuid.uuid4().hex[:6]

    async def ours(task: int, i: int) -> None:
        async with factory.begin() as s:
            await BudgetRepository(s, settings).charge(
                session_id=_session_for(fleet, USERS, task, i),
                request_id=f"{run}-o-{task}-{i}-{uuid.uuid4().hex[:6]}",
                model=SONNET, **AGENT_CALL,
            )  # fmt: skip

    async def raw(task: int, i: int) -> None:
        values = _raw_values(_session_for(fleet, USERS, task, i), f"{run}-r-{task}-{i}")
        async with pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(RAW_CHARGE, *values)
            assert row is not None
            assert row["inserted"]

    async def engine_floor(task: int, i: int) -> None:
        values = _raw_values(_session_for(fleet, USERS, task, i), f"{run}-e-{task}-{i}")
        async with engine.begin() as conn:
            named = {f"p{k}": v for k, v in enumerate(values, start=1)}
            row = (await conn.execute(RAW_CHARGE_TEXT, named)).one()
            assert row.inserted

    async def reserved(task: int, i: int) -> None:
        request_id = f"{run}-p-{task}-{i}-{uuid.uuid4().hex[:6]}"
        session_id = _session_for(fleet, USERS, task, i)
        async with factory.begin() as s:
            booked = await BudgetRepository(s, settings).reserve(
                session_id=session_id, request_id=request_id, model=SONNET,
                max_input_tokens=70_000, max_output_tokens=4_000,
                max_cache_creation_input_tokens=4_000,
            )  # fmt: skip
            assert booked.granted
        async with factory.begin() as s:
            await BudgetRepository(s, settings).charge(
                session_id=session_id, request_id=request_id, model=SONNET, **AGENT_CALL
            )

    async def one_user(task: int, i: int) -> None:
        async with factory.begin() as s:
            await BudgetRepository(s, settings).charge(
                session_id=lone[task % SESSIONS_PER_USER],
                request_id=f"{run}-l-{task}-{i}-{uuid.uuid4().hex[:6]}",
                model=SONNET, **AGENT_CALL,
            )  # fmt: skip

    cases: list[tuple[str, Callable[[int, int], Awaitable[None]]]] = [
        ("BudgetRepository.charge", ours),
        ("raw asyncpg, same statement by hand", raw),
        ("SQLAlchemy AsyncConnection, same statement by hand", engine_floor),
        ("reserve + charge (2 transactions)", reserved),
        ("BudgetRepository.charge, all 32 tasks on one user", one_user),
    ]
    results: dict[str, list[float]] = {name: [] for name, _ in cases}
    cpu: dict[str, float] = dict.fromkeys(results, 0.0)
    latencies: dict[str, list[float]] = {name: [] for name in results}
    for _, fn in cases:  # warm-up
        await asyncio.gather(*(fn(t, -1 - t) for t in range(TASKS)))
    for r in range(rounds):
        for name, fn in cases if r % 2 == 0 else list(reversed(cases)):
            c = time.process_time()
            t = time.perf_counter()

            async def task(
                k: int, fn: Callable[[int, int], Awaitable[None]] = fn, name: str = name
            ) -> None:
                for i in range(per_task):
                    t0 = time.perf_counter()
                    await fn(k, r * per_task + i)
                    latencies[name].append(time.perf_counter() - t0)

            await asyncio.gather(*(task(k) for k in range(TASKS)))
            results[name].append(TASKS * per_task / (time.perf_counter() - t))
            cpu[name] += time.process_time() - c
    await pool.close()
    await engine.dispose()
    total = TASKS * per_task * rounds
    rate = {name: statistics.median(values) for name, values in results.items()}
    ours_rate = rate["BudgetRepository.charge"]
    raw_rate = rate["raw asyncpg, same statement by hand"]
    floor_rate = rate["SQLAlchemy AsyncConnection, same statement by hand"]
    lines = [
        f"\n### Charge, every token class: {TASKS} concurrent tasks, {USERS} users x"
        f" {SESSIONS_PER_USER} sessions, one process\n",
        "| case | ops/s (median) | spread | median latency ms | p99 ms | CPU µs/op |"
        " time per op vs plain charge |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    summary: dict[str, Any] = {}
    for name, values in results.items():
        spread = (max(values) - min(values)) / rate[name] * 50
        lat = sorted(latencies[name])
        lines.append(
            f"| {name} | {rate[name]:,.0f} | ±{spread:.0f}% | {statistics.median(lat) * 1e3:.2f} |"
            f" {lat[int(len(lat) * 0.99) - 1] * 1e3:.2f} | {cpu[name] / total * 1e6:.0f} |"
            f" {ours_rate / rate[name]:.2f}x |"
        )
        summary[name] = {"ops_per_s": rate[name], "cpu_us": cpu[name] / total * 1e6}
    summary["charge_vs_raw"] = raw_rate / ours_rate
    summary["sqlalchemy_floor_vs_raw"] = raw_rate / floor_rate
    summary["charge_vs_sqlalchemy_floor"] = floor_rate / ours_rate
    summary["reserve_and_charge_vs_charge"] = ours_rate / rate["reserve + charge (2 transactions)"]
    lines.append(
        f"\nBudgetRepository.charge vs raw asyncpg: {summary['charge_vs_raw']:.2f}x per charge"
        f" (the same SQL on a bare SQLAlchemy AsyncConnection:"
        f" {summary['sqlalchemy_floor_vs_raw']:.2f}x raw; the repository over that:"
        f" {summary['charge_vs_sqlalchemy_floor']:.2f}x); reserve + charge vs a plain charge:"
        f" {summary['reserve_and_charge_vs_charge']:.2f}x."
    )
    return "\n".join(lines), summary
