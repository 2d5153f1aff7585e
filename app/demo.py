"""``python -m app demo``: a fleet of agents spends, sleeps and wakes over simulated days.

Everything is real but the clock: PostgreSQL, Redis, the repositories, the wake worker
and the budget daemon run as in production, in-process, sharing a virtual clock on
which a day passes in a few seconds. At the end the demo checks its own run and exits
1 if any promise was broken, naming the session and the check.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import sys
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any, Final

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.bootstrap import UsageError, connect
from app.budget import policy
from app.clock import VirtualClock
from app.db.migrate import upgrade
from app.db.models import AgentCheckpoint, AgentCostEvent, AgentSession, BudgetDay, UserSettings
from app.domain import Decision, InvalidTransition, SessionStatus, Tier
from app.lifecycle import (
    RestoredSession,
    Runtime,
    complete_session,
    resume_session,
    sleep_session,
    start_session,
    stop_session,
)
from app.lifecycle import charge as charge_call
from app.local_services import DEFAULT_ROOT
from app.repositories import ChargeResult
from app.repositories.budget_rules import stops
from app.settings import Settings
from app.workers import BudgetDaemon, WakeWorker

_days = BudgetDay.__table__.c

#: One simulated day lasts this many real seconds.
REAL_SECONDS_PER_DAY: Final = 4.0
TIERS: Final = (Tier.BOOTSTRAPPER, Tier.PARTNER, Tier.CTO_SCALE)
PHASES: Final = ("plan", "implement", "test", "review")


@dataclass
class SleepRecord:
    session_id: str
    slept_at: datetime
    wake_at: datetime
    history: list[dict[str, Any]]
    woke_at: datetime | None = None
    restored: list[dict[str, Any]] | None = None


@dataclass
class Tally:
    """Per (day, tier) counts for the closing table."""

    sessions: set[str] = field(default_factory=set)
    iterations: int = 0
    sleeps: int = 0
    wakes: int = 0


@dataclass
class Fleet:
    run_id: str
    clock: VirtualClock
    end: datetime
    rng: random.Random
    tiers: dict[str, Tier] = field(default_factory=dict)
    users: dict[str, str] = field(default_factory=dict)
    waiting: dict[str, asyncio.Queue[RestoredSession]] = field(default_factory=dict)
    sleeps: list[SleepRecord] = field(default_factory=list)
    fresh_charges: int = 0
    fresh_cost: int = 0
    duplicates_seen: int = 0
    duplicate_breaches: list[str] = field(default_factory=list)
    tally: dict[tuple[date, Tier], Tally] = field(default_factory=lambda: defaultdict(Tally))
    events: Counter[str] = field(default_factory=Counter)
    first_sleep: asyncio.Event = field(default_factory=asyncio.Event)
    careless: set[str] = field(default_factory=set)
    call_share: tuple[float, float] = (0.02, 0.05)

    def mark(self, session_id: str, what: str) -> None:
        day = self.clock().date()
        t = self.tally[(day, self.tiers[session_id])]
        t.sessions.add(session_id)
        if what == "iteration":
            t.iterations += 1
        elif what == "sleep":
            t.sleeps += 1
        elif what == "wake":
            t.wakes += 1
        self.events[what] += 1


async def on_resume(fleet: Fleet, restored: RestoredSession) -> None:
    queue = fleet.waiting.get(restored.session.id)
    if queue is not None:
        queue.put_nowait(restored)


def _tokens_for(
    rng: random.Random,
    budget: int,
    model: str,
    settings: Settings,
    share: tuple[float, float] = (0.02, 0.05),
) -> tuple[int, int]:
    """A call that costs ``share`` (2-5 %) of the day's budget, split like real traffic.

    Agents sleep from ``wind_down`` (90 %) on, so a user with three sessions in
    flight ends the day at most 3 x 5 % past it: under the 110 % runaway line.
    """
    price = settings.model_prices[model]
    target = max(1, int(budget * rng.uniform(*share)))
    output = rng.randint(300, 2_000)
    out_cost = output * price.output_per_mtok // 1_000_000
    if out_cost >= target:
        output = max(1, target * 1_000_000 // max(1, price.output_per_mtok) // 4)
        out_cost = output * price.output_per_mtok // 1_000_000
    remaining = max(0, target - out_cost)
    inp = remaining * 1_000_000 // max(1, price.input_per_mtok)
    return inp, output


async def wake_after(queue: asyncio.Queue[RestoredSession], version: int) -> RestoredSession:
    """The wake of the sleep that left the session at ``version``; earlier wakes (of a
    sleep the daemon imposed while the agent was busy) are stale and skipped."""
    while True:
        restored = await queue.get()
        if restored.session.version > version:
            return restored


async def rest(
    fleet: Fleet,
    rt: Runtime,
    queue: asyncio.Queue[RestoredSession],
    session_id: str,
    snapshot: Callable[[], AgentCheckpoint],
    decision: Decision,
) -> RestoredSession:
    """Sleep until the next budget day, or stop and resume after a top-up; returns what
    PostgreSQL restores. A daemon may have slept or stopped the session meanwhile, so
    each way hands over to the other when the session already went that way."""
    stop = decision is Decision.STOP
    while True:
        if not stop:
            slept_at = fleet.clock()
            sleeping = await sleep_session(rt, snapshot(), now=slept_at)
            if sleeping.status == SessionStatus.BUDGET_EXCEEDED:
                stop = True  # a charge or the daemon stopped it first; the turn is saved
                continue
            if sleeping.status == SessionStatus.WORKING:
                # The turn crossed midnight and the new day has budget: carry on.
                return RestoredSession.of(sleeping, snapshot())
            assert sleeping.wake_at is not None
            record = SleepRecord(
                session_id, slept_at, sleeping.wake_at, list(snapshot().message_history)
            )
            fleet.sleeps.append(record)
            fleet.first_sleep.set()
            fleet.mark(session_id, "sleep")
            restored = await wake_after(queue, sleeping.version)
            record.woke_at = fleet.clock()
            record.restored = restored.checkpoint.message_history if restored.checkpoint else None
            fleet.mark(session_id, "wake")
            return restored
        try:
            await stop_session(rt, session_id, checkpoint=snapshot())
        except InvalidTransition as exc:
            if exc.current is not SessionStatus.SLEEPING:
                raise
            stop = False
            continue
        fleet.mark(session_id, "stop")
        # A top-up the next morning (the demo's stand-in for a payment).
        midnight = policy.next_budget_day_start(fleet.clock())
        await asyncio.sleep(fleet.clock.real_seconds(midnight - fleet.clock()) + 0.05)
        restored = await resume_session(rt, session_id, reason="top-up (demo)")
        fleet.mark(session_id, "wake")
        return restored


async def agent(fleet: Fleet, rt: Runtime, session_id: str, user: str, tier: Tier) -> None:
    """One simulated agent: charge, append, checkpoint; wind down, sleep and resume."""
    rng = random.Random(f"{fleet.rng.random()}-{session_id}")
    queue: asyncio.Queue[RestoredSession] = asyncio.Queue()
    fleet.waiting[session_id] = queue
    session = await start_session(
        rt, session_id=session_id, job_id=f"job-{session_id}", clerk_user_id=user, tier=tier
    )
    model = session.model_used
    history: list[dict[str, Any]] = [
        {"role": "system", "content": f"You are a coding agent on job {session_id}."},
        {"role": "user", "content": "Make the failing test suite pass."},
    ]
    retry_counts: dict[str, int] = {}
    iteration = 0
    cost_so_far = 0
    budget = session.daily_budget_microdollars

    def snapshot(state: str = "working") -> AgentCheckpoint:
        return AgentCheckpoint(
            session_id=session_id,
            job_id=f"job-{session_id}",
            message_history=list(history),
            sandbox_id=f"sbx-{session_id[-6:]}",
            current_phase=PHASES[iteration % len(PHASES)],
            retry_counts=dict(retry_counts),
            session_cost_microdollars=cost_so_far,
            daily_budget_microdollars=budget,
            iteration_number=iteration,
            agent_state=state,
        )

    while True:
        # The model "thinks" for a few simulated minutes before each call.
        await asyncio.sleep(fleet.clock.real_seconds(timedelta(minutes=rng.uniform(4, 12))))
        if fleet.clock() >= fleet.end:
            break
        iteration += 1
        inp, out = _tokens_for(rng, max(budget, 1), model, rt.settings, fleet.call_share)
        request_id = f"{fleet.run_id}-{session_id}-{iteration}-{uuid.uuid4().hex[:8]}"

        async def charge(
            request_id: str = request_id, inp: int = inp, out: int = out
        ) -> ChargeResult:
            return await charge_call(
                rt, session_id=session_id, request_id=request_id, model=model,
                input_tokens=inp, output_tokens=out, now=fleet.clock(),
            )  # fmt: skip

        result = await charge()
        fleet.fresh_charges += 1
        fleet.fresh_cost += result.cost_microdollars
        if rng.random() < 0.05:  # the provider's client retried the same call
            again = await charge()
            fleet.duplicates_seen += 1
            if not again.duplicate or again.cost_microdollars != result.cost_microdollars:
                fleet.duplicate_breaches.append(f"{session_id}: {request_id}")
        cost_so_far += result.cost_microdollars
        budget = result.budget_microdollars
        reply = f"step {iteration}: " + "x" * rng.randint(80, 400)
        usage = {"input_tokens": inp, "output_tokens": out}
        outcome = "ok" if rng.random() > 0.2 else "error"
        history.append({"role": "assistant", "content": reply, "usage": usage})
        tool_result = {"type": "tool_result", "tool_use_id": f"t{iteration}", "content": outcome}
        history.append({"role": "user", "content": [tool_result]})
        if rng.random() < 0.2:
            tool = rng.choice(["bash", "edit", "pytest"])
            retry_counts[tool] = retry_counts.get(tool, 0) + 1
        fleet.mark(session_id, "iteration")

        # wind_down means "finish this turn": the turn is done, so sleep now. Agents in
        # fleet.careless keep going until `sleep` (the budget daemon's business).
        carry_on = result.decision is Decision.CONTINUE or (
            result.decision is Decision.WIND_DOWN and session_id in fleet.careless
        )
        if carry_on:
            async with rt.session_factory.begin() as s:
                await rt.checkpoints(s).save(snapshot())
            continue
        restored = await rest(fleet, rt, queue, session_id, snapshot, result.decision)
        # Carry on from what PostgreSQL gave back, not from local memory.
        cp = restored.checkpoint
        if cp is not None:
            history = list(cp.message_history)
            retry_counts = dict(cp.retry_counts)
            iteration = cp.iteration_number
        budget = restored.session.daily_budget_microdollars
    async with rt.session_factory.begin() as s:
        latest = await rt.checkpoints(s).load_latest(session_id)
    await complete_session(rt, session_id, checkpoint=latest)


# --------------------------------------------------------------------- set-up


async def seed_users(
    factory: async_sessionmaker[AsyncSession], fleet: Fleet, n_sessions: int, start: datetime
) -> list[tuple[str, str, Tier]]:
    """Users across the three tiers, 1-3 sessions each; one has no user_settings row."""
    plan: list[tuple[str, str, Tier]] = []
    rng = fleet.rng
    user_no = 0
    while len(plan) < n_sessions:
        tier = TIERS[user_no % len(TIERS)]
        user = f"demo-{fleet.run_id}-user{user_no}"
        for _ in range(min(rng.randint(1, 3), n_sessions - len(plan))):
            sid = f"demo-{fleet.run_id}-s{len(plan):02d}"
            plan.append((sid, user, tier))
            fleet.tiers[sid] = tier
            fleet.users[sid] = user
        user_no += 1
    async with factory.begin() as s:
        for i, user in enumerate(sorted({u for _, u, _ in plan})):
            if i == 1:
                continue  # no billing row: the tier's allowance over 30 days
            tier = next(t for _, u, t in plan if u == user)
            s.add(
                UserSettings(
                    clerk_user_id=user,
                    tier=tier.value,
                    subscription_renewal_date=start + timedelta(days=rng.randint(5, 25)),
                )
            )
    return plan


# ------------------------------------------------------------------ progress


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


# -------------------------------------------------------------------- checks


async def verify(factory: async_sessionmaker[AsyncSession], fleet: Fleet) -> list[str]:
    """The demo's promises, checked against PostgreSQL; returns the breaches."""
    breaches: list[str] = []
    for rec in fleet.sleeps:
        if rec.restored != rec.history:
            breaches.append(
                f"session {rec.session_id}: restored history differs from the history at sleep"
                f" (slept {rec.slept_at:%Y-%m-%d %H:%M})"
            )
        expected = policy.next_budget_day_start(rec.slept_at)
        if rec.wake_at != expected:
            breaches.append(
                f"session {rec.session_id}: wake_at {rec.wake_at} is not the first midnight"
                f" after it slept ({expected})"
            )
        if rec.woke_at is None or not expected <= rec.woke_at < expected + timedelta(days=1):
            breaches.append(
                f"session {rec.session_id}: woke at {rec.woke_at}, not on {expected:%Y-%m-%d}"
            )
    breaches += [f"duplicate charge counted twice: {b}" for b in fleet.duplicate_breaches]
    users = sorted(set(fleet.users.values()))
    ids = sorted(fleet.users)
    async with factory() as s:
        ledger_rows, ledger = (
            await s.execute(
                select(
                    func.count(), func.coalesce(func.sum(AgentCostEvent.cost_microdollars), 0)
                ).where(AgentCostEvent.session_id.in_(ids))
            )
        ).one()
        days_spent = await s.scalar(
            select(func.coalesce(func.sum(BudgetDay.spent_microdollars), 0)).where(
                BudgetDay.clerk_user_id.in_(users)
            )
        )
        cumulative = await s.scalar(
            select(func.coalesce(func.sum(AgentSession.cumulative_cost_microdollars), 0)).where(
                AgentSession.id.in_(ids)
            )
        )
        over = (
            await s.execute(
                select(
                    BudgetDay.clerk_user_id,
                    BudgetDay.day,
                    BudgetDay.spent_microdollars,
                    BudgetDay.budget_microdollars,
                ).where(
                    BudgetDay.clerk_user_id.in_(users),
                    stops(_days.spent_microdollars, _days.budget_microdollars),
                )
            )
        ).all()
        unfinished = list(
            await s.scalars(
                select(AgentSession.id).where(
                    AgentSession.id.in_(ids), AgentSession.status != SessionStatus.COMPLETED
                )
            )
        )
    if ledger_rows != fleet.fresh_charges or ledger != fleet.fresh_cost:
        breaches.append(
            f"request ids: {fleet.fresh_charges} distinct calls worth {fleet.fresh_cost} µ$"
            f" but the ledger holds {ledger_rows} rows worth {ledger} µ$"
        )
    if not ledger == days_spent == cumulative:
        breaches.append(
            f"money: ledger {ledger} µ$, budget_days {days_spent} µ$,"
            f" sessions' cumulative cost {cumulative} µ$ differ"
        )
    for user, day, spent, budget in over:
        breaches.append(f"user {user} spent {spent} µ$ on {day}, above 110 % of {budget} µ$")
    breaches += [f"session {sid}: did not complete" for sid in unfinished]
    return breaches


