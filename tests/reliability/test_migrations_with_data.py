"""Migrations over a populated database: 0002 -> head -> 0002 -> head, no row lost."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.engine import create_engine, create_session_factory
from app.db.migrate import alembic_config, current, downgrade, upgrade
from app.db.models import AgentCheckpoint
from app.repositories import CheckpointRepository

HISTORY = [
    {"role": "user", "content": f"m{i}", "tool": {"args": [i, None, True]}} for i in range(6)
]


async def rows(engine: AsyncEngine) -> dict[str, Any]:
    async with engine.connect() as conn:
        sessions = (
            await conn.execute(
                text(
                    "SELECT id, status, cumulative_cost_microdollars::bigint,"
                    " daily_budget_microdollars::bigint FROM agent_sessions ORDER BY id"
                )
            )
        ).all()
        checkpoints = (
            await conn.execute(
                text(
                    "SELECT session_id, iteration_number, message_history::text,"
                    " sandbox_id, retry_counts::text, session_cost_microdollars::bigint"
                    " FROM agent_checkpoints ORDER BY session_id, iteration_number"
                )
            )
        ).all()
        users = (
            await conn.execute(
                text(
                    "SELECT clerk_user_id, tier, subscription_renewal_date"
                    " FROM user_settings ORDER BY 1"
                )
            )
        ).all()
    return {
        "sessions": [tuple(r) for r in sessions],
        "checkpoints": [
            (r[0], r[1], json.loads(r[2]), r[3], json.loads(r[4]), r[5]) for r in checkpoints
        ],
        "users": [tuple(r) for r in users],
    }


async def test_upgrade_and_downgrade_with_data(make_database: Callable[[], Awaitable[str]]) -> None:
    engine = create_engine(await make_database())
    try:
        await upgrade(engine, "0002")
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO user_settings (clerk_user_id, tier, subscription_renewal_date)"
                    " VALUES ('u-1', 'partner', '2026-12-06T00:00:00Z'), ('u-2', 'cto_scale', NULL)"
                )
            )
            for sid, status, cost in (
                ("s-work", "working", 2_000_000_000),
                ("s-sleep", "sleeping", 7),
                ("s-done", "completed", 0),
            ):
                await conn.execute(
                    text(
                        "INSERT INTO agent_sessions (id, job_id, clerk_user_id, tier, model_used,"
                        " status, cumulative_cost_microdollars, daily_budget_microdollars)"
                        " VALUES (:id, 'j', 'u-1', 'partner', :model, :st, :c, 5)"
                    ),
                    {"id": sid, "st": status, "c": cost, "model": "claude-sonnet-4-20250514"},
                )
                for it in range(3):
                    await conn.execute(
                        text(
                            "INSERT INTO agent_checkpoints (session_id, job_id, message_history,"
                            " sandbox_id, current_phase, retry_counts, session_cost_microdollars,"
                            " daily_budget_microdollars, iteration_number, agent_state)"
                            " VALUES (:s, 'j', :h, 'sbx', 'plan', :r, :c, 5, :it, :st)"
                        ),
                        {
                            "s": sid,
                            "h": json.dumps(HISTORY[: it + 2]),
                            "r": json.dumps({"bash": it}),
                            "c": it * 10,
                            "it": it,
                            "st": status,
                        },
                    )
        before = await rows(engine)

        await upgrade(engine)
        assert await rows(engine) == before
        async with engine.connect() as conn:
            wake = (
                await conn.execute(
                    text("SELECT id, wake_at IS NOT NULL FROM agent_sessions ORDER BY id")
                )
            ).all()
            counts = (
                await conn.execute(
                    text(
                        "SELECT DISTINCT message_count = jsonb_array_length(message_history)"
                        " FROM agent_checkpoints"
                    )
                )
            ).all()
        assert dict(wake) == {"s-done": False, "s-sleep": True, "s-work": False}
        assert counts == [(True,)]

        # New saves at head are stored as deltas on the migrated rows.
        factory = create_session_factory(engine)
        async with factory.begin() as s:
            repo = CheckpointRepository(s, keep_last=100)
            await repo.save(
                AgentCheckpoint(
                    session_id="s-work", job_id="j", message_history=HISTORY[:5], iteration_number=3
                )
            )
            await repo.save(
                AgentCheckpoint(
                    session_id="s-work", job_id="j", message_history=HISTORY, iteration_number=4
                )
            )
        async with engine.connect() as conn:
            bases = (
                await conn.execute(
                    text(
                        "SELECT iteration_number, base_message_count FROM agent_checkpoints"
                        " WHERE session_id = 's-work' AND iteration_number >= 3 ORDER BY 1"
                    )
                )
            ).all()
        assert bases == [(3, 0), (4, 5)]  # the first save after the upgrade is a keyframe
        at_head = await rows(engine)
        delta = at_head["checkpoints"][-1]
        assert delta[2] == HISTORY[5:]  # on disk: only the new message

        await downgrade(engine, "0002")
        assert await current(engine) == "0002"
        after_down = await rows(engine)
        # Every row is still there, and the delta was expanded back into its full history.
        expected = {
            **at_head,
            "checkpoints": [*at_head["checkpoints"][:-1], (*delta[:2], HISTORY, *delta[3:])],
        }
        assert after_down == expected

        await upgrade(engine)
        assert await rows(engine) == expected
    finally:
        await engine.dispose()


# JSON text as a legacy writer stored it in 0002's `json` column, and what jsonb holds
# after the upgrade: each NUL escape becomes U+FFFD, and nothing else changes (an
# escaped backslash followed by "u0000" is text, not a NUL).
LEGACY = [
    (r'[{"content": "tool output\u0000tail"}]', [{"content": "tool output\ufffdtail"}]),
    (r'[{"a": "\u0000\u0000", "b": "x"}]', [{"a": "\ufffd\ufffd", "b": "x"}]),
    (r'[{"k\u0000": [1, "\\\u0000"]}]', [{"k\ufffd": [1, "\\\ufffd"]}]),
    (r'[{"text": "\\u0000 is how JSON writes NUL"}]', [{"text": "\\u0000 is how JSON writes NUL"}]),
    (r'[{"clean": true}]', [{"clean": True}]),
]


async def test_upgrade_replaces_nul_in_legacy_json_and_reports_it(
    make_database: Callable[[], Awaitable[str]], caplog: pytest.LogCaptureFixture
) -> None:
    engine = create_engine(await make_database())
    try:
        await upgrade(engine, "0002")
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO agent_sessions (id, job_id, clerk_user_id, tier, model_used,"
                    " status, cumulative_cost_microdollars, daily_budget_microdollars)"
                    " VALUES ('s-nul', 'j', 'u-1', 'partner', 'claude-sonnet-4-20250514',"
                    " 'working', 0, 0)"
                )
            )
            for it, (raw, _) in enumerate(LEGACY):
                await conn.execute(
                    text(
                        "INSERT INTO agent_checkpoints (session_id, job_id, message_history,"
                        " retry_counts, session_cost_microdollars, daily_budget_microdollars,"
                        " iteration_number, agent_state)"
                        " VALUES ('s-nul', 'j', CAST(:h AS json), CAST(:r AS json), 0, 0, :it,"
                        " 'working')"
                    ),
                    {"h": raw, "r": r'{"bash\u0000": 1}' if it == 0 else "{}", "it": it},
                )
        with caplog.at_level(logging.WARNING, logger="alembic.runtime.migration"):
            await upgrade(engine)
        assert (
            await current(engine)
            == ScriptDirectory.from_config(alembic_config()).get_current_head()
        )
        async with engine.connect() as conn:
            stored = (
                await conn.execute(
                    text(
                        "SELECT message_history, retry_counts, message_count FROM"
                        " agent_checkpoints WHERE session_id = 's-nul' ORDER BY iteration_number"
                    )
                )
            ).all()
        assert [json.loads(json.dumps(r[0])) for r in stored] == [want for _, want in LEGACY]
        assert stored[0][1] == {"bash\ufffd": 1}
        assert [r[2] for r in stored] == [1] * len(LEGACY)
        reports = [r.getMessage() for r in caplog.records if "U+FFFD" in r.getMessage()]
        assert any("3 row(s) of agent_checkpoints.message_history" in m for m in reports)
        assert any("1 row(s) of agent_checkpoints.retry_counts" in m for m in reports)

        # The repository reads the repaired rows like any other.
        async with create_session_factory(engine)() as s:
            latest = await CheckpointRepository(s).load("s-nul", 0)
        assert latest.message_history == LEGACY[0][1]
    finally:
        await engine.dispose()


async def _ledger(engine: AsyncEngine) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT clerk_user_id, request_id, cost_microdollars, budget_day::text"
                " FROM agent_cost_events ORDER BY id"
            )
        )
        return [tuple(r) for r in rows]


async def test_0009_scopes_request_ids_per_user_and_back(
    make_database: Callable[[], Awaitable[str]],
) -> None:
    """0008 -> 0009: every ledger row and reservation keeps its meaning, and a request id
    another user already used becomes usable; 0009 -> 0008 keeps every row (the later
    user's shared id renamed), and a top-up key goes with its column."""
    engine = create_engine(await make_database())
    insert_event = text(
        "INSERT INTO agent_cost_events (request_id, session_id, clerk_user_id, model,"
        " input_tokens, output_tokens, cost_microdollars, budget_day)"
        " VALUES (:r, :s, :u, 'm', 1, 1, :c, '2026-11-26')"
    )
    try:
        await upgrade(engine, "0008")
        async with engine.begin() as conn:
            for sid, user in (("s-a", "u-a"), ("s-b", "u-b")):
                await conn.execute(
                    text(
                        "INSERT INTO agent_sessions (id, job_id, clerk_user_id, tier, model_used,"
                        " status) VALUES (:id, 'j', :u, 'partner', 'm', 'working')"
                    ),
                    {"id": sid, "u": user},
                )
            await conn.execute(insert_event, {"r": "msg_1", "s": "s-a", "u": "u-a", "c": 10})
            await conn.execute(
                text(
                    "INSERT INTO budget_reservations (request_id, session_id, clerk_user_id,"
                    " budget_day, model, amount_microdollars, expires_at)"
                    " VALUES ('res_1', 's-a', 'u-a', '2026-11-26', 'm', 5, now())"
                )
            )
        await upgrade(engine, "0009")
        assert await _ledger(engine) == [("u-a", "msg_1", 10, "2026-11-26")]
        async with engine.begin() as conn:
            # The same id from another user is another call now; from the same user, not.
            await conn.execute(insert_event, {"r": "msg_1", "s": "s-b", "u": "u-b", "c": 20})
            with pytest.raises(Exception, match="uq_agent_cost_events_clerk_user_id_request_id"):
                async with conn.begin_nested():
                    await conn.execute(
                        insert_event, {"r": "msg_1", "s": "s-a", "u": "u-a", "c": 10}
                    )
            await conn.execute(
                text(
                    "INSERT INTO budget_reservations (request_id, session_id, clerk_user_id,"
                    " budget_day, model, amount_microdollars, expires_at)"
                    " VALUES ('res_1', 's-b', 'u-b', '2026-11-26', 'm', 7, now())"
                )
            )
            await conn.execute(
                text("INSERT INTO user_settings (clerk_user_id, tier) VALUES ('u-a', 'partner');")
            )
            await conn.execute(
                text(
                    "INSERT INTO budget_credits (clerk_user_id, amount_microdollars, budget_day,"
                    " bought_at, idempotency_key) VALUES ('u-a', 1, '2026-11-26', now(), 'k')"
                )
            )

        await downgrade(engine, "0008")
        # PostgreSQL's md5() of the user, as the downgrade names the shared id.
        tag = "#" + hashlib.md5(b"u-b", usedforsecurity=False).hexdigest()
        renamed = "msg_1" + tag
        assert await _ledger(engine) == [
            ("u-a", "msg_1", 10, "2026-11-26"),
            ("u-b", renamed, 20, "2026-11-26"),
        ]
        async with engine.connect() as conn:
            held = (
                await conn.execute(
                    text(
                        "SELECT clerk_user_id, request_id, amount_microdollars"
                        " FROM budget_reservations ORDER BY clerk_user_id"
                    )
                )
            ).all()
            credits = await conn.scalar(text("SELECT count(*) FROM budget_credits"))
        assert [tuple(r) for r in held] == [
            ("u-a", "res_1", 5),
            ("u-b", "res_1" + tag, 7),
        ]
        assert credits == 1

        await upgrade(engine)
        assert len(await _ledger(engine)) == 2
    finally:
        await engine.dispose()
