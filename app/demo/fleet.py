"""The simulated fleet: users across the tiers, and agents that charge, checkpoint, sleep
at their budget and carry on from what PostgreSQL restores."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Final

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.budget import policy
from app.budget.pricing import rates_of, token_usage, usage_cost
from app.clock import VirtualClock
from app.db.models import AgentCheckpoint, UserSettings
from app.domain import Decision, InvalidTransition, SessionStatus, Tier
from app.lifecycle import (
    RestoredSession,
    Runtime,
    complete_session,
    latest_checkpoint,
    resume_session,
    save_checkpoint,
    sleep_session,
    start_session,
    stop_session,
)
from app.lifecycle import charge as charge_call
from app.repositories import ChargeResult
from app.settings import Settings

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
    cost: int = 0
    cache_cost: int = 0


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

    def spend(self, session_id: str, cost: int, cached: int) -> None:
        """A call's cost, and the part of it its cache writes and reads make up."""
        t = self.tally[(self.clock().date(), self.tiers[session_id])]
        t.cost += cost
        t.cache_cost += cached

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
    *,
    writes_cache: bool = False,
) -> dict[str, int]:
    """A call that costs ``share`` (2-5 %) of the day's budget, split by token class the
    way a coding agent's calls are: the first call of a session or of a day writes the
    whole prompt prefix into the cache (a quarter of it with the 1-hour TTL); later calls
    read the prefix from the cache and write only the new turn.

    Agents sleep from ``wind_down`` (90 %) on, so a user with three sessions in
    flight ends the day at most 3 x 5 % past it: under the 110 % runaway line.
    """
    price = rates_of(settings.model_prices[model])
    target = max(1, int(budget * rng.uniform(*share)))
    output = rng.randint(300, 2_000)
    out_cost = output * price.output // 1_000_000
    if out_cost >= target:
        output = max(1, target * 1_000_000 // max(1, price.output) // 4)
        out_cost = output * price.output // 1_000_000
    remaining = max(0, target - out_cost)

    def tokens(part: float, per_mtok: int) -> int:
        return int(remaining * part) * 1_000_000 // max(1, per_mtok)

    if writes_cache:
        writes = tokens(0.85, price.cache_write_5m)
        hour = writes // 4
        reads = 0
        inp = tokens(0.15, price.input)
    else:
        reads = tokens(0.5, price.cache_read)
        writes, hour = tokens(0.25, price.cache_write_5m), 0
        inp = tokens(0.25, price.input)
    return {
        "input_tokens": inp,
        "output_tokens": output,
        "cache_creation_input_tokens": writes,
        "cache_creation_1h_input_tokens": hour,
        "cache_read_input_tokens": reads,
    }


def cache_cost(usage: dict[str, int], model: str, settings: Settings) -> int:
    """What the call's cache writes and reads cost at the model's list price."""
    price = rates_of(settings.model_prices[model])
    cached = token_usage(
        input_tokens=0,
        output_tokens=0,
        cache_creation_input_tokens=usage["cache_creation_input_tokens"],
        cache_creation_1h_input_tokens=usage["cache_creation_1h_input_tokens"],
        cache_read_input_tokens=usage["cache_read_input_tokens"],
    )
    return usage_cost(price, cached)


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
    cache_day: date | None = None
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
        # The prompt cache: written by the first call of the session and of each day
        # (a wake after midnight rewrites the whole prefix), read by the calls after.
        today = policy.budget_day(fleet.clock())
        usage = _tokens_for(
            rng, max(budget, 1), model, rt.settings, fleet.call_share,
            writes_cache=cache_day != today,
        )  # fmt: skip
        cache_day = today
        request_id = f"{fleet.run_id}-{session_id}-{iteration}-{uuid.uuid4().hex[:8]}"

        async def charge(
            request_id: str = request_id, usage: dict[str, int] = usage
        ) -> ChargeResult:
            return await charge_call(
                rt, session_id=session_id, request_id=request_id, model=model,
                input_tokens=usage["input_tokens"], output_tokens=usage["output_tokens"],
                cache_creation_input_tokens=usage["cache_creation_input_tokens"],
                cache_creation_1h_input_tokens=usage["cache_creation_1h_input_tokens"],
                cache_read_input_tokens=usage["cache_read_input_tokens"], now=fleet.clock(),
            )  # fmt: skip

        result = await charge()
        fleet.fresh_charges += 1
        fleet.fresh_cost += result.cost_microdollars
        fleet.spend(session_id, result.cost_microdollars, cache_cost(usage, model, rt.settings))
        if rng.random() < 0.05:  # the provider's client retried the same call
            again = await charge()
            fleet.duplicates_seen += 1
            if not again.duplicate or again.cost_microdollars != result.cost_microdollars:
                fleet.duplicate_breaches.append(f"{session_id}: {request_id}")
        cost_so_far += result.cost_microdollars
        budget = result.budget_microdollars
        reply = f"step {iteration}: " + "x" * rng.randint(80, 400)
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
            # This turn only appended its reply and the tool's result.
            await save_checkpoint(rt, snapshot(), new_messages=2)
            continue
        restored = await rest(fleet, rt, queue, session_id, snapshot, result.decision)
        # Carry on from what PostgreSQL gave back, not from local memory.
        cp = restored.checkpoint
        if cp is not None:
            history = list(cp.message_history)
            retry_counts = dict(cp.retry_counts)
            iteration = cp.iteration_number
        budget = restored.session.daily_budget_microdollars
    latest = await latest_checkpoint(rt, session_id)
    await complete_session(rt, session_id, checkpoint=latest)


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
