"""The charge case: 32 concurrent tasks charging, BudgetRepository against raw asyncpg."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from app.db.engine import create_engine, create_session_factory
from app.repositories import BudgetRepository, SessionRepository
from app.repositories.budget import _CHARGE
from app.settings import SONNET, Settings
from benchmarks.common import dsn, time_day


async def charges(url: str, rounds: int, per_task: int) -> tuple[str, dict[str, Any]]:
    """32 concurrent tasks charging: BudgetRepository against the same SQL on asyncpg."""
    settings = Settings(_env_file=None)
    engine = create_engine(url, pool_size=32, max_overflow=0)
    factory = create_session_factory(engine)
    pool = await asyncpg.create_pool(dsn(url), min_size=32, max_size=32)
    compiled = _CHARGE.compile(dialect=engine.dialect)
    sql = str(compiled)
    order = list(compiled.positiontup or [])
    sessions = [f"bench-{uuid.uuid4().hex[:10]}" for _ in range(32)]
    async with factory.begin() as s:
        for sid in sessions:
            await SessionRepository(s).create(
                id=sid, job_id="j", clerk_user_id="bench-charges", tier="partner", model_used=SONNET
            )
    async with factory.begin() as s:  # the day's row exists: the steady state
        await BudgetRepository(s, settings).daily_budget("bench-charges", time_day())
    run = uuid.uuid4().hex[:6]

    async def ours(task: int, i: int) -> None:
        async with factory.begin() as s:
            await BudgetRepository(s, settings).charge(
                session_id=sessions[task], request_id=f"{run}-o-{task}-{i}-{uuid.uuid4().hex[:6]}",
                model=SONNET, input_tokens=1, output_tokens=1,
            )  # fmt: skip

    async def raw(task: int, i: int) -> None:
        params = {
            "p_session_id": sessions[task], "p_request_id": f"{run}-r-{task}-{i}-{uuid.uuid4().hex[:6]}",
            "p_model": SONNET, "p_input_tokens": 1, "p_output_tokens": 1, "p_cost": 18,
            "p_day": time_day(),
        }  # fmt: skip
        full = compiled.construct_params(params)
        async with pool.acquire() as conn, conn.transaction():
            await conn.fetchrow(sql, *[full[name] for name in order])

    results: dict[str, list[float]] = {"BudgetRepository.charge": [], "raw asyncpg": []}
    cpu: dict[str, float] = dict.fromkeys(results, 0.0)
    latencies: dict[str, list[float]] = {name: [] for name in results}
    for fn in (ours, raw):  # warm-up
        await asyncio.gather(*(fn(t, -1) for t in range(32)))
    for r in range(rounds):
        pairs = [("BudgetRepository.charge", ours), ("raw asyncpg", raw)]
        for name, fn in pairs if r % 2 == 0 else list(reversed(pairs)):
            c = time.process_time()
            t = time.perf_counter()

            async def task(
                k: int, fn: Callable[[int, int], Awaitable[None]] = fn, name: str = name
            ) -> None:
                for i in range(per_task):
                    t0 = time.perf_counter()
                    await fn(k, i)
                    latencies[name].append(time.perf_counter() - t0)

            await asyncio.gather(*(task(k) for k in range(32)))
            results[name].append(32 * per_task / (time.perf_counter() - t))
            cpu[name] += time.process_time() - c
    await pool.close()
    await engine.dispose()
    total = 32 * per_task * rounds
    ours_rate = statistics.median(results["BudgetRepository.charge"])
    raw_rate = statistics.median(results["raw asyncpg"])
    lines = [
        "\n### Charge: 32 concurrent tasks, one process\n",
        "| implementation | charges/s (median) | spread | median latency ms | p99 ms |"
        " CPU µs/charge | vs raw |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    summary: dict[str, Any] = {}
    for name, rates in results.items():
        rate = statistics.median(rates)
        spread = (max(rates) - min(rates)) / rate * 50
        lat = sorted(latencies[name])
        lines.append(
            f"| {name} | {rate:,.0f} | ±{spread:.0f}% | {statistics.median(lat) * 1e3:.2f} |"
            f" {lat[int(len(lat) * 0.99) - 1] * 1e3:.2f} | {cpu[name] / total * 1e6:.0f} |"
            f" {raw_rate / rate:.2f}x per charge |"
        )
        summary[name] = {"charges_per_s": rate, "cpu_us": cpu[name] / total * 1e6}
    summary["ratio_per_charge"] = raw_rate / ours_rate
    return "\n".join(lines), summary
