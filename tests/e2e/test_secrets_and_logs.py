"""What processes print (DESIGN.md §6c): no secret of the settings, whether in a URL's
userinfo, a ``?password=`` or a webhook's query token, in any output or log record,
httpx's included; and one log record is one line, whatever a value holds."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from app.cli import print_sessions
from app.db.engine import create_session_factory
from app.domain import EventType
from app.lifecycle import emit
from app.repositories import NewEvent
from tests.e2e.conftest import base_env, run_app
from tests.integration.helpers import eventually
from tests.webhook_server import WebhookServer

DB_PASSWORD = "pg-query-secret-71"
USERINFO_PASSWORD = "pg-userinfo-secret-72"
REDIS_PASSWORD = "redis-secret-73"
HOOK_PASSWORD = "hook-userinfo-secret-74"
HOOK_TOKEN = "hook-query-token-75"
HOOK_SECRET = "whsec-signing-secret-76"
SECRETS = (DB_PASSWORD, USERINFO_PASSWORD, REDIS_PASSWORD, HOOK_PASSWORD, HOOK_TOKEN, HOOK_SECRET)


def with_redis_password(redis_url: str) -> str:
    # Redis's default user has no password, and then AUTH default <anything> succeeds.
    return redis_url.replace("redis://", f"redis://default:{REDIS_PASSWORD}@", 1)


def leaked(output: str) -> list[str]:
    return [secret for secret in SECRETS if secret in output]


async def test_status_masks_a_password_given_as_a_query_parameter(
    database_url: str, redis_url: str
) -> None:
    # Trust authentication ignores passwords, so the command really connects.
    url = make_url(database_url).update_query_dict({"password": DB_PASSWORD})
    done = await run_app(
        base_env(
            DATABASE_URL=url.render_as_string(hide_password=False),
            REDIS_URL=with_redis_password(redis_url),
            LOG_LEVEL="DEBUG",
        ),
        "status",
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "sessions  working=" in output
    assert "password=***" in output
    assert leaked(output) == []


async def test_errors_mask_every_password_of_the_urls(redis_url: str) -> None:
    with socket.socket() as sock:  # a port that refuses connections
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        url = f"postgresql://postgres:{USERINFO_PASSWORD}@127.0.0.1:{port}/x?password={DB_PASSWORD}"
        env = base_env(DATABASE_URL=url, REDIS_URL=with_redis_password(redis_url))
        refused = await run_app(env, "status")
        traced = await run_app(env, "--debug", "status")
    for done in (refused, traced):
        output = done.stdout + done.stderr
        assert done.returncode == 1, output
        assert "cannot reach PostgreSQL at postgresql://postgres:***@127.0.0.1" in output
        assert leaked(output) == []


async def test_the_event_deliverer_logs_no_webhook_credential(
    e2e_db: tuple[str, AsyncEngine], redis_url: str, spawn: Callable[..., Any]
) -> None:
    url, engine = e2e_db
    factory = create_session_factory(engine)
    async with factory.begin() as s:
        await emit(s, *(NewEvent(EventType.TOPPED_UP, f"k-{i}", {"n": i}) for i in range(4)))
    # Every other answer a 500, so that failures are logged too.
    server = WebhookServer(HOOK_SECRET, fail_every=2, drop_every=0).start()
    hook = server.url.replace("http://", f"http://hooks:{HOOK_PASSWORD}@", 1)
    try:
        proc = spawn(
            ["events"],
            base_env(
                DATABASE_URL=url,
                REDIS_URL=with_redis_password(redis_url),
                WEBHOOK_URL=f"{hook}?token={HOOK_TOKEN}",
                WEBHOOK_SECRET=HOOK_SECRET,
                WEBHOOK_BACKOFF_BASE_SECONDS="0.05",
                EVENTS_POLL_INTERVAL="0.1",
                LOG_LEVEL="DEBUG",
            ),
        )

        async def all_delivered() -> bool:
            return len(server.delivered_ids()) == 4

        await eventually(all_delivered)
        proc.popen.terminate()
        assert proc.popen.wait(30) == 0
    finally:
        server.stop()
    output = proc.text()
    assert "webhook_failed" in output
    assert "events started url=http://hooks:***@127.0.0.1" in output
    assert leaked(output) == []


FORGED = "2026-12-02 13:00:00,000 CRITICAL app forged_record"


async def test_a_newline_in_a_session_id_cannot_forge_a_log_line(
    e2e_db: tuple[str, AsyncEngine], redis_url: str, key_prefix: str, spawn: Callable[..., Any]
) -> None:
    url, engine = e2e_db
    # Written past every check, as an old row or another tool could have: the log is the
    # last line of defence, so it must hold whatever the value.
    evil = f"s-1\n{FORGED}\r\x1b[2K\u2028x"
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO agent_sessions (id, job_id, clerk_user_id, tier, model_used,"
                " status, wake_at, version) VALUES (:id, 'job', 'u-1', 'partner',"
                " 'claude-sonnet-4-20250514', 'sleeping', now() - interval '1 minute', 1)"
            ),
            {"id": evil},
        )
    proc = spawn(
        ["worker"],
        base_env(
            DATABASE_URL=url,
            REDIS_URL=redis_url,
            REDIS_PREFIX=key_prefix,
            WAKE_POLL_INTERVAL="0.1",
        ),
    )
    proc.wait_for_output("resume session=")
    proc.popen.terminate()
    assert proc.popen.wait(30) == 0
    output = proc.text()
    record = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")
    lines = output.split("\n")
    assert not any(line.startswith(FORGED) for line in lines)
    assert "resume session=s-1\\n" + FORGED + "\\r\\x1b[2K\\u2028x" in output
    # Every line is a record of its own, or the indented continuation of a traceback.
    assert all(record.match(line) or line.startswith("    ") for line in lines if line), lines


def test_a_newline_in_a_listed_session_id_cannot_forge_a_table_row(
    capsys: pytest.CaptureFixture[str],
) -> None:
    row = {"id": "s-1\nforged-row  working", "status": "working", "version": 1}
    print_sessions([{**row, "resume": None, "resume_attempts": 0, "last_seen_at": None}])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2  # the header and the one row
    assert lines[1].startswith("s-1\\nforged-row  working")
