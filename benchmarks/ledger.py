"""``make bench`` (the ledger at scale): fill ``agent_cost_events`` to 10 million rows with
``generate_series`` and show that a charge and a daemon tick cost the same at 0, 1 and
10 million rows. Prints the latencies, the table's and every index's size.

    python -m benchmarks.ledger [--rows 10000000] [--sessions 100000] [--users 10000]

It runs in a throwaway database on DATABASE_URL's server (embedded servers when unset)
and drops it at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import time
import uuid
from dataclasses import dataclass

import asyncpg
from sqlalchemy.engine import make_url

from app.db.engine import create_engine, create_session_factory
from app.db.migrate import upgrade
from app.lifecycle import Runtime, charge
from app.local_services import local_services
from app.session_store import RedisSessionStore, connect_redis
from app.settings import SONNET, Settings
from app.workers import BudgetDaemon
from benchmarks.common import AGENT_CALL, ROOT, dsn

CHUNK = 1_000_000
WORKING = 2_000  # sessions the daemon looks at; the rest are completed
CHARGES = 1_000
DUPLICATES = 500
# Every working session charges once before the timed charges: the first charge of a
# user's day also creates the day's budget row, which is not what is measured here.
WARM_UP = WORKING
TICKS = 7
DAYS = 30  # the ledger's rows are spread over this many past budget days


@dataclass
class Measure:
    rows: int
    charge_p50: float
    charge_p99: float
    duplicate_p50: float
    tick_p50: float
    tick_max: float
    fill_seconds: float
    total_mib: float
    btree_levels: int | None
    reads_per_charge: float


async def seed(conn: asyncpg.Connection, *, sessions: int, users: int) -> None:
    """Users, sessions (WORKING of them working), and DAYS past budget days per user.
    Rows stamped two days back: outside the mirror's 25 h horizon, as old sessions are."""
    await conn.execute(
        "INSERT INTO user_settings (clerk_user_id, tier) SELECT 'lu-' || g, 'partner'"
        " FROM generate_series(0, $1 - 1) g",
        users,
    )
    await conn.execute(
        "INSERT INTO agent_sessions (id, job_id, clerk_user_id, tier, model_used, status,"
        " completed_at, version, started_at, changed_at, last_seen_at)"
        " SELECT 'ls-' || g, 'job', 'lu-' || (g % $2), 'partner', $3,"
        " CASE WHEN g < $4 THEN 'working' ELSE 'completed' END,"
        " CASE WHEN g < $4 THEN NULL ELSE now() - interval '2 days' END, 1,"
        " now() - interval '2 days', now() - interval '2 days', now() - interval '2 days'"
        " FROM generate_series(0, $1 - 1) g",
        sessions,
        users,
        SONNET,
        WORKING,
    )
    await conn.execute(
        "INSERT INTO budget_days (clerk_user_id, day, budget_microdollars, spent_microdollars)"
        " SELECT 'lu-' || u, current_date - d, 3333333, 100000"
        " FROM generate_series(0, $1 - 1) u, generate_series(1, $2) d",
        users,
        DAYS,
    )


async def fill(conn: asyncpg.Connection, lo: int, hi: int, *, sessions: int, users: int) -> None:
    """Ledger rows lo..hi-1: provider-style random request ids (random inserts into the
    unique index, as in production), spread over sessions, users and past days."""
    for start in range(lo, hi, CHUNK):
        end = min(start + CHUNK, hi)
        await conn.execute(
            "INSERT INTO agent_cost_events (request_id, session_id, clerk_user_id, model,"
            " input_tokens, output_tokens, cache_creation_input_tokens,"
            " cache_creation_1h_input_tokens, cache_read_input_tokens, cost_microdollars,"
            " budget_day, created_at)"
            " SELECT 'req_' || md5(g::text), 'ls-' || (g % $3), 'lu-' || (g % $3 % $4), $5,"
            " 1000 + g % 5000, 100 + g % 900, 3000 + g % 2000, g % 1000, 60000 + g % 40000,"
            " 6000 + g % 20000, current_date - (1 + g % $6),"
            " now() - make_interval(days => 1 + g % $6)"
            " FROM generate_series($1, $2 - 1) g",
            start,
            end,
            sessions,
            users,
            SONNET,
            DAYS,
        )
        print(f"  ledger rows: {end:,}", flush=True)
    await settle(conn)


async def settle(conn: asyncpg.Connection) -> None:
    """What autovacuum and the checkpointer would do after a bulk load, done now, so
    their I/O does not land in the middle of the measurements."""
    await conn.execute("VACUUM ANALYZE agent_cost_events")
    await conn.execute("CHECKPOINT")


async def sizes(conn: asyncpg.Connection) -> list[tuple[str, int]]:
    rows = await conn.fetch(
        "SELECT c.relname, pg_relation_size(c.oid) AS bytes FROM pg_index i"
        " JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE i.indrelid = 'agent_cost_events'::regclass ORDER BY c.relname"
    )
    table = await conn.fetchval("SELECT pg_relation_size('agent_cost_events')")
    return [("agent_cost_events (heap)", int(table))] + [
        (r["relname"], int(r["bytes"])) for r in rows
    ]