async def inject_history_fault(factory: async_sessionmaker[AsyncSession], fleet: Fleet) -> None:
    """Test hook: tamper with the first sleeper's stored history while it sleeps."""
    await fleet.first_sleep.wait()
    victim = fleet.sleeps[0].session_id
    async with factory.begin() as s:
        await s.execute(
            update(AgentCheckpoint)
            .where(
                AgentCheckpoint.session_id == victim,
                AgentCheckpoint.iteration_number
                == select(func.max(AgentCheckpoint.iteration_number))
                .where(AgentCheckpoint.session_id == victim)
                .scalar_subquery(),
            )
            .values(message_history=AgentCheckpoint.message_history.op("||")(
                text("""'[{"role": "user", "content": "tampered"}]'::jsonb""")))
        )  # fmt: skip


async def cleanup(factory: async_sessionmaker[AsyncSession], rt: Runtime, fleet: Fleet) -> None:
    ids = sorted(fleet.users)
    users = sorted(set(fleet.users.values()))
    async with factory.begin() as s:
        await s.execute(delete(AgentCostEvent).where(AgentCostEvent.session_id.in_(ids)))
        await s.execute(delete(AgentSession).where(AgentSession.id.in_(ids)))
        await s.execute(delete(BudgetDay).where(BudgetDay.clerk_user_id.in_(users)))
        await s.execute(delete(UserSettings).where(UserSettings.clerk_user_id.in_(users)))
    for sid in ids:
        with contextlib.suppress(Exception):
            await rt.store.delete(sid)


