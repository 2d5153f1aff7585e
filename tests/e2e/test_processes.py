"""The wake worker as real processes: shared work, SIGKILL, SIGTERM and LISTEN/NOTIFY."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.engine import create_session_factory
from app.repositories import SessionRepository
from tests.e2e import hooks
from tests.e2e.conftest import Proc, base_env, make_due_sleepers
from tests.integration.helpers import eventually

Spawn = Callable[..., Proc]


async def count_status(engine: AsyncEngine, status: str) -> int:
    async with engine.connect() as conn:
        n = await conn.scalar(
            text("SELECT count(*) FROM agent_sessions WHERE status = :s"), {"s": status}
        )
    return int(n or 0)


async def wait_until_woken(engine: AsyncEngine, n: int, within: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within:
        if await count_status(engine, "working") >= n:
            return time.monotonic() - started
        await asyncio.sleep(0.02)
    raise AssertionError(f"only {await count_status(engine, 'working')} of {n} woken")


def worker_env(
    db_url: str, redis_url: str, prefix: str, resume_log: Path, **extra: str
) -> dict[str, str]:
    return base_env(
        DATABASE_URL=db_url,
        REDIS_URL=redis_url,
        REDIS_PREFIX=prefix,
        E2E_RESUME_LOG=str(resume_log),
        **extra,
    )


def stop(proc: Proc, timeout: float = 10) -> int:
    proc.popen.send_signal(signal.SIGTERM)
    return proc.popen.wait(timeout)


async def test_two_workers_wake_a_thousand_sessions_exactly_once(
    e2e_db: tuple[str, AsyncEngine], redis_url: str, key_prefix: str, spawn: Spawn, tmp_path: Path
) -> None:
    url, engine = e2e_db
    resumes = tmp_path / "resumes.txt"
    env = worker_env(
        url, redis_url, key_prefix, resumes, WAKE_POLL_INTERVAL="0.2", E2E_RESUME_DELAY="0.001"
    )
    workers = [
        spawn(["worker", "--on-resume", "tests.e2e.hooks:record", "--batch-size", "50"], env)
        for _ in range(2)
    ]
    for worker in workers:  # both up and polling before there is any work to share
        worker.wait_for_output("listening channel=agent_wake")
    await make_due_sleepers(engine, 1_000)
    await wait_until_woken(engine, 1_000, within=90)
    assert [stop(w) for w in workers] == [0, 0]  # SIGTERM waits for running hooks
    done = hooks.lines(resumes, "done")
    per_session = Counter(sid for sid, _, _ in done)
    assert len(per_session) == 1_000
    assert max(per_session.values()) == 1, per_session.most_common(3)
    per_pid = Counter(pid for _, pid, _ in done)
    assert len(per_pid) == 2, f"both workers should share the work: {per_pid}"
    async with engine.connect() as conn:
        versions = (await conn.execute(text("SELECT DISTINCT version FROM agent_sessions"))).all()
    assert versions == [(2,)]


async def test_sigkill_mid_batch_then_restart_leaves_none_stuck(
    e2e_db: tuple[str, AsyncEngine], redis_url: str, key_prefix: str, spawn: Spawn, tmp_path: Path
) -> None:
    url, engine = e2e_db
    await make_due_sleepers(engine, 400)
    resumes = tmp_path / "resumes.txt"
    env = worker_env(
        url, redis_url, key_prefix, resumes,
        E2E_RESUME_DELAY="0.01", WAKE_POLL_INTERVAL="0.5", RESUME_LEASE_SECONDS="1",
    )  # fmt: skip
    first = spawn(["worker", "--on-resume", "tests.e2e.hooks:record", "--batch-size", "25"], env)
    deadline = time.monotonic() + 60
    while await count_status(engine, "working") < 50 and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    first.popen.send_signal(signal.SIGKILL)
    first.popen.wait(10)
    woken_at_kill = await count_status(engine, "working")
    assert 0 < woken_at_kill < 400, "the kill should land mid-run"

    second = spawn(["worker", "--on-resume", "tests.e2e.hooks:record"], env)
    await wait_until_woken(engine, 400, within=60)
    assert stop(second) == 0
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT status, version, wake_at IS NULL, count(*)"
                    " FROM agent_sessions GROUP BY 1, 2, 3"
                )
            )
        ).all()
    # One sleep and one wake each: nobody woken twice, nobody left asleep.
    assert rows == [("working", 2, True, 400)]
    # And every resume reached a hook that returned: those the killed worker held were
    # delivered again (after their lease) by the second one.
    async with engine.connect() as conn:
        owed = await conn.scalar(
            text("SELECT count(*) FROM agent_sessions WHERE resume_due_at IS NOT NULL")
        )
    assert owed == 0
    assert {sid for sid, _, _ in hooks.lines(resumes, "done")} == {
        f"e2e-{i:05d}" for i in range(1, 401)
    }


async def test_a_worker_killed_inside_its_hook_is_replaced_with_the_same_token(
    e2e_db: tuple[str, AsyncEngine], redis_url: str, key_prefix: str, spawn: Spawn, tmp_path: Path
) -> None:
    url, engine = e2e_db
    await make_due_sleepers(engine, 1)
    resumes = tmp_path / "resumes.txt"
    env = worker_env(url, redis_url, key_prefix, resumes, RESUME_LEASE_SECONDS="1")
    hook = ["--on-resume", "tests.e2e.hooks:record"]
    first = spawn(["worker", *hook], {**env, "E2E_RESUME_DELAY": "3600"})

    async def inside_the_hook() -> bool:
        return bool(hooks.lines(resumes, "start"))

    await eventually(inside_the_hook)
    first.popen.send_signal(signal.SIGKILL)
    first.popen.wait(10)
    second = spawn(["worker", *hook], env)

    async def delivered_again() -> bool:
        return bool(hooks.lines(resumes, "done"))

    await eventually(delivered_again)
    assert stop(second) == 0
    (killed,) = hooks.lines(resumes, "start")[:1]
    (done,) = hooks.lines(resumes, "done")
    assert done[0] == killed[0] == "e2e-00001"
    assert done[1] != killed[1]  # another process
    assert done[2] == killed[2]  # the same wake, so the same token


async def test_sigterm_exits_zero_within_the_poll_interval(
    e2e_db: tuple[str, AsyncEngine], redis_url: str, key_prefix: str, spawn: Spawn, tmp_path: Path
) -> None:
    url, _ = e2e_db
    env = worker_env(url, redis_url, key_prefix, tmp_path / "r.txt", WAKE_POLL_INTERVAL="5")
    for command in (["worker"], ["daemon"]):
        proc = spawn(command, {**env, "DAEMON_INTERVAL": "5"})
        proc.wait_for_output("started")
        await asyncio.sleep(0.5)
        began = time.monotonic()
        assert stop(proc, timeout=10) == 0, proc.text()[-2000:]
        assert time.monotonic() - began < 5
        assert "stopped" in proc.text()


async def test_top_up_wakes_within_a_second_despite_a_long_poll(
    e2e_db: tuple[str, AsyncEngine], redis_url: str, key_prefix: str, spawn: Spawn, tmp_path: Path
) -> None:
    url, engine = e2e_db
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO agent_sessions (id, job_id, clerk_user_id, tier, model_used,"
                " status, wake_at, version) VALUES ('topped', 'j', 'u', 'partner', 'm',"
                " 'sleeping', now() + interval '20 hours', 1)"
            )
        )
    env = worker_env(url, redis_url, key_prefix, tmp_path / "r.txt", WAKE_POLL_INTERVAL="30")
    worker = spawn(["worker", "--on-resume", "tests.e2e.hooks:record"], env)
    worker.wait_for_output("listening channel=agent_wake")
    await asyncio.sleep(0.3)  # past the first (empty) tick: now it waits on the 30 s poll
    factory = create_session_factory(engine)
    async with factory.begin() as s:
        assert await SessionRepository(s).request_wake(clerk_user_id="u") == 1
    took = await wait_until_woken(engine, 1, within=10)
    assert took < 1.0, f"woke after {took:.2f}s"
    assert stop(worker) == 0


async def test_the_top_up_command_wakes_a_sleeper_through_a_running_worker(
    e2e_db: tuple[str, AsyncEngine], redis_url: str, key_prefix: str, spawn: Spawn, tmp_path: Path
) -> None:
    """``python -m app top-up USER_ID AMOUNT_USD`` as a process: it books the credit and a
    worker whose poll is an hour away wakes the user's sleeper (only NOTIFY can)."""
    url, engine = e2e_db
    async with engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO user_settings (clerk_user_id, tier) VALUES ('payer', 'partner')")
        )
        await conn.execute(
            text(
                "INSERT INTO agent_sessions (id, job_id, clerk_user_id, tier, model_used,"
                " status, wake_at, version) VALUES ('paid', 'j', 'payer', 'partner', 'm',"
                " 'sleeping', '2999-01-01T00:00:00Z', 1)"
            )
        )
    env = worker_env(url, redis_url, key_prefix, tmp_path / "r.txt", WAKE_POLL_INTERVAL="3600")
    worker = spawn(["worker", "--on-resume", "tests.e2e.hooks:record"], env)
    worker.wait_for_output("listening channel=agent_wake")
    top_up = spawn(["top-up", "payer", "7.25"], env)
    assert await asyncio.to_thread(top_up.popen.wait, 60) == 0, top_up.text()
    assert "topped up payer by $7.25" in top_up.text()
    await wait_until_woken(engine, 1, within=30)
    async with engine.connect() as conn:
        credit = await conn.scalar(text("SELECT amount_microdollars FROM budget_credits"))
    assert credit == 7_250_000
    refused = spawn(["top-up", "payer", "-1"], env)
    assert await asyncio.to_thread(refused.popen.wait, 60) == 2
    assert "AMOUNT_USD must be positive" in refused.text()
    assert stop(worker) == 0


