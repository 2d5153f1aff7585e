"""Run SQL statements on a PostgreSQL server, for shell scripts without psql.

Usage: python scripts/sql.py URL --database NAME [--print] STATEMENT...
With --print, each statement's first column of its first row is printed, one per line.
"""

from __future__ import annotations

import argparse
import asyncio

import asyncpg
from sqlalchemy.engine import make_url


async def run(url: str, database: str, statements: list[str], show: bool) -> None:
    dsn = make_url(url).set(drivername="postgresql", database=database)
    conn = await asyncpg.connect(dsn.render_as_string(hide_password=False))
    try:
        for statement in statements:
            if show:
                print(await conn.fetchval(statement))
            else:
                await conn.execute(statement)
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--database", required=True)
    parser.add_argument("--print", action="store_true", dest="show")
    parser.add_argument("statements", nargs="+")
    args = parser.parse_args()
    asyncio.run(run(args.url, args.database, args.statements, args.show))


if __name__ == "__main__":
    main()