async def measure(
    rt: Runtime, conn: asyncpg.Connection, rows: int, fill_seconds: float, round_: int
) -> Measure:
    for n in range(WARM_UP):
        await charge(
            rt, session_id=f"ls-{n % WORKING}", request_id=f"warm-{round_}-{n}",
            model=SONNET, **AGENT_CALL,
        )  # fmt: skip
    reads_before = await _blocks_read(conn)
    charges: list[float] = []
    for n in range(CHARGES):
        started = time.perf_counter()
        await charge(
            rt, session_id=f"ls-{n % WORKING}", request_id=f"bench-{round_}-{n}",
            model=SONNET, **AGENT_CALL,
        )  # fmt: skip
        charges.append(time.perf_counter() - started)
    reads = (await _blocks_read(conn) - reads_before) / CHARGES
    duplicates: list[float] = []
    for n in range(DUPLICATES if rows else 0):
        # A retried charge: the ledger's unique index finds the earlier row.
        started = time.perf_counter()
        result = await charge(
            rt, session_id="ls-0", request_id=f"req_{_md5(n * 7919 % rows)}",
            model=SONNET, **AGENT_CALL,
        )  # fmt: skip
        duplicates.append(time.perf_counter() - started)
        assert result.duplicate
    daemon = BudgetDaemon(rt.session_factory, rt.store, rt.settings, batch_size=100)
    await daemon.run_once()  # the first pass also reconciles the charged sessions' keys
    ticks: list[float] = []
    for _ in range(TICKS):
        started = time.perf_counter()
        await daemon.run_once()
        ticks.append(time.perf_counter() - started)
    return Measure(
        rows=rows,
        charge_p50=statistics.median(charges) * 1000,
        charge_p99=statistics.quantiles(charges, n=100)[98] * 1000,
        duplicate_p50=statistics.median(duplicates) * 1000 if duplicates else float("nan"),
        tick_p50=statistics.median(ticks) * 1000,
        tick_max=max(ticks) * 1000,
        fill_seconds=fill_seconds,
        total_mib=int(await conn.fetchval("SELECT pg_total_relation_size('agent_cost_events')"))
        / 2**20,
        btree_levels=await _levels(conn, "uq_agent_cost_events_clerk_user_id_request_id"),
        reads_per_charge=reads,
    )


async def _blocks_read(conn: asyncpg.Connection) -> int:
    """Blocks this database read from outside shared_buffers (the OS cache or disk)."""
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    return int(
        await conn.fetchval(
            "SELECT blks_read FROM pg_stat_database WHERE datname = current_database()"
        )
    )


async def _levels(conn: asyncpg.Connection, index: str) -> int | None:
    """The B-tree's height above its leaves (pageinspect), None without the extension."""
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
        return int(await conn.fetchval("SELECT level FROM bt_metap($1)", index))
    except asyncpg.PostgresError:
        return None


def _md5(n: int) -> str:
    # The seed's request ids are md5 strings (PostgreSQL's md5()); not used for security.
    return hashlib.md5(str(n).encode(), usedforsecurity=False).hexdigest()


async def main(rows: int, sessions: int, users: int) -> int:
    settings = Settings()
    steps = sorted({0, min(1_000_000, rows), rows})
    with local_services(
        settings.database_url, settings.redis_url, root=ROOT / ".local" / "bench"
    ) as servers:
        admin = await asyncpg.connect(dsn(servers.database_url))
        name = f"bench_ledger_{uuid.uuid4().hex[:8]}"
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = (
            make_url(servers.database_url).set(database=name).render_as_string(hide_password=False)
        )
        redis = connect_redis(servers.redis_url)
        prefix = f"bench:{name}"
        results: list[Measure] = []
        try:
            engine = create_engine(url, pool_size=4)
            await upgrade(engine)
            rt = Runtime(
                create_session_factory(engine),
                RedisSessionStore(redis, prefix=prefix),
                settings.model_copy(update={"sleep_grace_seconds": 0}),
            )
            conn = await asyncpg.connect(dsn(url))
            try:
                await seed(conn, sessions=sessions, users=users)
                await conn.execute("VACUUM ANALYZE")
                await conn.execute("CHECKPOINT")
                done = 0
                for i, target in enumerate(steps):
                    started = time.perf_counter()
                    if target > done:
                        await fill(conn, done, target, sessions=sessions, users=users)
                    filled = time.perf_counter() - started
                    done = target
                    results.append(await measure(rt, conn, done, filled, i))
                    print(f"  measured at {done:,} rows", flush=True)
                final_sizes = await sizes(conn)
                version = await conn.fetchval("SHOW server_version")
            finally:
                await conn.close()
            await engine.dispose()
        finally:
            async for key in redis.scan_iter(match=f"{prefix}:*", count=1000):
                await redis.delete(key)
            await redis.aclose()
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()
    print(
        f"\n### Ledger at scale: PostgreSQL {version}, {sessions:,} sessions"
        f" ({WORKING:,} working), {users:,} users\n"
    )
    print(
        "| ledger rows | fill time | charge p50 | charge p99 | duplicate charge p50 |"
        " daemon tick p50 | daemon tick max | table + indexes | request_id B-tree levels |"
        " blocks read / charge |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for m in results:
        duplicate = "-" if m.duplicate_p50 != m.duplicate_p50 else f"{m.duplicate_p50:.2f} ms"
        print(
            f"| {m.rows:,} | {m.fill_seconds:.0f} s | {m.charge_p50:.2f} ms |"
            f" {m.charge_p99:.2f} ms | {duplicate} | {m.tick_p50:.1f} ms |"
            f" {m.tick_max:.1f} ms | {m.total_mib:,.0f} MiB |"
            f" {'-' if m.btree_levels is None else m.btree_levels + 1} |"
            f" {m.reads_per_charge:.2f} |"
        )
    print(f"\nSizes at {rows:,} rows:\n")
    print("| relation | size |\n|---|---:|")
    for relation, size in final_sizes:
        print(f"| {relation} | {size / 2**20:,.0f} MiB |")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=10_000)
    args = parser.parse_args()
    raise SystemExit(asyncio.run(main(args.rows, args.sessions, args.users)))
