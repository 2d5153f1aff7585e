"""``python -m app demo``: set up, run the fleet with a real worker and daemon on a
virtual clock, report, audit, clean up."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import uuid
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from typing import Any

from app.bootstrap import UsageError, connect
from app.clock import VirtualClock
from app.db.migrate import upgrade
from app.demo.audit import cleanup, inject_history_fault, spend_by_day_and_tier, verify
from app.demo.fleet import REAL_SECONDS_PER_DAY, Fleet, agent, on_resume, seed_users
from app.demo.report import print_table, route_logs, show_progress, summary_rows
from app.lifecycle import Runtime
from app.settings import Settings
from app.workers import BudgetDaemon, WakeWorker


async def run_demo(settings: Settings, args: argparse.Namespace) -> int:
    """The demo; with ``--json`` the screen goes to stderr and stdout gets the summary."""
    if not getattr(args, "json", False):
        return await _run_demo(settings, args, None)
    summary: dict[str, Any] = {}
    with contextlib.redirect_stdout(sys.stderr):
        code = await _run_demo(settings, args, summary)
    print(json.dumps(summary, indent=2))
    return code


async def _run_demo(
    settings: Settings, args: argparse.Namespace, summary: dict[str, Any] | None
) -> int:
    if args.sessions < 1 or args.days < 1:
        raise UsageError("--sessions and --days must be at least 1")
    start = datetime.combine(datetime.now(UTC).date(), dtime(8, 0), tzinfo=UTC)
    speed = 86_400 / REAL_SECONDS_PER_DAY
    clock = VirtualClock(start, speed=speed)
    end = datetime.combine(start.date() + timedelta(days=args.days), dtime(0, 0), tzinfo=UTC)
    fleet = Fleet(uuid.uuid4().hex[:6], clock, end, random.Random(args.seed))
    log_file = route_logs(fleet.run_id, verbose=getattr(args, "verbose", False))
    if log_file is not None:
        print(f"demo log: {log_file} (--verbose: on the screen instead)", flush=True)
    # Poll often in real time: a virtual hour is under a fifth of a second here.
    demo_settings = settings.model_copy(
        update={"wake_poll_interval": 0.5, "daemon_interval": 1.0, "sleep_grace_seconds": 300}
    )
    async with connect(demo_settings, embedded_ok=True) as c:
        await upgrade(c.engine)
        factory = c.session_factory
        rt = Runtime(factory, c.store, demo_settings, clock)
        plan = await seed_users(factory, fleet, args.sessions, start)
        print(
            f"demo {fleet.run_id}: {len(plan)} sessions, {len({u for _, u, _ in plan})} users,"
            f" {args.days} simulated days from {start:%Y-%m-%d %H:%M} UTC"
            f" ({REAL_SECONDS_PER_DAY:g} s a day)", flush=True,
        )  # fmt: skip
        stop = asyncio.Event()
        worker = WakeWorker(
            factory, c.store, demo_settings, clock=clock,
            on_resume=lambda r: on_resume(fleet, r),
        )  # fmt: skip
        daemon = BudgetDaemon(factory, c.store, demo_settings, clock=clock)
        background = [
            asyncio.create_task(worker.run_forever(stop)),
            asyncio.create_task(daemon.run_forever(stop)),
            asyncio.create_task(show_progress(fleet, stop, start, args.days)),
        ]
        if args.inject_fault == "history":
            background.append(asyncio.create_task(inject_history_fault(factory, fleet)))
        try:
            await asyncio.gather(*(agent(fleet, rt, sid, u, t) for sid, u, t in plan))
        finally:
            stop.set()
            await asyncio.gather(*background, return_exceptions=True)
        budgets = await spend_by_day_and_tier(factory, fleet)
        print_table(fleet, budgets)
        breaches = await verify(factory, fleet)
        if summary is not None:
            summary.update(
                run_id=fleet.run_id,
                sessions=len(plan),
                users=len({u for _, u, _ in plan}),
                days=args.days,
                start=start.isoformat(),
                sleeps=fleet.events["sleep"],
                wakes=fleet.events["wake"],
                iterations=fleet.events["iteration"],
                charges=fleet.fresh_charges,
                retried_charges=fleet.duplicates_seen,
                cost_microdollars=fleet.fresh_cost,
                by_day_and_tier=summary_rows(fleet, budgets),
                breaches=breaches,
                passed=not breaches,
                log_file=None if log_file is None else str(log_file),
            )
        print()
        print(
            f"self-check: {fleet.events['sleep']} sleeps, {fleet.events['wake']} wakes,"
            f" {fleet.fresh_charges} charges ({fleet.duplicates_seen} retried, counted once),"
            f" ledger = budget days = sessions' cost: "
            + ("ok" if not any(b.startswith("money") for b in breaches) else "NO")
        )
        if args.keep:
            print(f"data kept: sessions demo-{fleet.run_id}-*; see `python -m app status`")
        else:
            await cleanup(factory, rt, fleet)
    if breaches:
        for b in breaches:
            print(f"BREACH {b}", file=sys.stderr)
        print(f"demo FAILED: {len(breaches)} breach(es)", file=sys.stderr)
        return 1
    print("demo passed: every check held")
    return 0


__all__ = ["run_demo"]
