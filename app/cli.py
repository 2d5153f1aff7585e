"""Command line: ``python -m app migrate | worker | daemon | events | run | status |
sessions | top-up | prices | demo``."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import json
import logging
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as distribution_version
from pathlib import Path
from typing import Any, Final, Protocol

from pydantic import ValidationError

from app.bootstrap import Connected, UsageError, connect
from app.budget.pricing import MAX_TOKENS_PER_CALL, Band, Rates, band, rates
from app.cli_args import OneLineParser, identifier, to_micro, whole_number
from app.cli_errors import ENVIRONMENT, USAGE, explain
from app.db.engine import create_engine, mask_password
from app.db.migrate import upgrade
from app.domain import (
    InvalidInput,
    InvalidTransition,
    ResumeInProgress,
    SessionNotFound,
    SessionStatus,
    Tier,
)
from app.lifecycle import (
    PurgeReport,
    RestoredSession,
    Runtime,
    complete_session,
    delete_session,
    describe,
    find_sessions,
    get_user,
    inspect_session,
    list_prices,
    purge_finished,
    redeliver,
    set_price,
    status,
    top_up,
    upsert_user,
    wake_session,
)
from app.logs import configure_logging, escape
from app.settings import (
    MAX_BATCH,
    MAX_RETENTION_DAYS,
    Settings,
    is_secret_setting,
    mask_secrets,
)
from app.webhooks import secret_keys
from app.workers import BudgetDaemon, WakeWorker, metrics
from app.workers.events import EventDeliverer
from app.workers.wake import ResumeHook

log = logging.getLogger("app")


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT: the processes finish their batch and exit 0."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def load_hook(path: str | None) -> ResumeHook:
    """``package.module:function`` -> that callable; None -> a hook that only logs."""
    if not path:
        return _log_resume
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise UsageError(f"--on-resume must look like package.module:function, got {path!r}")
    try:
        hook: Any = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"cannot load --on-resume {path!r}: {exc}") from exc
    if not callable(hook):
        raise UsageError(f"--on-resume {path!r} is not callable")
    return hook  # type: ignore[no-any-return]


def _log_resume(restored: RestoredSession) -> None:
    cp = restored.checkpoint
    log.info(
        "resume session=%s iteration=%s messages=%d (no --on-resume hook: logged only)",
        restored.session.id,
        cp.iteration_number if cp else None,
        len(cp.message_history) if cp else 0,
    )


# ---------------------------------------------------------------------- commands


async def cmd_migrate(settings: Settings, _: argparse.Namespace) -> int:
    if not settings.database_url:
        raise UsageError("DATABASE_URL is not set: nothing to migrate")
    engine = create_engine(settings.database_url, pooler=settings.database_pooler)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()
    print(f"migrated {mask_password(settings.database_url)} to head")
    return 0


class Process(Protocol):
    """What the CLI runs until a signal: the wake worker or the budget daemon."""

    async def run_forever(self, stop: asyncio.Event) -> None: ...

    async def run_once(self) -> object: ...


def pass_summary(report: object) -> str:
    """A pass's report as ``name=count`` pairs: numbers as they are, lists by length."""
    if not dataclasses.is_dataclass(report):
        return str(report)
    parts = []
    for field in dataclasses.fields(report):
        value = getattr(report, field.name)
        if isinstance(value, list | tuple | set):
            value = len(value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            parts.append(
                f"{field.name}={value:g}" if isinstance(value, float) else f"{field.name}={value}"
            )
    return " ".join(parts)


async def serve_process(
    name: str,
    settings: Settings,
    args: argparse.Namespace,
    build: Callable[[Connected, int], Process],
) -> int:
    """Run one long-lived process against shared servers until SIGTERM / SIGINT."""
    async with connect(settings, embedded_ok=False) as c:
        metrics.serve(args.metrics_port or settings.metrics_port)
        process = build(c, args.batch_size or settings.batch_size)
        stop = stop_on_signals()
        log.info("%s started database=%s", name, mask_password(c.services.database_url))
        if getattr(args, "once", False):
            await c.require_schema()
            print(f"{name}: one pass: {pass_summary(await process.run_once())}")
            return 0
        await c.warn_if_schema_behind(name)
        await process.run_forever(stop)
    log.info("%s stopped", name)
    return 0


async def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    hook = load_hook(args.on_resume or settings.on_resume)
    return await serve_process(
        "worker",
        settings,
        args,
        lambda c, batch: WakeWorker(
            c.session_factory, c.store, settings, on_resume=hook, batch_size=batch
        ),
    )


class _WithDeliverer:
    """A process and, when ``WEBHOOK_URL`` is set, the event deliverer beside it."""

    def __init__(self, process: Process, deliverer: EventDeliverer | None) -> None:
        self.process = process
        self.deliverer = deliverer

    async def run_forever(self, stop: asyncio.Event) -> None:
        if self.deliverer is None:
            log.info("WEBHOOK_URL is not set: budget events stay in the outbox, undelivered")
            await self.process.run_forever(stop)
            return
        await asyncio.gather(self.process.run_forever(stop), self.deliverer.run_forever(stop))

    async def run_once(self) -> object:
        done = await self.process.run_once()
        if self.deliverer is not None:
            await self.deliverer.run_once()
        return done


def require_webhook_settings(settings: Settings) -> None:
    """WEBHOOK_URL comes with WEBHOOK_SECRET: an unsigned event could not be trusted."""
    if settings.webhook_url and not settings.webhook_secret:
        raise UsageError(
            "WEBHOOK_URL is set but WEBHOOK_SECRET is not: set a secret, so that receivers"
            " can verify the webhook-signature of each event"
        )
    if settings.webhook_secret:
        try:
            secret_keys(settings.webhook_secret)
        except InvalidInput as exc:
            raise UsageError(f"WEBHOOK_SECRET is invalid: {exc}") from None


def deliverer_for(c: Connected, settings: Settings) -> EventDeliverer | None:
    """The outbox's deliverer, if there is somewhere to deliver to."""
    if not settings.webhook_url:
        return None
    return EventDeliverer(c.session_factory, c.store, settings)


async def cmd_daemon(settings: Settings, args: argparse.Namespace) -> int:
    require_webhook_settings(settings)
    return await serve_process(
        "daemon",
        settings,
        args,
        lambda c, batch: _WithDeliverer(
            BudgetDaemon(c.session_factory, c.store, settings, batch_size=batch),
            deliverer_for(c, settings),
        ),
    )


async def cmd_events(settings: Settings, args: argparse.Namespace) -> int:
    if not settings.webhook_url:
        raise UsageError("WEBHOOK_URL is not set: set it (and WEBHOOK_SECRET) to deliver events")
    require_webhook_settings(settings)
    return await serve_process(
        "events",
        settings,
        args,
        lambda c, _: EventDeliverer(
            c.session_factory,
            c.store,
            settings,
            batch_size=args.batch_size or settings.webhook_batch_size,
        ),
    )


async def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    hook = load_hook(args.on_resume or settings.on_resume)
    require_webhook_settings(settings)
    async with connect(settings, embedded_ok=True) as c:
        await upgrade(c.engine)
        metrics.serve(args.metrics_port or settings.metrics_port)
        stop = stop_on_signals()
        worker = WakeWorker(
            c.session_factory, c.store, settings, on_resume=hook, batch_size=settings.batch_size
        )
        daemon = BudgetDaemon(c.session_factory, c.store, settings, batch_size=settings.batch_size)
        log.info("worker and daemon started database=%s", mask_password(c.services.database_url))
        await asyncio.gather(
            worker.run_forever(stop),
            _WithDeliverer(daemon, deliverer_for(c, settings)).run_forever(stop),
        )
    return 0


async def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    async with connect(settings, embedded_ok=False) as c:
        await c.require_schema()
        print(f"database {mask_password(c.services.database_url)}")
        await print_status(c.runtime(settings), top=args.top)
    return 0


async def print_status(rt: Runtime, *, top: int = 10) -> None:
    """Counts by status, due and overdue sleepers, and today's spend for the top users."""
    report = await status(rt, top=top)
    print("sessions  " + "  ".join(f"{k.value}={v}" for k, v in report.by_status.items()))
    oldest, upcoming = report.oldest_due, report.next_wake_at
    lag = f", oldest due since {oldest.isoformat()}" if oldest else ""
    nxt = upcoming.isoformat() if upcoming else "-"
    print(f"sleepers  due={report.due} overdue(>5m)={report.overdue}{lag}, next wake {nxt}")
    shown = len(report.top_spenders)
    print(f"spend on {report.day} (UTC), top {shown} of {report.users} users:")
    print(f"  {'user':<24} {'spent $':>12} {'budget $':>12} {'used':>7}")
    for user, spent, budget in report.top_spenders:
        used = f"{100 * spent / budget:6.1f}%" if budget else "   n/a"
        print(f"  {escape(user):<24} {spent / 1e6:>12.4f} {budget / 1e6:>12.4f} {used:>7}")


SESSION_COLUMNS: Final = (
    ("id", 28), ("status", 15), ("version", 7), ("resume", 6), ("resume_attempts", 8),
    ("last_seen_at", 32),
)  # fmt: skip


def print_sessions(rows: list[dict[str, Any]]) -> None:
    """A table for people."""
    print("  ".join(f"{name:<{width}}" for name, width in SESSION_COLUMNS).rstrip())
    for row in rows:
        # Values as stored, escaped: an id holding a newline cannot forge a row.
        cells = (
            "-" if row[name] is None else escape(str(row[name])) for name, _ in SESSION_COLUMNS
        )
        print("  ".join(f"{c:<{w}}" for c, (_, w) in zip(cells, SESSION_COLUMNS, strict=True)))


async def cmd_sessions(settings: Settings, args: argparse.Namespace) -> int:
    async with connect(settings, embedded_ok=False) as c:
        await c.require_schema()
        rt = Runtime(c.session_factory, c.store, settings)
        try:
            if args.action == "list":
                found = await find_sessions(
                    rt, status=args.status, stuck=args.stuck, limit=args.limit
                )
                rows = [describe(session) for session in found]
                if args.json:
                    print(json.dumps(rows, indent=2))
                else:
                    print_sessions(rows)
            elif args.action == "show":
                view = await inspect_session(rt, args.id)
                if args.json:
                    print(json.dumps(view, indent=2))
                else:
                    print_sessions([view["session"]])
                    for key, value in view["session"].items():
                        print(f"  {key:<28} {'-' if value is None else escape(str(value))}")
                    print(f"checkpoint  {view['checkpoint'] or '-'}")
                    print(f"redis       {view['redis'] or '- (no key)'}")
            elif args.action == "purge":
                print_purge(
                    await purge_finished(rt, older_than_days=args.older_than, dry_run=args.dry_run),
                    older_than=settings.retention_days
                    if args.older_than is None
                    else args.older_than,
                    as_json=args.json,
                )
            elif args.action == "delete":
                removed = await delete_session(rt, args.id)
                if args.json:
                    print(json.dumps(removed.as_dict()))
                else:
                    print(
                        f"deleted session {removed.session_id} ({removed.status}):"
                        f" {removed.checkpoints} checkpoints, {removed.cost_events} ledger rows,"
                        f" {removed.redis_keys} Redis key"
                    )
            elif args.action == "wake":
                restored = await wake_session(rt, args.id, reason="operator")
                print(
                    json.dumps(describe(restored.session))
                    if args.json
                    else f"wake {args.id}: working, resume owed to a worker"
                )
            elif args.action == "redeliver":
                try:
                    session = await redeliver(rt, args.id, force=args.force)
                except ResumeInProgress as exc:
                    print(f"error: {exc}", file=sys.stderr)
                    return 1
                done = "owed, new token (the running runner is fenced)" if args.force else "owed"
                print(
                    json.dumps(describe(session)) if args.json else f"redeliver {args.id}: {done}"
                )
            else:
                session = await complete_session(rt, args.id)
                print(
                    json.dumps(describe(session)) if args.json else f"cancel {args.id}: completed"
                )
        except InvalidInput as exc:
            raise UsageError(str(exc)) from exc
        except (SessionNotFound, InvalidTransition) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


def parse_usd(text: str, name: str = "AMOUNT_USD", *, zero: bool = False) -> int:
    """``"12.50"`` -> 12_500_000 microdollars: a positive amount (or 0 with ``zero``),
    exact to the microdollar. ``name`` is the argument the error names."""
    try:
        micro = to_micro(text.strip().removeprefix("$"), dollars=True)
    except ValueError as exc:
        reason = (
            "must be positive"
            if str(exc) == "negative"
            else f"must be a number of dollars, exact to the microdollar ({exc})"
        )
        raise UsageError(f"{name} {reason}, got {text!r}") from None
    if micro < 0 or (micro == 0 and not zero):
        raise UsageError(f"{name} must be {'0 or more' if zero else 'positive'}, got {text!r}")
    return micro


def format_usd(microdollars: int) -> str:
    """12_500_000 -> ``$12.50``; sub-cent amounts keep their digits (``$0.000001``)."""
    whole, fraction = divmod(microdollars, 1_000_000)
    return f"${whole:,}." + f"{fraction:06d}".rstrip("0").ljust(2, "0")


def user_view(user: Any) -> dict[str, Any]:
    """A ``UserSettings`` row as the CLI shows it (the CLI imports no model)."""
    renewal = user.subscription_renewal_date
    return {
        "clerk_user_id": user.clerk_user_id,
        "tier": user.tier,
        "subscription_renewal_date": None if renewal is None else renewal.isoformat(),
        "budget_override_microdollars": user.budget_override_microdollars,
    }


async def cmd_users(settings: Settings, args: argparse.Namespace) -> int:
    async with connect(settings, embedded_ok=False) as c:
        await c.require_schema()
        rt = Runtime(c.session_factory, c.store, settings)
        try:
            if args.action == "set":
                changes: dict[str, Any] = {}
                if args.tier is not None:
                    changes["tier"] = args.tier
                if args.renewal is not None:
                    changes["subscription_renewal_date"] = (
                        None if args.renewal == "none" else parse_time(args.renewal)
                    )
                if args.budget_override is not None:
                    changes["budget_override_microdollars"] = (
                        None
                        if args.budget_override == "none"
                        else parse_usd(args.budget_override, "--budget-override", zero=True)
                    )
                user = await upsert_user(rt, clerk_user_id=args.user_id, **changes)
            else:
                found = await get_user(rt, args.user_id)
                if found is None:
                    print(f"error: no user {escape(args.user_id)}", file=sys.stderr)
                    return 1
                user = found
        except argparse.ArgumentTypeError as exc:
            raise UsageError(str(exc)) from exc
        except InvalidInput as exc:
            raise UsageError(str(exc)) from exc
    view = user_view(user)
    if args.json:
        print(json.dumps(view))
    else:
        for key, value in view.items():
            print(f"{key:<30} {'-' if value is None else escape(str(value))}")
    return 0


async def cmd_top_up(settings: Settings, args: argparse.Namespace) -> int:
    amount = parse_usd(args.amount_usd)
    async with connect(settings, embedded_ok=False) as c:
        await c.require_schema()
        rt = Runtime(c.session_factory, c.store, settings)
        try:
            changed = await top_up(
                rt,
                clerk_user_id=args.user_id,
                amount_microdollars=amount,
                idempotency_key=args.idempotency_key,
            )
        except InvalidInput as exc:
            raise UsageError(str(exc)) from exc
    print(
        f"topped up {args.user_id} by {format_usd(amount)}"
        f" ({amount} µ$): {changed} session(s) made due or resumed"
    )
    return 0


PRICE_CLASSES: Final = ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read")


def parse_per_mtok(text: str) -> int:
    """A price per million tokens: integer microdollars (``3000000``), or dollars with a
    leading ``$`` (``$3`` or ``$3.75``), exact to the microdollar, 0 or more."""
    raw = text.strip()
    dollars = raw.startswith("$")
    try:
        return to_micro(raw.removeprefix("$").replace("_", ""), dollars=dollars)
    except ValueError as exc:
        # "3.75" without "$" is the usual slip: a price in dollars given as microdollars.
        hint = f"; for dollars write ${raw}" if not dollars and "." in raw else ""
        raise argparse.ArgumentTypeError(
            f"not a price: {text!r} ({exc}); give microdollars per Mtok (3000000)"
            f" or $ per Mtok ($3.75){hint}"
        ) from None


#: Below this a price per million tokens is almost surely dollars given as microdollars
#: ($0.001 per Mtok: no model is priced near it).
SUSPICIOUS_PER_MTOK: Final = 1_000


def refuse_unit_slips(args: argparse.Namespace) -> None:
    """``prices set --input 3`` means 3 µ$ per Mtok, which nobody charges: refuse such
    a price unless ``--yes`` confirms it."""
    if args.yes:
        return
    given = {
        "--input": args.input,
        "--output": args.output,
        "--cache-write-5m": args.cache_write_5m,
        "--cache-write-1h": args.cache_write_1h,
        "--cache-read": args.cache_read,
    }
    for threshold, figures in args.band:
        given.update({f"--band {threshold}": figure for figure in figures})
    for name, value in given.items():
        if value is not None and 0 < value < SUSPICIOUS_PER_MTOK:
            raise UsageError(
                f"{name} is {value} µ$ per million tokens (${value / 1_000_000:f}): for dollars"
                f" write ${value} (or pass --yes if {value} µ$ is meant)"
            )


def parse_band(text: str) -> tuple[int, list[int]]:
    """A band by prompt size: ``TOKENS:INPUT:OUTPUT`` or
    ``TOKENS:INPUT:OUTPUT:WRITE_5M:WRITE_1H:READ``, each price as ``parse_per_mtok`` reads
    it. A call whose prompt has more than TOKENS pays these rates for all its tokens."""
    parts = text.strip().split(":")
    if len(parts) not in (3, 6):
        raise argparse.ArgumentTypeError(
            f"not a band: {text!r} (TOKENS:INPUT:OUTPUT[:WRITE_5M:WRITE_1H:READ],"
            " e.g. '200000:$6:$22.50')"
        )
    try:
        threshold = int(parts[0].replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a band's threshold is a whole number of prompt tokens: {parts[0]!r} in {text!r}"
        ) from None
    if not 1 <= threshold <= MAX_TOKENS_PER_CALL:
        raise argparse.ArgumentTypeError(
            f"a band's threshold must be 1 to {MAX_TOKENS_PER_CALL} tokens: {text!r}"
        )
    return threshold, [parse_per_mtok(part) for part in parts[1:]]


def parse_time(text: str) -> datetime:
    """An ISO 8601 time with its UTC offset (``2027-01-01T00:00:00Z``); naive is ambiguous."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise argparse.ArgumentTypeError(f"give the time with its offset (Z or +hh:mm): {text!r}")
    try:
        moment.astimezone(UTC)  # the first and last days of the calendar overflow in UTC
    except OverflowError:
        raise argparse.ArgumentTypeError(f"out of the calendar's range: {text!r}") from None
    return moment


async def cmd_prices(settings: Settings, args: argparse.Namespace) -> int:
    async with connect(settings, embedded_ok=False) as c:
        await c.require_schema()
        rt = c.runtime(settings)
        try:
            if args.action == "set":
                refuse_unit_slips(args)
                base = rates(
                    args.input,
                    args.output,
                    cache_write_5m=args.cache_write_5m,
                    cache_write_1h=args.cache_write_1h,
                    cache_read=args.cache_read,
                )
                entry = await set_price(
                    rt,
                    model=args.model,
                    rates=base,
                    effective_from=args.from_time,
                    source=args.source,
                    bands=[_band(base, threshold, figures) for threshold, figures in args.band],
                    web_search_per_1k=args.web_search_per_1k,
                )
                print(
                    f"{entry.model} from {entry.effective_from.isoformat()}:"
                    f" {_figures(entry.rates)} per Mtok"
                )
                for each in entry.bands:
                    print(
                        f"  prompt above {each.threshold_tokens:,} tokens:"
                        f" {_figures(each.rates)} per Mtok, for every token of the call"
                    )
                if entry.web_search_per_1k is not None:
                    print(f"  web search {format_usd(entry.web_search_per_1k)} per 1,000")
                return 0
            entries = await list_prices(rt, model=args.model)
        except InvalidInput as exc:
            raise UsageError(str(exc)) from exc
    if args.model is not None and not entries:
        print(
            f"error: no price for model {escape(args.model)!r}: charges of it are refused"
            " as UnknownModel unless MODEL_PRICES has a fallback (add one with `prices set`)",
            file=sys.stderr,
        )
        return 1
    now = rt.clock()
    in_force = {}
    for entry in entries:  # by model and time: the last one not after now is in force
        if entry.effective_from <= now:
            in_force[entry.model] = entry
    if args.json:
        rows = [
            {
                "model": e.model,
                "effective_from": e.effective_from.isoformat(),
                **{f"{n}_per_mtok": v for n, v in zip(PRICE_CLASSES, e.rates, strict=True)},
                "web_search_per_1k": e.web_search_per_1k,
                "bands": [
                    {
                        "threshold_tokens": b.threshold_tokens,
                        **{f"{n}_per_mtok": v for n, v in zip(PRICE_CLASSES, b.rates, strict=True)},
                    }
                    for b in e.bands
                ],
                "in_force": in_force.get(e.model) is e,
                "source": e.source,
            }
            for e in entries
        ]
        print(json.dumps(rows, indent=2))
        return 0
    print(
        "$ per million tokens (web search: $ per 1,000); * = in force now; a band bills every"
        " token of a call whose prompt (input + cache writes + reads) passes its threshold"
    )
    head = ("model", "from (UTC)", "input", "output", "write 5m", "write 1h", "read", "search")
    print(f"  {head[0]:<28} {head[1]:<20}" + "".join(f" {h:>10}" for h in head[2:]))
    for e in entries:
        mark = "*" if in_force.get(e.model) is e else " "
        start = e.effective_from.astimezone(UTC).strftime("%Y-%m-%d %H:%M")
        search = "-" if e.web_search_per_1k is None else format_usd(e.web_search_per_1k)
        print(
            f"{mark} {e.model:<28} {start:<20}"
            + "".join(f" {format_usd(v):>10}" for v in e.rates)
            + f" {search:>10}"
        )
        for b in e.bands:
            label = f"prompt > {b.threshold_tokens:,}"
            print(f"  {'':<28} {label:<20}" + "".join(f" {format_usd(v):>10}" for v in b.rates))
    sources = sorted({e.source for e in entries})
    for source in sources:
        print(f"source: {source}")
    return 0


def _figures(values: Rates) -> str:
    return ", ".join(
        f"{name} {format_usd(value)}" for name, value in zip(PRICE_CLASSES, values, strict=True)
    )


def _band(base: Rates, threshold: int, figures: list[int]) -> Band:
    """A ``--band`` as a ``pricing.Band``: given only input and output, its cache classes
    are the base row's scaled like its input (``pricing.band``)."""
    if len(figures) == 2:
        return band(threshold, base, figures[0], figures[1])
    i, o, w5, w1, r = figures
    return band(threshold, base, i, o, cache_write_5m=w5, cache_write_1h=w1, cache_read=r)


def print_purge(report: PurgeReport, *, older_than: int, as_json: bool) -> None:
    """What a purge deleted, or with --dry-run would delete."""
    if as_json:
        print(json.dumps({**report.as_dict(), "older_than_days": older_than}))
        return
    verb = "would delete" if report.dry_run else "deleted"
    print(
        f"purge: {len(report.session_ids)} sessions completed more than {older_than} days ago:"
        f" {verb} {report.checkpoints} checkpoints and {report.redis_keys} Redis keys"
        " (session rows and ledger kept)"
    )
    if report.store_errors:
        print("  Redis was unreachable: keys not counted or deleted (they expire with their TTL)")
    for session_id in report.session_ids:
        print(f"  {escape(session_id)}")


async def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from app.demo import run_demo

    return await run_demo(settings, args)


# ------------------------------------------------------------------------- parser


def package_version() -> str:
    """The installed distribution's version (the package's own when not installed)."""
    try:
        return distribution_version("agent-sleepwake")
    except PackageNotFoundError:
        from app import __version__

        return __version__


def program_name(argv0: str | None = None) -> str:
    """How the user ran it: ``agent-sleepwake`` as the console script, ``python -m app``
    as a module."""
    name = Path(argv0 if argv0 is not None else sys.argv[0]).name
    return "python -m app" if name in ("__main__.py", "-m", "-c", "") else name


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = OneLineParser(prog=prog or program_name(), description=__doc__)
    parser.add_argument("--debug", action="store_true", help="print tracebacks of errors")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="upgrade DATABASE_URL to the newest revision")

    worker = sub.add_parser("worker", help="wake sleeping sessions when they are due")
    worker.add_argument("--on-resume", metavar="MODULE:FUNCTION", help="resume hook to call")
    worker.add_argument("--batch-size", type=BATCH, help="sessions per claim (BATCH_SIZE)")
    worker.add_argument(
        "--once", action="store_true", help="one pass (wake what is due, deliver), then exit"
    )
    worker.add_argument("--metrics-port", type=PORT, help="serve Prometheus metrics here")

    daemon = sub.add_parser("daemon", help="sleep silent over-budget sessions, stop runaways")
    daemon.add_argument("--batch-size", type=BATCH, help="sessions per pass (BATCH_SIZE)")
    daemon.add_argument("--once", action="store_true", help="one pass, then exit")
    daemon.add_argument("--metrics-port", type=PORT, help="serve Prometheus metrics here")

    events = sub.add_parser("events", help="deliver budget events to WEBHOOK_URL, signed")
    events.add_argument("--batch-size", type=BATCH, help="events per claim (WEBHOOK_BATCH_SIZE)")
    events.add_argument("--metrics-port", type=PORT, help="serve Prometheus metrics here")

    run = sub.add_parser("run", help="worker and daemon in one process (embedded servers if unset)")
    run.add_argument("--on-resume", metavar="MODULE:FUNCTION")
    run.add_argument("--metrics-port", type=PORT)

    status = sub.add_parser("status", help="sessions by status, sleepers, today's spend")
    status.add_argument(
        "--top", type=whole_number(0, 10_000), default=10, help="how many users to list"
    )

    sessions = sub.add_parser(
        "sessions", help="list, inspect, redeliver, cancel, purge or delete sessions"
    )
    actions = sessions.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="sessions by status, or the stuck ones")
    listing.add_argument("--status", choices=[s.value for s in SessionStatus])
    listing.add_argument(
        "--stuck", action="store_true", help="parked resumes, and resumes owed too long"
    )
    listing.add_argument("--limit", type=whole_number(1, 100_000), default=50)
    shown = actions.add_parser("show", help="row, resume state, latest checkpoint, Redis key")
    shown.add_argument("id", type=identifier)
    again = actions.add_parser("redeliver", help="owe a working session's resume again")
    again.add_argument("id", type=identifier)
    again.add_argument(
        "--force",
        action="store_true",
        help="even while a hook runs it: a new token fences the running runner",
    )
    wake = actions.add_parser(
        "wake", help="wake a sleeping session now (development: no waiting for midnight)"
    )
    wake.add_argument("id", type=identifier)
    cancel = actions.add_parser("cancel", help="complete a session (terminal)")
    cancel.add_argument("id", type=identifier)
    purge = actions.add_parser(
        "purge",
        help="delete the checkpoints and Redis keys of sessions completed long ago"
        " (rows and ledger stay)",
    )
    purge.add_argument(
        "--older-than",
        type=_days,
        metavar="DAYS",
        help="completed more than DAYS days ago (default RETENTION_DAYS)",
    )
    purge.add_argument("--dry-run", action="store_true", help="say what would go, delete nothing")
    erase = actions.add_parser(
        "delete", help="remove a session entirely: row, checkpoints, ledger rows, Redis key"
    )
    erase.add_argument("id", type=identifier)
    for each in (listing, shown, wake, again, cancel, purge, erase):
        each.add_argument("--json", action="store_true", help="JSON for scripts")
    users = sub.add_parser("users", help="create, change or show a user's settings")
    user_actions = users.add_subparsers(dest="action", required=True)
    user_set = user_actions.add_parser(
        "set", help="create a user (needs --tier) or change the settings given"
    )
    user_set.add_argument("user_id", metavar="USER_ID", type=identifier)
    user_set.add_argument("--tier", choices=[t.value for t in Tier])
    user_set.add_argument(
        "--renewal", metavar="TIME|none", help="subscription renewal, ISO 8601 with offset"
    )
    user_set.add_argument(
        "--budget-override",
        metavar="USD|none",
        help="the period allowance instead of the tier's, in dollars",
    )
    user_show = user_actions.add_parser("show", help="a user's settings")
    user_show.add_argument("user_id", metavar="USER_ID", type=identifier)
    for each in (user_set, user_show):
        each.add_argument("--json", action="store_true", help="JSON for scripts")

    topup = sub.add_parser("top-up", help="add money to a user's budget now (wakes sessions)")
    topup.add_argument(
        "user_id", metavar="USER_ID", type=identifier, help="the user's clerk_user_id"
    )
    topup.add_argument("amount_usd", metavar="AMOUNT_USD", help="dollars, e.g. 10 or 2.50")
    topup.add_argument(
        "--idempotency-key",
        type=identifier,
        default=None,
        help="a retry with the same key credits once",
    )

    prices = sub.add_parser("prices", help="the effective-dated price list charges use")
    price_actions = prices.add_subparsers(dest="action", required=True)
    plist = price_actions.add_parser("list", help="every price row; * marks the one in force")
    plist.add_argument("--model", default=None, help="only this model")
    plist.add_argument("--json", action="store_true", help="JSON for scripts")
    pset = price_actions.add_parser(
        "set", help="add a model's price from a time on (never changes a past charge)"
    )
    pset.add_argument("model", metavar="MODEL")
    pset.add_argument(
        "--yes", action="store_true", help="accept a price below $0.001 per Mtok as meant"
    )
    per_mtok = "per million tokens: microdollars (3000000) or dollars ($3)"
    pset.add_argument("--input", type=parse_per_mtok, required=True, help=per_mtok)
    pset.add_argument("--output", type=parse_per_mtok, required=True, help=per_mtok)
    for name, default in (("5m", "1.25x"), ("1h", "2x")):
        pset.add_argument(
            f"--cache-write-{name}",
            type=parse_per_mtok,
            default=None,
            help=f"{per_mtok}; default {default} input",
        )
    pset.add_argument(
        "--cache-read", type=parse_per_mtok, default=None, help=f"{per_mtok}; default 0.1x input"
    )
    pset.add_argument(
        "--band",
        type=parse_band,
        action="append",
        default=[],
        metavar="TOKENS:INPUT:OUTPUT[:WRITE_5M:WRITE_1H:READ]",
        help="a call whose prompt (input + cache writes + reads) has more than TOKENS pays"
        " these rates for ALL its tokens, e.g. '200000:$6:$22.50'; cache classes left out"
        " scale like the input; repeat for more bands",
    )
    pset.add_argument(
        "--web-search-per-1k",
        type=parse_per_mtok,
        default=None,
        metavar="PRICE",
        help="web search per 1,000 requests: microdollars or dollars ($10); without it a"
        " call that searched is refused",
    )
    pset.add_argument(
        "--from",
        dest="from_time",
        type=parse_time,
        required=True,
        metavar="ISO_TIME",
        help="when it takes effect, with its offset (2027-01-01T00:00:00Z); not in the past",
    )
    pset.add_argument(
        "--source", default="set by hand with `python -m app prices set`", help="where it is from"
    )

    demo = sub.add_parser("demo", help="a fleet of agents sleeps and wakes over simulated days")
    demo.add_argument("--sessions", type=whole_number(1, 10_000), default=12)
    demo.add_argument("--days", type=whole_number(1, 366), default=3)
    demo.add_argument("--seed", type=whole_number(-(2**63), 2**63 - 1), default=7)
    demo.add_argument("--keep", action="store_true", help="keep the data for `status`")
    demo.add_argument(
        "--verbose", action="store_true", help="log to the screen, not to .local/demo-*.log"
    )
    demo.add_argument(
        "--json", action="store_true", help="the summary as JSON on stdout (the screen on stderr)"
    )
    demo.add_argument("--inject-fault", choices=["history"], help=argparse.SUPPRESS)
    return parser


