"""Command line: ``python -m app migrate | worker | daemon | run | demo | status``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from app.db.engine import create_engine, mask_password
from app.db.migrate import upgrade
from app.settings import Settings

log = logging.getLogger("app")


async def _migrate(settings: Settings) -> int:
    if not settings.database_url:
        print("DATABASE_URL is not set: nothing to migrate", file=sys.stderr)
        return 2
    engine = create_engine(settings.database_url)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()
    print(f"migrated {mask_password(settings.database_url)} to head")
    return 0


def _demo(_: Settings) -> int:
    print("demo: not implemented yet (issue 7); nothing was run")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="upgrade DATABASE_URL to the newest revision")
    sub.add_parser("demo", help="simulate a fleet of agents over several budget days")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    if args.command == "migrate":
        return asyncio.run(_migrate(settings))
    if args.command == "demo":
        return _demo(settings)
    raise AssertionError(args.command)
