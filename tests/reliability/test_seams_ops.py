"""Outside input never holds a helper (DESIGN.md §6c): ``WEBHOOK_TIMEOUT_SECONDS`` is
one deadline for a whole delivery attempt, connect to last byte, against a real receiver
on loopback that trickles its answer one byte at a time."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import func, select

from app.db.models import AgentEvent
from app.domain import EventType
from app.lifecycle import emit
from app.repositories import NewEvent
from app.session_store import RedisSessionStore
from app.settings import Settings
from app.workers.events import EventDeliverer
from tests.integration.helpers import Factory, eventually

SECRET = "whsec-trickle"
TIMEOUT = 1.0
#: The slow answer: this many bytes, one every TRICKLE_GAP seconds (each read is well
#: inside the timeout, the whole answer 5x beyond it).
TRICKLE_BYTES = 10
TRICKLE_GAP = 0.5


@dataclass
class TricklingReceiver:
    """Answers every event at once with a 204, except the first attempt at ``slow``:
    that one gets a 200 whose body comes one byte every ``TRICKLE_GAP`` seconds."""

    slow: str
    attempts: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._httpd is not None
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/hooks"

    def start(self) -> TricklingReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                key = body["data"]["key"]
                with receiver._lock:
                    receiver.attempts[key] = receiver.attempts.get(key, 0) + 1
                    first = receiver.attempts[key] == 1
                if key != receiver.slow or not first:
                    self.send_response(204)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(TRICKLE_BYTES))
                self.end_headers()
                try:
                    for _ in range(TRICKLE_BYTES):
                        self.wfile.write(b".")
                        self.wfile.flush()
                        time.sleep(TRICKLE_GAP)
                except OSError:
                    pass  # the deliverer gave up: what the test wants

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()


@pytest.fixture
def receiver() -> Iterator[TricklingReceiver]:
    server = TricklingReceiver(slow="k-slow").start()
    yield server
    server.stop()


async def delivered(factory: Factory) -> dict[str, bool]:
    async with factory() as s:
        rows = (await s.scalars(select(AgentEvent))).all()
    return {row.payload["key"]: row.delivered_at is not None for row in rows}


async def test_a_trickling_receiver_fails_the_attempt_at_the_deadline_and_holds_up_no_other(
    session_factory: Factory, store: RedisSessionStore, receiver: TricklingReceiver
) -> None:
    settings = Settings(
        _env_file=None,
        webhook_url=receiver.url,
        webhook_secret=SECRET,
        webhook_timeout_seconds=TIMEOUT,
        webhook_backoff_base_seconds=0.05,
        webhook_backoff_max_seconds=0.1,
        webhook_batch_size=20,
    )
    keys = ["k-slow", *(f"k-{i}" for i in range(5))]
    async with session_factory.begin() as s:
        await emit(s, *(NewEvent(EventType.TOPPED_UP, key, {"key": key}) for key in keys))
    deliverer = EventDeliverer(session_factory, store, settings)

    # The events are due on the database's clock before the pass starts, and nobody has
    # claimed them yet (a pass that finds nothing due would end before any delivery).
    async def all_due() -> bool:
        async with session_factory() as s:
            due = await s.scalar(
                select(func.count()).where(
                    AgentEvent.delivered_at.is_(None),
                    AgentEvent.attempts == 0,
                    AgentEvent.next_attempt_at <= func.now(),
                )
            )
        return due == len(keys)

    await eventually(all_due)
    started = time.monotonic()
    attempt = asyncio.create_task(deliverer.run_once())
    # The other events of the same batch are recorded delivered while the slow answer
    # is still trickling, not when it ends.
    while not all(v for k, v in (await delivered(session_factory)).items() if k != "k-slow"):
        assert not attempt.done(), "the batch ended before the fast events were recorded"
        await asyncio.sleep(0.02)
    others_recorded = time.monotonic() - started
    report = await attempt
    elapsed = time.monotonic() - started

    assert others_recorded < TIMEOUT
    assert (report.delivered, report.failed) == (5, 1)
    # One deadline for the whole attempt: the receiver would have taken 5 s.
    assert elapsed < TIMEOUT + 1.0
    async with session_factory() as s:
        [slow] = [e for e in await s.scalars(select(AgentEvent)) if e.payload["key"] == "k-slow"]
    assert slow.delivered_at is None
    assert slow.attempts == 1
    assert "WEBHOOK_TIMEOUT_SECONDS" in (slow.last_error or "")

    # And it is retried: the receiver answers the second attempt at once.
    async def all_delivered() -> bool:
        await deliverer.run_once()
        return all((await delivered(session_factory)).values())

    await eventually(all_delivered)
    assert receiver.attempts["k-slow"] == 2
