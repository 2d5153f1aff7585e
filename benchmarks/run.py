"""``make bench``: this project's hot paths against references measured in the same run.

Every case runs interleaved with its reference, for several rounds after a warm-up,
and reports the median per operation, the spread of the round medians, p99 and the
client CPU per operation. Results are printed as markdown and written as JSON.

    python -m benchmarks.run [--quick] [--out benchmarks/results/latest.json]

The servers come from DATABASE_URL / REDIS_URL, or are started embedded.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from sqlalchemy.engine import make_url

from app.db.engine import create_engine, create_session_factory
from app.db.migrate import upgrade
from app.db.models import AgentCheckpoint
from app.local_services import local_services
from app.repositories import BudgetRepository, CheckpointRepository, SessionRepository
from app.repositories.budget import _CHARGE
from app.settings import SONNET, Settings

ROOT = Path(__file__).resolve().parents[1]


def dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


_WORDS = (
    "the a to of and in is it for on with as that this test file function error fix run "
    "import return value class def self pytest assert module path line call failed passed "
    "update config build check diff patch commit branch merge review tool result output"
).split()


@functools.cache
def _text(i: int, size: int) -> str:
    rng = random.Random(i)
    words: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(_WORDS) if rng.random() < 0.7 else f"{rng.getrandbits(40):x}"
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[:size]


def message(i: int, size: int = 400) -> dict[str, Any]:
    """About ``size`` characters of agent-like text: compressible like prose, not like a
    repeated string, so TOAST compression does not flatter any contender."""
    return {"role": "assistant" if i % 2 else "user", "content": _text(i, size), "n": i}


@dataclass
class Stats:
    name: str
    ops: int
    median_ms: float
    spread_pct: float
    p99_ms: float
    cpu_us_per_op: float
    extra: dict[str, Any] = field(default_factory=dict)


class Recorder:
    """Per-op wall times and per-round CPU, for one case."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.times: list[float] = []
        self.round_medians: list[float] = []
        self.cpu = 0.0
        self.ops = 0
        self.extra: dict[str, Any] = {}

    async def round(self, op: Callable[[int], Awaitable[Any]], n: int) -> None:
        times = []
        cpu = time.process_time()
        for i in range(n):
            t = time.perf_counter()
            await op(i)
            times.append(time.perf_counter() - t)
        self.cpu += time.process_time() - cpu
        self.ops += n
        self.times += times
        self.round_medians.append(statistics.median(times))

    def stats(self) -> Stats:
        med = statistics.median(self.times)
        spread = (max(self.round_medians) - min(self.round_medians)) / med * 100 if med else 0
        p99 = sorted(self.times)[max(0, int(len(self.times) * 0.99) - 1)]
        return Stats(
            self.name, self.ops, med * 1e3, spread, p99 * 1e3, self.cpu / self.ops * 1e6, self.extra
        )


