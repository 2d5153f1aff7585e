"""CLI errors for people: a closed port, an empty database, a refused login or a bad
setting each give one line that says what is wrong, where (password masked) and what
to do, and a non-zero exit code; the traceback only with ``--debug``."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator

import pytest
from sqlalchemy.engine import make_url

from app.db.engine import create_engine
from app.db.migrate import head, upgrade
from tests.e2e.conftest import ROOT, Proc, base_env

PASSWORD = "s3cret-pw"


def run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        env=base_env(**env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound, never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    found = lines(done)
    assert len(found) == 1, found
    assert "Traceback" not in found[0]
    assert PASSWORD not in found[0]
    return found[0]


@pytest.mark.parametrize("command", [["status"], ["migrate"]])
def test_a_closed_port_is_one_line_naming_the_server_and_the_fix(
    closed_port: int, redis_url: str, command: list[str]
) -> None:
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{closed_port}/agents"
    done = run(command, DATABASE_URL=url, REDIS_URL=redis_url)
    assert done.returncode == 1
    line = one_line(done)
    assert line.startswith("error: cannot reach PostgreSQL")
    assert f"postgresql://postgres:***@127.0.0.1:{closed_port}/agents" in line
    assert "connection refused" in line
    assert "fix DATABASE_URL" in line


def test_debug_adds_the_traceback(closed_port: int, redis_url: str) -> None:
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{closed_port}/agents"
    done = run(["--debug", "status"], DATABASE_URL=url, REDIS_URL=redis_url)
    assert done.returncode == 1
    assert "Traceback" in done.stderr
    assert "ConnectionRefusedError" in done.stderr
    assert done.stderr.rstrip().splitlines()[-1].startswith("error: cannot reach PostgreSQL")


async def test_status_on_an_empty_database_says_to_migrate(
    make_database: Callable[[], Awaitable[str]], redis_url: str
) -> None:
    url = await make_database()
    done = run(["status"], DATABASE_URL=url, REDIS_URL=redis_url)
    assert done.returncode == 1
    line = one_line(done)
    assert "has no schema (never migrated)" in line
    assert line.endswith("run `python -m app migrate`")
    assert f"/{make_url(url).database}" in line


async def test_a_database_behind_the_code_says_to_migrate(
    make_database: Callable[[], Awaitable[str]], redis_url: str
) -> None:
    url = await make_database()
    engine = create_engine(url)
    try:
        await upgrade(engine, "0005")
    finally:
        await engine.dispose()
    for command in (["status"], ["sessions", "list"]):
        done = await asyncio.to_thread(run, command, DATABASE_URL=url, REDIS_URL=redis_url)
        assert done.returncode == 1
        line = one_line(done)
        assert f"is at revision 0005, behind this code's {head()}" in line
        assert line.endswith("run `python -m app migrate`")


async def test_a_refused_login_names_the_user(
    make_database: Callable[[], Awaitable[str]], redis_url: str
) -> None:
    url = make_url(await make_database()).set(username="nobody_here", password=PASSWORD)
    done = run(
        ["status"], DATABASE_URL=url.render_as_string(hide_password=False), REDIS_URL=redis_url
    )
    assert done.returncode == 1
    line = one_line(done)
    assert "refused the login of user 'nobody_here'" in line
    assert "fix the user or password in DATABASE_URL" in line


def test_missing_and_bad_settings_are_usage_errors() -> None:
    done = run(["status"])
    assert done.returncode == 2
    assert "DATABASE_URL and REDIS_URL must be set" in one_line(done)
    done = run(["migrate"])
    assert done.returncode == 2
    assert "DATABASE_URL is not set" in one_line(done)
    done = run(["events"], DATABASE_URL="postgresql://x/y", REDIS_URL="redis://x")
    assert done.returncode == 2
    assert "WEBHOOK_URL is not set" in one_line(done)
    done = run(
        ["daemon"],
        DATABASE_URL="postgresql://x/y",
        REDIS_URL="redis://x",
        WEBHOOK_URL="http://127.0.0.1:9/hooks",
    )
    assert done.returncode == 2
    assert "WEBHOOK_SECRET is not" in one_line(done)
    done = run(["status"], BATCH_SIZE="many")
    assert done.returncode == 2
    assert one_line(done).startswith("error: BATCH_SIZE is invalid")


async def test_worker_says_once_that_the_schema_is_behind_and_keeps_trying(
    make_database: Callable[[], Awaitable[str]],
    redis_url: str,
    spawn: Callable[..., Proc],
) -> None:
    url = await make_database()
    proc = spawn(["worker"], base_env(DATABASE_URL=url, REDIS_URL=redis_url))
    proc.wait_for_output("worker_error")
    proc.wait_for_output("retry_in")
    text: str = proc.text()
    assert text.count("schema_behind") == 1
    assert "run `python -m app migrate`" in text
    assert proc.popen.poll() is None
