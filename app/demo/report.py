"""What the demo shows: a progress bar (or a line a day off a terminal), the closing table
by day and tier, its ``--json`` form, and where the log goes."""

from __future__ import annotations

import asyncio
import logging
import sys
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any

from app.demo.fleet import TIERS, Fleet
from app.domain import Tier
from app.local_services import DEFAULT_ROOT


async def show_progress(fleet: Fleet, stop: asyncio.Event, start: datetime, days: int) -> None:
    """A bar redrawn in place on a terminal; elsewhere (CI, a pipe) one line per
    simulated day, printed as the day ends."""
    tty = sys.stdout.isatty()
    printed = 0  # days whose line a non-terminal has had

    def render(now: datetime, day: int) -> str:
        width = 30
        done = int(width * (now - start) / (fleet.end - start))
        bar = "#" * done + "." * (width - done)
        return (
            f"[{bar}] day {day}/{days} {now:%Y-%m-%d %H:%M} UTC"
            f"  iterations {fleet.events['iteration']:5d}"
            f"  sleeps {fleet.events['sleep']:3d}  wakes {fleet.events['wake']:3d}"
        )

    while True:
        finished = stop.is_set()
        now = fleet.end if finished else min(fleet.clock(), fleet.end)
        day = min(days, (now.date() - start.date()).days + 1)
        if tty:
            print("\r" + render(now, day), end="\n" if finished else "", flush=True)
        else:
            ended = days if finished else min(days, (now.date() - start.date()).days)
            while printed < ended:
                printed += 1
                # The line of a day that ended: its midnight, or the end of the run.
                midnight = datetime.combine(
                    start.date() + timedelta(days=printed), dtime(0, 0), tzinfo=UTC
                )
                print(render(min(now, midnight), printed), flush=True)
        if finished:
            return
        await asyncio.sleep(0.2)


def print_table(fleet: Fleet, budgets: dict[tuple[date, Tier], tuple[int, int]]) -> None:
    print()
    print(
        f"{'day':<12}{'tier':<14}{'sessions':>9}{'iterations':>12}"
        f"{'spent $':>11}{'budget $':>11}{'used':>8}{'cache':>8}{'sleeps':>8}{'wakes':>7}"
    )
    print("-" * 100)
    for key in sorted(fleet.tally, key=lambda k: (k[0], TIERS.index(k[1]))):
        t = fleet.tally[key]
        spent, budget = budgets.get(key, (0, 0))
        used = f"{100 * spent / budget:6.1f}%" if budget else "    -"
        # The part of the day's spend that went on prompt-cache writes and reads.
        cache = f"{100 * t.cache_cost / t.cost:6.1f}%" if t.cost else "    -"
        print(
            f"{key[0]!s:<12}{key[1].value:<14}{len(t.sessions):>9}{t.iterations:>12}"
            f"{spent / 1e6:>11.2f}{budget / 1e6:>11.2f}{used:>8}{cache:>8}{t.sleeps:>8}"
            f"{t.wakes:>7}"
        )


def summary_rows(
    fleet: Fleet, budgets: dict[tuple[date, Tier], tuple[int, int]]
) -> list[dict[str, Any]]:
    """The closing table as data, for ``--json``."""
    rows = []
    for key in sorted(fleet.tally, key=lambda k: (k[0], TIERS.index(k[1]))):
        t = fleet.tally[key]
        spent, budget = budgets.get(key, (0, 0))
        rows.append(
            {
                "day": key[0].isoformat(),
                "tier": key[1].value,
                "sessions": len(t.sessions),
                "iterations": t.iterations,
                "spent_microdollars": spent,
                "budget_microdollars": budget,
                "cache_share": round(t.cache_cost / t.cost, 4) if t.cost else None,
                "sleeps": t.sleeps,
                "wakes": t.wakes,
            }
        )
    return rows


def route_logs(run_id: str, *, verbose: bool) -> Path | None:
    """Send the log to ``.local/demo-<run>.log`` so that the screen shows only the bar
    and the table (``--verbose``: leave it on stderr). Returns the file's path."""
    if verbose:
        return None
    path = DEFAULT_ROOT / f"demo-{run_id}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    logging.captureWarnings(True)
    return path
