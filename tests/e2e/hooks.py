"""Resume hooks for the process tests: one line when a delivery starts and one when it is
done, each with the session, the process and the resume token."""

from __future__ import annotations

import os
import time

from app.lifecycle import RestoredSession


def _log(event: str, restored: RestoredSession) -> None:
    with open(os.environ["E2E_RESUME_LOG"], "a") as log:
        log.write(f"{event} {restored.session.id} {os.getpid()} {restored.resume_token}\n")


def record(restored: RestoredSession) -> None:
    _log("start", restored)
    delay = float(os.environ.get("E2E_RESUME_DELAY", "0"))
    if delay:
        time.sleep(delay)  # a slow agent runner: widens the window for a SIGKILL
    _log("done", restored)


def lines(path: os.PathLike[str], event: str) -> list[tuple[str, str, str]]:
    """(session, pid, token) of every ``event`` line written so far."""
    if not os.path.exists(path):
        return []
    with open(path) as log:
        rows = [line.split() for line in log]
    return [(sid, pid, token) for what, sid, pid, token in rows if what == event]
