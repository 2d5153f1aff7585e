"""Real processes: ``python -m app ...`` as subprocesses against the run's servers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

ROOT = Path(__file__).resolve().parents[2]


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL"))}
    env.update({"PYTHONUNBUFFERED": "1", "LOG_LEVEL": "INFO"})
    env.update(extra)
    return env


async def run_app(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m app *args`` to completion (60 s at most), its output captured."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "app", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _default_sigint() -> None:
    # A shell runs a background job with SIGINT ignored, and children inherit that: then
    # Python never turns Ctrl-C into KeyboardInterrupt. A terminal's Ctrl-C reaches a
    # program with the default disposition, so that is what the child gets.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Proc:
    """A ``python -m app`` child whose output goes to a file we can read while it runs."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT) -> None:
        self.log = log
        self._out = log.open("wb")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "app", *args],
            env=env,
            cwd=cwd,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_default_sigint,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_output(self, needle: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.text():
                return
            if self.popen.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not seen; output:\n{self.text()[-3000:]}")

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()
        self._out.close()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    procs: list[Proc] = []

    def start(args: list[str], env: dict[str, str], *, cwd: Path = ROOT) -> Proc:
        proc = Proc(args, env, tmp_path / f"proc-{len(procs)}.log", cwd)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.close()


async def make_due_sleepers(engine: AsyncEngine, n: int, prefix: str = "e2e") -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO agent_sessions"
                " (id, job_id, clerk_user_id, tier, model_used, status, wake_at, version)"
                " SELECT :p || '-' || lpad(g::text, 5, '0'), 'job', 'user-' || (g % 50),"
                " 'partner', 'claude-sonnet-4-20250514', 'sleeping',"
                " now() - interval '1 minute', 1"
                " FROM generate_series(1, :n) AS g"
            ),
            {"p": prefix, "n": n},
        )