async def test_worker_refuses_to_start_without_urls(spawn: Spawn) -> None:
    proc = spawn(["worker"], base_env())
    assert proc.popen.wait(30) == 2
    assert "DATABASE_URL and REDIS_URL must be set" in proc.text()


async def test_bad_on_resume_path_is_a_usage_error(
    e2e_db: tuple[str, AsyncEngine], redis_url: str, spawn: Spawn
) -> None:
    url, _ = e2e_db
    proc = spawn(
        ["worker", "--on-resume", "no.such.module:fn"],
        base_env(DATABASE_URL=url, REDIS_URL=redis_url),
    )
    assert proc.popen.wait(30) == 2
    assert "cannot load --on-resume" in proc.text()


async def test_metrics_endpoint_serves_prometheus_text(
    e2e_db: tuple[str, AsyncEngine], redis_url: str, key_prefix: str, spawn: Spawn, tmp_path: Path
) -> None:
    import socket
    import urllib.request

    url, engine = e2e_db
    await make_due_sleepers(engine, 5)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = worker_env(url, redis_url, key_prefix, tmp_path / "r.txt", WAKE_POLL_INTERVAL="0.2")
    worker = spawn(["worker", "--metrics-port", str(port)], env)
    await wait_until_woken(engine, 5, within=30)
    body = ""

    async def counted() -> bool:
        # The rows commit before the process counts them: read until it has.
        nonlocal body
        body = await asyncio.to_thread(
            lambda: (
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
                .read()
                .decode()
            )
        )
        return (
            'agent_wakes_total{reason="due"} 5.0' in body
            and 'agent_resumes_total{outcome="acknowledged"} 5.0' in body
        )

    await eventually(counted, within=30)
    assert "agent_batch_duration_seconds_count" in body
    assert stop(worker) == 0
