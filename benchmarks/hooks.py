"""The resume hook of ``benchmarks.resume``: a runner that takes 50 ms to pick a session up."""

from __future__ import annotations

import asyncio
import os

from app.lifecycle import RestoredSession


async def wait_50ms(restored: RestoredSession) -> None:
    await asyncio.sleep(0.05)
    with open(os.environ["BENCH_RESUME_LOG"], "a") as log:
        log.write(f"{restored.session.id} {restored.resume_token} {os.getpid()}\n")
