"""How the test suite finds its PostgreSQL and Redis (DESIGN.md §9).

For each server, in order: the ``TEST_*_URL`` variable, then a testcontainers
container when a Docker daemon answers, then the embedded servers of
``app.local_services``.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

from sqlalchemy.engine import make_url

POSTGRES_IMAGE: Final = "postgres:15.10-bookworm"
REDIS_IMAGE: Final = "redis:7.4.1-bookworm"


class Source(StrEnum):
    ENV = "env"
    TESTCONTAINERS = "testcontainers"
    EMBEDDED = "embedded"


@dataclass(frozen=True)
class Plan:
    postgres: Source
    redis: Source


def choose_sources(env: Mapping[str, str], docker_available: Callable[[], bool]) -> Plan:
    """Pick where each server comes from; Docker is only asked when a variable is missing."""
    docker: bool | None = None

    def pick(var: str) -> Source:
        nonlocal docker
        if env.get(var):
            return Source.ENV
        if docker is None:
            docker = docker_available()
        return Source.TESTCONTAINERS if docker else Source.EMBEDDED

    return Plan(postgres=pick("TEST_DATABASE_URL"), redis=pick("TEST_REDIS_URL"))


def docker_available(env: Mapping[str, str] | None = None) -> bool:
    """Whether a Docker daemon answers ``GET /_ping`` within two seconds."""
    env = os.environ if env is None else env
    host = env.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        if host.startswith("unix://"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: Any = host.removeprefix("unix://")
        elif host.startswith("tcp://"):
            name, _, port = host.removeprefix("tcp://").rpartition(":")
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            address = (name, int(port))
        else:
            return False
        with sock:
            sock.settimeout(2)
            sock.connect(address)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return b"OK" in sock.recv(1024)
    except (OSError, ValueError):
        return False


def plain_dsn(url: str) -> str:
    """A libpq-style DSN (no SQLAlchemy driver suffix), as asyncpg.connect wants it."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextlib.contextmanager
def provide_servers(env: Mapping[str, str] | None = None) -> Iterator[tuple[str, str]]:
    """Yield ``(postgres admin URL, redis URL)`` following :func:`choose_sources`."""
    env = os.environ if env is None else env
    plan = choose_sources(env, docker_available)
    with contextlib.ExitStack() as stack:
        db_url = env.get("TEST_DATABASE_URL", "")
        redis_url = env.get("TEST_REDIS_URL", "")
        if plan.postgres is Source.TESTCONTAINERS:
            from testcontainers.community.postgres import PostgresContainer

            pg = stack.enter_context(PostgresContainer(POSTGRES_IMAGE, driver="asyncpg"))
            db_url = pg.get_connection_url()
        if plan.redis is Source.TESTCONTAINERS:
            from testcontainers.community.redis import RedisContainer

            rc = stack.enter_context(RedisContainer(REDIS_IMAGE))
            redis_url = f"redis://{rc.get_container_host_ip()}:{rc.get_exposed_port(6379)}/0"
        if Source.EMBEDDED in (plan.postgres, plan.redis):
            from app.local_services import local_services

            root = Path(env.get("TEST_LOCAL_ROOT", ".local/test"))
            services = stack.enter_context(
                local_services(db_url or None, redis_url or None, root=root)
            )
            db_url, redis_url = services.database_url, services.redis_url
        yield db_url, redis_url
