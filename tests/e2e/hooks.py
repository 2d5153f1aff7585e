"""A resume hook for the process tests: one line per resumed session, per process."""

from __future__ import annotations

import os
import time

from app.lifecycle import RestoredSession


def record(restored: RestoredSession) -> None:
    delay = float(os.environ.get("E2E_RESUME_DELAY", "0"))
    if delay:
        time.sleep(delay)  # a slow agent runner: widens the window for a SIGKILL
    with open(os.environ["E2E_RESUME_LOG"], "a") as log:
        log.write(f"{restored.session.id} {os.getpid()}\n")