def table(title: str, rows: list[Stats], reference: str | None = None) -> str:
    ref = next((r for r in rows if r.name == reference), None)
    out = [f"\n### {title}\n", "| case | ops | median ms | spread | p99 ms | CPU µs/op | vs ref |",
           "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        ratio = f"{r.median_ms / ref.median_ms:.2f}x" if ref and r is not ref else "ref"
        out.append(
            f"| {r.name} | {r.ops} | {r.median_ms:.3f} | ±{r.spread_pct / 2:.0f}% |"
            f" {r.p99_ms:.3f} | {r.cpu_us_per_op:.0f} | {ratio} |"
        )
    return "\n".join(out)


# ------------------------------------------------------------------ case 1


async def agent_session(url: str, rounds: int, iterations: int) -> tuple[str, dict[str, Any]]:
    """200 iterations appending 4 messages: ours vs LangGraph's saver vs a naive table."""
    from langgraph.checkpoint.base import empty_checkpoint
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

    engine = create_engine(url, pool_size=4)
    factory = create_session_factory(engine)
    pool = await asyncpg.create_pool(dsn(url), min_size=2, max_size=4)
    await pool.execute(
        "CREATE TABLE IF NOT EXISTS bench_naive (session_id text, iteration int,"
        " history jsonb NOT NULL, PRIMARY KEY (session_id, iteration))"
    )
    lz4 = await pool.fetchval(
        "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'"
    )
    if lz4:  # the same TOAST compression as ours: only the storage scheme differs
        await pool.execute("ALTER TABLE bench_naive ALTER COLUMN history SET COMPRESSION lz4")
    results: dict[str, dict[str, list[float]]] = {}
    cpu = [0.0]  # client CPU inside the timed saves of the current runner

    async def ours(keep_last: int) -> tuple[list[float], float, int]:
        sid = f"bench-{uuid.uuid4().hex[:10]}"
        async with factory.begin() as s:
            await SessionRepository(s).create(
                id=sid, job_id="j", clerk_user_id="bench", tier="partner", model_used=SONNET
            )
        history: list[dict[str, Any]] = []
        times = []
        async with factory() as s:
            repo = CheckpointRepository(s, keep_last=keep_last)
            for i in range(iterations):
                history.extend(message(4 * i + k) for k in range(4))
                cp = AgentCheckpoint(
                    session_id=sid, job_id="j", message_history=history, iteration_number=i
                )
                t, c = time.perf_counter(), time.process_time()
                async with s.begin():
                    await repo.save(cp)
                times.append(time.perf_counter() - t)
                cpu[0] += time.process_time() - c
            loads = []
            for _ in range(10):
                t = time.perf_counter()
                latest = await repo.load_latest(sid)
                loads.append(time.perf_counter() - t)
                await s.rollback()
            assert latest is not None and latest.message_history == history
        size = await pool.fetchval(
            "SELECT sum(pg_column_size(c.*)) FROM agent_checkpoints c WHERE session_id = $1", sid
        )
        return times, statistics.median(loads), int(size)

    async def langgraph(saver: Any) -> tuple[list[float], float, int]:
        tid = f"bench-{uuid.uuid4().hex[:10]}"
        history: list[dict[str, Any]] = []
        times = []
        parent: str | None = None
        for i in range(iterations):
            history.extend(message(4 * i + k) for k in range(4))
            cp = empty_checkpoint()
            cp["id"] = str(uuid.UUID(int=i + 1))
            cp["channel_values"] = {"messages": list(history)}
            cp["channel_versions"] = {"messages": i + 1}
            config: dict[str, Any] = {"configurable": {"thread_id": tid, "checkpoint_ns": ""}}
            if parent:
                config["configurable"]["checkpoint_id"] = parent
            t, c = time.perf_counter(), time.process_time()
            await saver.aput(config, cp, {"source": "loop", "step": i}, {"messages": i + 1})
            times.append(time.perf_counter() - t)
            cpu[0] += time.process_time() - c
            parent = cp["id"]
        loads = []
        for _ in range(10):
            t = time.perf_counter()
            got = await saver.aget_tuple({"configurable": {"thread_id": tid, "checkpoint_ns": ""}})
            loads.append(time.perf_counter() - t)
        assert got is not None and got.checkpoint["channel_values"]["messages"] == history
        size = await pool.fetchval(
            "SELECT (SELECT coalesce(sum(pg_column_size(c.*)), 0) FROM checkpoints c"
            "  WHERE thread_id = $1)"
            " + (SELECT coalesce(sum(pg_column_size(b.*)), 0) FROM checkpoint_blobs b"
            "  WHERE thread_id = $1)",
            tid,
        )
        return times, statistics.median(loads), int(size)

    async def naive() -> tuple[list[float], float, int]:
        sid = f"bench-{uuid.uuid4().hex[:10]}"
        history: list[dict[str, Any]] = []
        times = []
        async with pool.acquire() as conn:
            for i in range(iterations):
                history.extend(message(4 * i + k) for k in range(4))
                t, c = time.perf_counter(), time.process_time()
                await conn.execute(
                    "INSERT INTO bench_naive VALUES ($1, $2, $3::text::jsonb)",
                    sid, i, orjson.dumps(history).decode(),
                )  # fmt: skip
                times.append(time.perf_counter() - t)
                cpu[0] += time.process_time() - c
            loads = []
            for _ in range(10):
                t = time.perf_counter()
                raw = await conn.fetchval(
                    "SELECT history::text FROM bench_naive WHERE session_id = $1"
                    " ORDER BY iteration DESC LIMIT 1",
                    sid,
                )
                orjson.loads(raw)
                loads.append(time.perf_counter() - t)
        size = await pool.fetchval(
            "SELECT sum(pg_column_size(n.*)) FROM bench_naive n WHERE session_id = $1", sid
        )
        return times, statistics.median(loads), int(size)

    async with AsyncPostgresSaver.from_conn_string(dsn(url)) as saver:
        await saver.setup()
        runners: dict[str, Callable[[], Awaitable[tuple[list[float], float, int]]]] = {
            "CheckpointRepository (keep_last=5)": lambda: ours(5),
            "CheckpointRepository (keep all)": lambda: ours(10**6),
            "LangGraph AsyncPostgresSaver": lambda: langgraph(saver),
            "naive full-history table": naive,
        }
        await runners["CheckpointRepository (keep all)"]()  # warm-up: caches, prepared statements
        await runners["LangGraph AsyncPostgresSaver"]()
        for r in range(rounds):
            names = list(runners) if r % 2 == 0 else list(reversed(runners))
            for name in names:
                cpu[0] = 0.0
                times, load, size = await runners[name]()
                slot = results.setdefault(
                    name, {"save": [], "load": [], "bytes": [], "cpu": [], "all": []}
                )
                slot["all"].extend(times)
                slot["save"].append(statistics.mean(times))
                slot["load"].append(load)
                slot["bytes"].append(size)
                slot["cpu"].append(cpu[0] / iterations)
    await pool.close()
    await engine.dispose()

    lg = results["LangGraph AsyncPostgresSaver"]
    lines = [
        f"\n### Agent session: {iterations} iterations x 4 messages of ~400 characters\n",
        "| implementation | mean save ms | spread | p99 save ms | bytes stored | final load ms |"
        " client CPU µs/save | save vs LangGraph | bytes vs LangGraph | load vs LangGraph |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    summary: dict[str, Any] = {}
    for name, slot in results.items():
        save = statistics.median(slot["save"])
        spread = (max(slot["save"]) - min(slot["save"])) / save * 50 if save else 0.0
        load = statistics.median(slot["load"])
        stored_bytes = statistics.median(slot["bytes"])
        cpu_per_save = statistics.median(slot["cpu"])
        p99 = sorted(slot["all"])[int(len(slot["all"]) * 0.99) - 1]
        lines.append(
            f"| {name} | {save * 1e3:.3f} | ±{spread:.0f}% | {p99 * 1e3:.2f} |"
            f" {stored_bytes / 1e6:.3f} MB | {load * 1e3:.2f} |"
            f" {cpu_per_save * 1e6:.0f} | {save / statistics.median(lg['save']):.2f}x |"
            f" {stored_bytes / statistics.median(lg['bytes']):.3f}x |"
            f" {load / statistics.median(lg['load']):.2f}x |"
        )
        summary[name] = {"mean_save_ms": save * 1e3, "bytes": stored_bytes, "load_ms": load * 1e3,
                         "cpu_us_per_iteration": cpu_per_save * 1e6}  # fmt: skip
    return "\n".join(lines), summary


# ------------------------------------------------------------------ case 1b

CHECKPOINTS_AT = (100, 500, 1_000, 2_000)
WINDOW = 50  # saves per reported point: iterations (n - WINDOW, n]


async def long_session(url: str, rounds: int, iterations: int) -> tuple[str, dict[str, Any]]:
    """A 2,000-iteration session appending 4 messages a save: how the save cost grows."""
    engine = create_engine(url, pool_size=2)
    factory = create_session_factory(engine)
    points = [n for n in CHECKPOINTS_AT if n <= iterations]
    walls: dict[int, list[float]] = {n: [] for n in points}
    cpus: dict[int, list[float]] = {n: [] for n in points}
    for _ in range(rounds):
        sid = f"bench-{uuid.uuid4().hex[:10]}"
        async with factory.begin() as s:
            await SessionRepository(s).create(
                id=sid, job_id="j", clerk_user_id="bench", tier="partner", model_used=SONNET
            )
        history: list[dict[str, Any]] = []
        async with factory() as s:
            repo = CheckpointRepository(s)  # the defaults: keep_last=5, keyframe_every=50
            for i in range(1, iterations + 1):
                history.extend(message(4 * i + k) for k in range(4))
                cp = AgentCheckpoint(
                    session_id=sid, job_id="j", message_history=history, iteration_number=i
                )
                t, c = time.perf_counter(), time.process_time()
                async with s.begin():
                    await repo.save(cp)
                wall, cpu = time.perf_counter() - t, time.process_time() - c
                for n in points:
                    if n - WINDOW < i <= n:
                        walls[n].append(wall)
                        cpus[n].append(cpu)
            latest = await repo.load_latest(sid)
            assert latest is not None and latest.message_history == history
    await engine.dispose()

    base = statistics.mean(walls[points[0]])
    lines = [
        f"\n### Long session: {iterations:,} iterations x 4 messages of ~400 characters"
        f" (defaults; {rounds} sessions, the {WINDOW} saves up to each point)\n",
        "| iteration | messages | mean save ms | p99 save ms | client CPU µs/save |"
        f" mean vs iteration {points[0]} |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    summary: dict[str, Any] = {}
    for n in points:
        mean = statistics.mean(walls[n])
        p99 = sorted(walls[n])[max(0, int(len(walls[n]) * 0.99) - 1)]
        cpu = statistics.mean(cpus[n])
        lines.append(
            f"| {n:,} | {4 * n:,} | {mean * 1e3:.3f} | {p99 * 1e3:.2f} | {cpu * 1e6:.0f} |"
            f" {mean / base:.2f}x |"
        )
        summary[str(n)] = {"mean_save_ms": mean * 1e3, "p99_ms": p99 * 1e3,
                           "cpu_us": cpu * 1e6, "vs_first": mean / base}  # fmt: skip
    return "\n".join(lines), summary


# ------------------------------------------------------------------ case 2


async def save_and_load(url: str, rounds: int, ops: int) -> tuple[str, dict[str, Any]]:
    """One save and one load of M messages: the repository against raw asyncpg."""
    engine = create_engine(url, pool_size=2)
    factory = create_session_factory(engine)
    pool = await asyncpg.create_pool(dsn(url), min_size=1, max_size=2)
    out: list[str] = []
    summary: dict[str, Any] = {}
    for m in (10, 100, 1000):
        history = [message(i) for i in range(m)]
        sid = f"bench-{uuid.uuid4().hex[:10]}"
        async with factory.begin() as s:
            await SessionRepository(s).create(
                id=sid, job_id="j", clerk_user_id="bench", tier="partner", model_used=SONNET
            )
        recs = {k: Recorder(k) for k in ("repo save", "raw save", "repo load", "raw load")}
        it = iter(range(10**9))

        async def repo_save(_: int) -> None:
            # A history that does not extend the previous one: a full keyframe each time,
            # the same bytes the raw INSERT writes (no delta flatters the repository).
            n = next(it)
            fresh = [{"op": n}, *history[1:]]
            cp = AgentCheckpoint(
                session_id=sid, job_id="j", message_history=fresh, iteration_number=n
            )
            async with factory.begin() as s:
                await CheckpointRepository(s, keep_last=10**6).save(cp)

        async def raw_save(_: int) -> None:
            n = next(it)
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "UPDATE agent_sessions SET last_checkpoint_at = now() WHERE id = $1", sid
                )
                await conn.execute(
                    "INSERT INTO agent_checkpoints (session_id, job_id, iteration_number,"
                    " message_history, retry_counts, session_cost_microdollars,"
                    " daily_budget_microdollars, agent_state, message_count)"
                    " VALUES ($1, 'j', $2, $3::text::jsonb, '{}', 0, 0, 'working', $4)"
                    " ON CONFLICT (session_id, iteration_number) DO UPDATE"
                    " SET message_history = excluded.message_history, updated_at = now()",
                    sid, n, orjson.dumps([{"op": n}, *history[1:]]).decode(), m,
                )  # fmt: skip

        async def repo_load(_: int) -> None:
            async with factory() as s:
                got = await CheckpointRepository(s, keep_last=10**6).load_latest(sid)
                assert got is not None and len(got.message_history) == m

        async def raw_load(_: int) -> None:
            async with pool.acquire() as conn:
                row = await conn.fetchrow(
                    "SELECT message_history::text, sandbox_id, current_phase, retry_counts::text"
                    " FROM agent_checkpoints WHERE session_id = $1"
                    " ORDER BY iteration_number DESC LIMIT 1",
                    sid,
                )
                assert row is not None
                assert len(orjson.loads(row[0])) == m

        ops_m = max(5, ops // (10 if m == 1000 else 1))
        for op in (repo_save, raw_save, repo_load, raw_load):  # warm-up
            await op(0)
        for r in range(rounds):
            pairs = [("repo save", repo_save), ("raw save", raw_save)]
            pairs += [("repo load", repo_load), ("raw load", raw_load)]
            for name, op in pairs if r % 2 == 0 else list(reversed(pairs)):
                await recs[name].round(op, ops_m)
        stats = [r.stats() for r in recs.values()]
        out.append(table(f"Save and load, M = {m} messages", stats[:2], "raw save"))
        out.append(table(f"Load, M = {m} messages", stats[2:], "raw load"))
        summary[str(m)] = {s.name: asdict(s) for s in stats}
    await pool.close()
    await engine.dispose()
    return "\n".join(out), summary


# ------------------------------------------------------------------ case 3


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


def time_day() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC).date()


# ------------------------------------------------------------------ case 4


async def transitions_and_wakes(
    url: str, rounds: int, ops: int, wakes: int
) -> tuple[str, dict[str, Any]]:
    """One guarded transition against the raw SQL; then N due sessions, 2 worker processes."""
    from datetime import UTC, datetime, timedelta

    engine = create_engine(url, pool_size=2)
    factory = create_session_factory(engine)
    pool = await asyncpg.create_pool(dsn(url), min_size=1, max_size=2)
    sid_repo, sid_raw = (f"bench-{uuid.uuid4().hex[:10]}" for _ in range(2))
    async with factory.begin() as s:
        for sid in (sid_repo, sid_raw):
            await SessionRepository(s).create(
                id=sid, job_id="j", clerk_user_id="bench", tier="partner", model_used=SONNET
            )
    wake_at = datetime.now(UTC) + timedelta(days=1)

    async def repo(i: int) -> None:
        to, frm = ("sleeping", "working") if i % 2 == 0 else ("working", "sleeping")
        async with factory.begin() as s:
            await SessionRepository(s).transition(
                sid_repo, to, expected=frm, wake_at=wake_at if to == "sleeping" else None
            )

    async def raw(i: int) -> None:
        to, frm = ("sleeping", "working") if i % 2 == 0 else ("working", "sleeping")
        async with pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "UPDATE agent_sessions SET status = $2, version = version + 1, wake_at = $3"
                " WHERE id = $1 AND status = ANY($4::varchar[]) RETURNING *",
                sid_raw, to, wake_at if to == "sleeping" else None, [frm],
            )  # fmt: skip
            assert row is not None

    recs = {"SessionRepository.transition": Recorder("SessionRepository.transition"),
            "raw asyncpg": Recorder("raw asyncpg")}  # fmt: skip
    for warm_up in (repo, raw):
        await warm_up(0)
        await warm_up(1)
    for r in range(rounds):
        pairs = list(recs.items())
        for name, rec in pairs if r % 2 == 0 else list(reversed(pairs)):
            await rec.round(repo if name.startswith("Session") else raw, ops)
    stats = [r.stats() for r in recs.values()]
    text = table("Guarded transition (one statement in a transaction)", stats, "raw asyncpg")

    # N due sessions, woken by two real worker processes.
    prefix = f"wake-{uuid.uuid4().hex[:6]}"
    await pool.execute(
        "INSERT INTO agent_sessions (id, job_id, clerk_user_id, tier, model_used, status,"
        " wake_at, version) SELECT $1 || '-' || g, 'j', 'u-' || (g % 200), 'partner', $3,"
        " 'sleeping', now() - interval '1 minute', 1 FROM generate_series(1, $2) AS g",
        prefix, wakes, SONNET,
    )  # fmt: skip
    env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": os.environ["BENCH_REDIS_URL"],
           "REDIS_PREFIX": f"bench:{prefix}", "WAKE_POLL_INTERVAL": "0.5", "LOG_LEVEL": "WARNING"}  # fmt: skip
    started = time.perf_counter()
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "app", "worker", "--batch-size", "200"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for _ in range(2)
    ]
    while (
        await pool.fetchval(
            "SELECT count(*) FROM agent_sessions WHERE id LIKE $1 || '-%' AND status = 'working'",
            prefix,
        )
        < wakes
    ):
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - started
    for w in workers:
        w.terminate()
        w.wait(30)
    doubles = await pool.fetchval(
        "SELECT count(*) FROM agent_sessions WHERE id LIKE $1 || '-%' AND version <> 2", prefix
    )
    await pool.close()
    await engine.dispose()
    text += (
        f"\n\n### Waking {wakes:,} due sessions with 2 worker processes\n\n"
        f"| total s (incl. process start) | wakes/s | double wakes |\n|---:|---:|---:|\n"
        f"| {elapsed:.2f} | {wakes / elapsed:,.0f} | {doubles} |"
    )
    return text, {
        "transition": {s.name: asdict(s) for s in stats},
        "wakes": {"n": wakes, "seconds": elapsed, "double_wakes": doubles},
    }


