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
import json
import os
import platform
import uuid
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import make_url

from app.db.engine import create_engine
from app.db.migrate import upgrade
from app.local_services import local_services
from app.settings import Settings
from benchmarks.charges import charges
from benchmarks.checkpoints import agent_session, long_session, save_and_load
from benchmarks.common import ROOT, dsn
from benchmarks.transitions import transitions_and_wakes


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
