"""The soak's recycler: erasure and id reuse while the fleet runs.

A few session ids, long and exotic ones among them, live through incarnation after
incarnation, each for another user: start, a few charges (one in three past 110 %),
an operator's stop, erasure. Half of the erasures "miss" Redis: the erased session's
snapshot is written back afterwards, as a delete that never reached Redis would leave
it, with a higher version than the next incarnation starts at. What must hold:

* the next incarnation is what ``session_state`` serves within one daemon tick
  (never the erased session, another user's data);
* every incarnation's ``session.stopped`` event is in the outbox (none dropped as a
  duplicate of an erased one's);
* the money adds up: what the ledger keeps plus what erasure removed is what the
  users' days were charged.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from app import lifecycle
from app.db.models import AgentEvent, BudgetDay
from app.domain import InvalidTransition, SessionStatus, Tier
from app.lifecycle import Runtime
from app.session_store import RedisSessionStore

#: Ids from the edges of the accepted range: the longest, astral characters, and a
#: name the system uses for itself in Redis.
RECYCLED_IDS = (
    "r" * 255,
    "soak-\N{GRINNING FACE}-\u00e9\u4e2d-" + "x" * 200,
    "~reconciled-through",
)


@dataclass
class Recycled:
    """What the recycler did and what it saw go wrong."""

    users: list[str]
    incarnations: int = 0
    stale_puts: int = 0
    stops: dict[str, int] = field(default_factory=dict)
    erased_cost: int = 0
    charged_cost: int = 0
    violations: list[str] = field(default_factory=list)


async def _serves(rt: Runtime, session_id: str, user: str, job: str, within: float) -> bool:
    """Whether ``session_state`` serves this incarnation within ``within`` real seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        state = await lifecycle.session_state(rt, session_id)
        if state.get("clerk_user_id") == user and state.get("job_id") == job:
            return True
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)


async def recycle(
    rt: Runtime,
    store: RedisSessionStore,
    stop: asyncio.Event,
    rng: random.Random,
    *,
    run_id: str,
    tick: float,
) -> Recycled:
    """Reuse ``RECYCLED_IDS`` until ``stop`` is set; every cycle ends erased."""
    done = Recycled(users=[f"recycler-{run_id}-u{i}" for i in range(3)])
    n = 0
    while not stop.is_set():
        for session_id in RECYCLED_IDS:
            n += 1
            user, job = done.users[n % len(done.users)], f"job-{n}"
            session = await lifecycle.start_session(
                rt, session_id=session_id, job_id=job, clerk_user_id=user, tier=Tier.PARTNER
            )
            done.incarnations += 1
            # One daemon tick, with the margin a loaded machine needs to run it.
            if not await _serves(rt, session_id, user, job, within=10 * tick + 2.0):
                done.violations.append(f"incarnation {n} of {session_id[:20]!r} never served")
            charged = 0
            for call in range(rng.randint(1, 3)):
                result = await lifecycle.charge(
                    rt,
                    session_id=session_id,
                    request_id=f"call-{n // 3}-{call}",  # shared by 3 users at once
                    model=session.model_used,
                    input_tokens=rng.randint(1_000, 20_000),
                    output_tokens=rng.randint(100, 2_000),
                )
                if result.duplicate:
                    done.violations.append(f"incarnation {n}: call {call} taken as a repeat")
                charged += result.cost_microdollars
            if n % 3 == 0:  # past 110 %: the charge itself stops the session
                budget = result.budget_microdollars
                result = await lifecycle.charge(
                    rt,
                    session_id=session_id,
                    request_id=f"over-{n}",
                    model=session.model_used,
                    input_tokens=max(1, budget) * 2,  # at 1 µ$ a token or more
                    output_tokens=0,
                )
                charged += result.cost_microdollars
            try:
                await lifecycle.stop_session(rt, session_id, reason="recycled")
            except InvalidTransition as exc:
                # A daemon put it to sleep first (it was over its day): a stop from
                # sleeping is not a move, so this incarnation reports no stop.
                if exc.current is not SessionStatus.SLEEPING:
                    raise
            else:
                done.stops[session_id] = done.stops.get(session_id, 0) + 1
            snapshot: dict[str, Any] | None = await store.get(session_id)
            await lifecycle.delete_session(rt, session_id)
            done.charged_cost += charged
            done.erased_cost += charged
            if snapshot is not None and rng.random() < 0.5:
                # The delete "missed" Redis: the erased snapshot is back, a version ahead.
                await store.put(session_id, {**snapshot, "version": snapshot["version"] + 5})
                done.stale_puts += 1
    return done


async def check(rt: Runtime, done: Recycled) -> None:
    """The promises of the module docstring that PostgreSQL can answer, after the run."""
    async with rt.session_factory() as s:
        for session_id, stops in done.stops.items():
            found = await s.scalar(
                select(func.count()).where(
                    AgentEvent.session_id == session_id, AgentEvent.type == "session.stopped"
                )
            )
            if found != stops:
                done.violations.append(f"{session_id[:20]!r}: {found} stop events for {stops}")
        spent = await s.scalar(
            select(func.coalesce(func.sum(BudgetDay.spent_microdollars), 0)).where(
                BudgetDay.clerk_user_id.in_(done.users)
            )
        )
    if spent != done.charged_cost:
        done.violations.append(f"recycled users spent {spent}, charged {done.charged_cost}")