# ------------------------------------------------------------------ main


async def main(quick: bool, out: Path, only: list[str] | None = None) -> int:
    settings = Settings()
    rounds = 2 if quick else 5
    report: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "quick": quick,
    }
    with local_services(
        settings.database_url, settings.redis_url, root=ROOT / ".local" / "bench"
    ) as servers:
        admin = await asyncpg.connect(dsn(servers.database_url))
        name = f"bench_{uuid.uuid4().hex[:8]}"
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = (
            make_url(servers.database_url).set(database=name).render_as_string(hide_password=False)
        )
        os.environ["BENCH_REDIS_URL"] = servers.redis_url
        try:
            engine = create_engine(url)
            await upgrade(engine)
            report["server"] = await _server_version(engine)
            await engine.dispose()
            print(f"# Benchmarks ({'quick' if quick else 'full'}), PostgreSQL {report['server']}")
            cases = [
                ("agent_session", agent_session(url, rounds=1 if quick else 3, iterations=200)),
                ("long_session", long_session(url, rounds=1 if quick else 3,
                                              iterations=500 if quick else 2_000)),
                ("save_and_load", save_and_load(url, rounds, ops=20 if quick else 60)),
                ("charge", charges(url, rounds, per_task=10 if quick else 40)),
                ("transition_and_wakes", transitions_and_wakes(
                    url, rounds, ops=100 if quick else 400, wakes=2_000 if quick else 10_000)),
            ]  # fmt: skip
            for key, coro in cases:
                if only and key not in only:
                    coro.close()
                    continue
                text, data = await coro
                print(text, flush=True)
                report[key] = data
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nresults written to {out}")
    return 0


async def _server_version(engine: Any) -> str:
    from sqlalchemy import text

    async with engine.connect() as conn:
        return str(await conn.scalar(text("SHOW server_version")))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run in under 2 minutes")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "latest.json")
    parser.add_argument(
        "--only", nargs="*", default=None, help="run only these cases (e.g. agent_session)"
    )
    args = parser.parse_args()
    raise SystemExit(asyncio.run(main(args.quick, args.out, args.only)))
