"""Servers the scale tests start themselves: a pgbouncer in transaction mode in front of
the test PostgreSQL, and a 3-master Redis Cluster, each on free loopback ports.

pgbouncer refuses to run as root, so both run as the unprivileged user of the
embedded servers (``app.local_services``), from a scratch directory it can read.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from sqlalchemy.engine import make_url

from app.local_services import _demoted, _open_path_for, _run_as, _wait_for_port

PGBOUNCER_CANDIDATES: Final = ("pgbouncer", "/usr/sbin/pgbouncer")
CLUSTER_MASTERS: Final = 3
_READY_TIMEOUT: Final = 60.0


class ServerUnavailable(RuntimeError):
    """A binary the test needs is not installed (the test is skipped with this reason)."""


def pgbouncer_binary() -> str:
    for candidate in PGBOUNCER_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    raise ServerUnavailable("pgbouncer is not installed (Debian: apt-get install pgbouncer)")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    for _ in range(200):
        port = random.randint(20_000, 45_000)
        if _bindable(port) and _bindable(port + 10_000):
            return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


def _share(directory: Path) -> None:
    """Let the unprivileged server user read and write ``directory``."""
    _open_path_for(directory)
    user = _run_as()
    if user is not None:
        for path in [directory, *directory.rglob("*")]:
            shutil.chown(path, user)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def with_host_port(url: str, port: int, *, host: str = "127.0.0.1") -> str:
    """``url`` pointed at another host and port (same user, password and database)."""
    return make_url(url).set(host=host, port=port).render_as_string(hide_password=False)


@contextlib.contextmanager
def pgbouncer(directory: Path, upstream_url: str) -> Iterator[int]:
    """Run pgbouncer (``pool_mode = transaction``) in front of ``upstream_url``'s server,
    for every database on it; yields its port. Clients are trusted, as the test
    server trusts its own."""
    binary = pgbouncer_binary()
    upstream = make_url(upstream_url)
    port = random.randint(20_000, 45_000)
    while not _bindable(port):
        port = random.randint(20_000, 45_000)
    user = upstream.username or "postgres"
    (directory / "userlist.txt").write_text(f'"{user}" ""\n')
    config = directory / "pgbouncer.ini"
    config.write_text(
        "\n".join(
            [
                "[databases]",
                f"* = host={upstream.host or '127.0.0.1'} port={upstream.port or 5432}",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {port}",
                "unix_socket_dir =",
                "auth_type = trust",
                f"auth_file = {directory / 'userlist.txt'}",
                "pool_mode = transaction",
                "max_client_conn = 1000",
                "default_pool_size = 20",
                "ignore_startup_parameters = extra_float_digits",
                "server_reset_query =",
                "",
            ]
        )
    )
    _share(directory)
    log = (directory / "pgbouncer.log").open("wb")
    proc = subprocess.Popen(
        [binary, str(config)], stdout=log, stderr=subprocess.STDOUT, **_demoted()
    )
    try:
        _wait_for_port(port, what="pgbouncer", proc=proc)
        yield port
    finally:
        _stop(proc)
        log.close()


def _cluster_ok(port: int) -> bool:
    out = subprocess.run(
        ["redis-cli", "-p", str(port), "cluster", "info"], capture_output=True, text=True
    ).stdout
    return "cluster_state:ok" in out


@contextlib.contextmanager
def redis_cluster(directory: Path, masters: int = CLUSTER_MASTERS) -> Iterator[list[int]]:
    """Run ``masters`` ``redis-server --cluster-enabled yes`` and join them with
    ``redis-cli --cluster create`` (no replicas); yields the ports once every node
    says ``cluster_state:ok``."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        raise ServerUnavailable("redis-server / redis-cli are not on PATH")
    ports: list[int] = []
    while len(ports) < masters:
        port = free_cluster_port()
        if port not in ports and port + 10_000 not in ports:
            ports.append(port)
    for port in ports:
        (directory / str(port)).mkdir()
    _share(directory)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            node_dir = directory / str(port)
            procs.append(
                subprocess.Popen(
                    [
                        "redis-server", "--port", str(port), "--bind", "127.0.0.1",
                        "--cluster-enabled", "yes",
                        "--cluster-config-file", str(node_dir / "nodes.conf"),
                        "--save", "", "--appendonly", "no", "--dir", str(node_dir),
                        "--logfile", str(node_dir / "redis.log"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    **_demoted(),
                )
            )  # fmt: skip
        for port, proc in zip(ports, procs, strict=True):
            _wait_for_port(port, what=f"redis-server (cluster node) on {port}", proc=proc)
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=_READY_TIMEOUT,
        )  # fmt: skip
        deadline = time.monotonic() + _READY_TIMEOUT
        while not all(_cluster_ok(p) for p in ports):
            if time.monotonic() > deadline:
                raise RuntimeError(f"Redis Cluster on {ports} did not reach cluster_state:ok")
            time.sleep(0.1)
        yield ports
    finally:
        for proc in procs:
            _stop(proc)
