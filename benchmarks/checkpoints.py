"""Checkpoint cases: the 200-iteration agent session against LangGraph's saver and a naive
table, the 2,000-iteration session (how a save's cost grows), and one save and load of M
messages against raw asyncpg."""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

import asyncpg
import orjson

from app.db.engine import create_engine, create_session_factory
from app.db.models import AgentCheckpoint
from app.repositories import CheckpointRepository, SessionRepository
from app.settings import SONNET
from benchmarks.common import Recorder, dsn, message, table


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


CHECKPOINTS_AT = (100, 500, 1_000, 2_000)
WINDOW = 50  # saves per reported point: iterations (n - WINDOW, n]


async def long_session(url: str, rounds: int, iterations: int) -> tuple[str, dict[str, Any]]:
    """A 2,000-iteration session appending 4 messages a save: how the save cost grows,
    through ``save()`` (which compares the earlier messages with its copy of them) and
    through ``append()`` (the caller vouches for them: not read)."""
    engine = create_engine(url, pool_size=2)
    factory = create_session_factory(engine)
    points = [n for n in CHECKPOINTS_AT if n <= iterations]
    modes = ("save", "append")
    walls: dict[str, dict[int, list[float]]] = {mode: {n: [] for n in points} for mode in modes}
    cpus: dict[str, dict[int, list[float]]] = {mode: {n: [] for n in points} for mode in modes}

    async def one_session(mode: str) -> None:
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
                    if mode == "append":
                        await repo.append(cp, new_messages=4)
                    else:
                        await repo.save(cp)
                wall, cpu = time.perf_counter() - t, time.process_time() - c
                for n in points:
                    if n - WINDOW < i <= n:
                        walls[mode][n].append(wall)
                        cpus[mode][n].append(cpu)
            latest = await repo.load_latest(sid)
            assert latest is not None and latest.message_history == history

    for r in range(rounds):
        for mode in modes if r % 2 == 0 else modes[::-1]:
            await one_session(mode)
    await engine.dispose()

    lines = [
        f"\n### Long session: {iterations:,} iterations x 4 messages of ~400 characters"
        f" (defaults; {rounds} sessions each, the {WINDOW} saves up to each point)\n",
        "| iteration | messages | `save` mean ms | p99 ms | client CPU µs |"
        f" mean vs iteration {points[0]} | `append` mean ms | p99 ms | client CPU µs |"
        f" mean vs iteration {points[0]} |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    summary: dict[str, Any] = {}
    for n in points:
        cells = [f"{n:,}", f"{4 * n:,}"]
        for mode in modes:
            runs = walls[mode][n]
            mean = statistics.mean(runs)
            base = statistics.mean(walls[mode][points[0]])
            p99 = sorted(runs)[max(0, int(len(runs) * 0.99) - 1)]
            cpu = statistics.mean(cpus[mode][n])
            cells += [f"{mean * 1e3:.3f}", f"{p99 * 1e3:.2f}", f"{cpu * 1e6:.0f}",
                      f"{mean / base:.2f}x"]  # fmt: skip
            figures = {"mean_save_ms": mean * 1e3, "p99_ms": p99 * 1e3,
                       "cpu_us": cpu * 1e6, "vs_first": mean / base}  # fmt: skip
            if mode == "save":
                summary[str(n)] = figures
            else:
                summary.setdefault("append", {})[str(n)] = figures
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines), summary


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
