"""A real HTTP receiver for webhook tests: ``http.server`` on a loopback port chosen at
runtime, in a thread. It verifies every signature, records every request, and fails
now and then on purpose: a 500, or a connection closed without an answer."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from app.webhooks import ID_HEADER, verify


@dataclass
class Received:
    """One request as the receiver saw it."""

    event_id: str
    header_id: str
    signature_valid: bool
    headers: dict[str, str]
    body: dict[str, Any]
    answered: int  # the status sent back; 0 when the connection was dropped
    raw: bytes = b""  # the body's bytes, as signed


@dataclass
class WebhookServer:
    """Fails request number n with a 500 when ``n % fail_every == 0`` and drops the
    connection when ``n % drop_every == 0`` (0 turns either off)."""

    def release(self) -> None:
        """Answer the held requests, and hold no more."""
        self.hold_after = None
        self._released.set()

    secret: str
    fail_every: int = 3
    drop_every: int = 7
    #: Requests after this many are held (no answer) until ``release()``: a test can
    #: kill the sender while deliveries are in flight, whatever the machine's speed.
    hold_after: int | None = None
    holding: int = 0
    _released: threading.Event = field(default_factory=threading.Event)
    received: list[Received] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _count: int = 0
    _httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._httpd is not None
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/hooks"

    def delivered_ids(self) -> set[str]:
        """Event ids answered with a 2xx and a valid signature."""
        with self._lock:
            return {r.event_id for r in self.received if r.answered == 204 and r.signature_valid}

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def start(self) -> WebhookServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {name: value for name, value in self.headers.items()}
                valid = verify(server.secret, headers, body, now=time.time())
                with server._lock:
                    server._count += 1
                    n = server._count
                    hold = server.hold_after is not None and n > server.hold_after
                    server.holding += hold
                if hold:
                    server._released.wait(120)
                drop = server.drop_every and n % server.drop_every == 0
                fail = server.fail_every and n % server.fail_every == 0
                status = 0 if drop else 500 if fail else 204
                parsed = json.loads(body)
                with server._lock:
                    server.received.append(
                        Received(
                            parsed["id"],
                            self.headers.get(ID_HEADER, ""),
                            valid,
                            headers,
                            parsed,
                            status,
                            body,
                        )
                    )
                if drop:
                    self.close_connection = True
                    self.connection.close()
                    return
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