# --------------------------------------------------------------------- report


def print_table(fleet: Fleet, budgets: dict[tuple[date, Tier], tuple[int, int]]) -> None:
    print()
    print(
        f"{'day':<12}{'tier':<14}{'sessions':>9}{'iterations':>12}"
        f"{'spent $':>11}{'budget $':>11}{'used':>8}{'sleeps':>8}{'wakes':>7}"
    )
    print("-" * 92)
    for key in sorted(fleet.tally, key=lambda k: (k[0], TIERS.index(k[1]))):
        t = fleet.tally[key]
        spent, budget = budgets.get(key, (0, 0))
        used = f"{100 * spent / budget:6.1f}%" if budget else "    -"
        print(
            f"{key[0]!s:<12}{key[1].value:<14}{len(t.sessions):>9}{t.iterations:>12}"
            f"{spent / 1e6:>11.2f}{budget / 1e6:>11.2f}{used:>8}{t.sleeps:>8}{t.wakes:>7}"
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


async def spend_by_day_and_tier(
    factory: async_sessionmaker[AsyncSession], fleet: Fleet
) -> dict[tuple[date, Tier], tuple[int, int]]:
    users = sorted(set(fleet.users.values()))
    tier_of_user = {fleet.users[sid]: fleet.tiers[sid] for sid in fleet.users}
    out: dict[tuple[date, Tier], tuple[int, int]] = defaultdict(lambda: (0, 0))
    async with factory() as s:
        rows = await s.execute(select(BudgetDay).where(BudgetDay.clerk_user_id.in_(users)))
        for (row,) in rows:
            key = (row.day, tier_of_user[row.clerk_user_id])
            spent, budget = out[key]
            out[key] = (spent + row.spent_microdollars, budget + row.budget_microdollars)
    return out


# ----------------------------------------------------------------------- main


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
