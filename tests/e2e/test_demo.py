"""``python -m app demo`` (what ``make run`` runs): embedded servers, configured servers,
Ctrl-C, and a self-check that catches a fault."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.e2e.conftest import Proc, base_env

Spawn = Callable[..., Proc]
SMALL = ["demo", "--sessions", "4", "--days", "2"]


def leftover_servers(root: Path) -> list[str]:
    """Command lines of live processes that belong to embedded servers under ``root``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if str(root) in cmdline and ") Z " not in stat:
            found.append(f"{pid}: {cmdline}")
    return found


def test_demo_on_embedded_servers_runs_twice(spawn: Spawn, server_dir: Path) -> None:
    for attempt in (1, 2):
        proc = spawn(SMALL, base_env(), cwd=server_dir)
        code = proc.popen.wait(180)
        out = proc.text()
        assert code == 0, out[-3000:]
        assert "embedded PostgreSQL at" in out, f"run {attempt}"
        assert "demo passed: every check held" in out
        assert "sleeps" in out
        assert "wakes" in out
    assert leftover_servers(server_dir) == []


async def test_demo_on_configured_servers_starts_nothing(
    e2e_db: tuple[str, AsyncEngine], redis_url: str, key_prefix: str, spawn: Spawn, server_dir: Path
) -> None:
    url, _ = e2e_db
    env = base_env(DATABASE_URL=url, REDIS_URL=redis_url, REDIS_PREFIX=key_prefix)
    proc = spawn(SMALL, env, cwd=server_dir)
    assert proc.popen.wait(180) == 0, proc.text()[-3000:]
    out = proc.text()
    assert "embedded" not in out
    assert not (server_dir / ".local" / "postgres").exists()
    assert not (server_dir / ".local" / "redis").exists()
    # The screen: where the log went, one progress line per simulated day (not a
    # terminal), then the table; the log lines are in the file, none on the screen.
    lines = out.splitlines()
    assert lines[0].startswith("demo log: .local/demo-")
    log_file = server_dir / lines[0].split()[2]
    assert "INFO app." in log_file.read_text()
    progress = [i for i, line in enumerate(lines) if line.startswith("[")]
    assert [lines[i].split()[2] for i in progress] == ["1/2", "2/2"]
    table = next(i for i, line in enumerate(lines) if line.startswith("day "))
    between = [line for line in lines[progress[0] : table] if line.strip()]
    assert all(line.startswith("[") for line in between), between
    assert not any(" INFO " in line or " WARNING " in line for line in lines)


async def test_demo_json_writes_the_summary_for_scripts(
    e2e_db: tuple[str, AsyncEngine], redis_url: str, key_prefix: str, server_dir: Path
) -> None:
    url, _ = e2e_db
    env = base_env(DATABASE_URL=url, REDIS_URL=redis_url, REDIS_PREFIX=key_prefix)
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "app", *SMALL, "--json"],
        env=env,
        cwd=server_dir,
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["passed"] is True
    assert summary["sessions"] == 4
    assert summary["days"] == 2
    assert summary["sleeps"] > 0
    assert summary["by_day_and_tier"]
    assert {"day", "tier", "spent_microdollars", "budget_microdollars"} <= set(
        summary["by_day_and_tier"][0]
    )
    assert "demo passed" in done.stderr


def test_ctrl_c_leaves_no_server_behind(spawn: Spawn, server_dir: Path) -> None:
    proc = spawn(["demo", "--days", "5"], base_env(), cwd=server_dir)
    proc.wait_for_output("simulated days", timeout=120)
    assert leftover_servers(server_dir), "the embedded servers should be running mid-demo"
    os.killpg(proc.popen.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    code = proc.popen.wait(60)
    assert code != 0
    assert leftover_servers(server_dir) == []


@pytest.mark.parametrize("fault", ["history"])
async def test_a_broken_promise_exits_1_and_names_the_session(
    e2e_db: tuple[str, AsyncEngine],
    redis_url: str,
    key_prefix: str,
    spawn: Spawn,
    server_dir: Path,
    fault: str,
) -> None:
    url, _ = e2e_db
    env = base_env(DATABASE_URL=url, REDIS_URL=redis_url, REDIS_PREFIX=key_prefix)
    proc = spawn([*SMALL, "--inject-fault", fault], env, cwd=server_dir)
    assert proc.popen.wait(180) == 1, proc.text()[-3000:]
    out = proc.text()
    assert "BREACH session demo-" in out
    assert "restored history differs from the history at sleep" in out
    assert "demo FAILED" in out