BATCH: Final = whole_number(1, MAX_BATCH)
PORT: Final = whole_number(1, 65_535)
#: ``sessions purge --older-than``: a century; more overflows the database's calendar.
_days: Final = whole_number(0, MAX_RETENTION_DAYS, "days")


COMMANDS = {
    "migrate": cmd_migrate,
    "worker": cmd_worker,
    "daemon": cmd_daemon,
    "events": cmd_events,
    "run": cmd_run,
    "status": cmd_status,
    "sessions": cmd_sessions,
    "users": cmd_users,
    "top-up": cmd_top_up,
    "prices": cmd_prices,
    "demo": cmd_demo,
}


def _settings_or_usage_error() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(part) for part in first["loc"]).upper() or "a setting"
        given = "" if is_secret_setting(name) else f"{_shown(first.get('input'))}: "
        raise UsageError(
            f"{name} is invalid ({given}{first['msg']}): fix it in the environment or .env"
            " (see .env.example)"
        ) from None


def _shown(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code: 0, 1 when a server, a login or the
    schema is the problem, 2 for usage and configuration. One line per error; the
    traceback only with ``--debug``."""
    args = build_parser().parse_args(argv)
    settings: Settings | None = None
    try:
        settings = _settings_or_usage_error()
        configure_logging(settings)
        return asyncio.run(COMMANDS[args.command](settings, args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        secrets = settings.secrets() if settings else frozenset()
        if args.debug:
            print(mask_secrets(traceback.format_exc(), secrets), end="", file=sys.stderr)

        def say(message: str) -> None:
            print(escape(mask_secrets(f"error: {message}", secrets)), file=sys.stderr)

        if isinstance(exc, UsageError):
            say(str(exc))
            return USAGE
        problem = explain(
            exc,
            database_url=settings.database_url if settings else None,
            redis_url=settings.redis_url if settings else None,
        )
        if problem is None:
            hint = "" if args.debug else " (run with --debug for the traceback)"
            say(f"{type(exc).__name__}: {exc}{hint}")
            return ENVIRONMENT
        say(problem.message)
        return problem.exit_code
