"""The order in which the test suite chooses its servers (DESIGN.md §9)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.servers import Plan, Source, choose_sources, plain_dsn


class DockerProbe:
    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.calls = 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.answer


def test_env_urls_win_and_docker_is_not_asked() -> None:
    probe = DockerProbe(True)
    env = {"TEST_DATABASE_URL": "postgresql://x/db", "TEST_REDIS_URL": "redis://x"}
    assert choose_sources(env, probe) == Plan(Source.ENV, Source.ENV)
    assert probe.calls == 0


@pytest.mark.parametrize(
    ("docker", "fallback"), [(True, Source.TESTCONTAINERS), (False, Source.EMBEDDED)]
)
def test_without_env_docker_decides(docker: bool, fallback: Source) -> None:
    probe = DockerProbe(docker)
    assert choose_sources({}, probe) == Plan(fallback, fallback)
    assert probe.calls == 1  # asked once, not once per server


def test_each_server_is_chosen_on_its_own() -> None:
    env = {"TEST_DATABASE_URL": "postgresql://x/db"}
    assert choose_sources(env, DockerProbe(False)) == Plan(Source.ENV, Source.EMBEDDED)
    env = {"TEST_REDIS_URL": "redis://x"}
    assert choose_sources(env, DockerProbe(True)) == Plan(Source.TESTCONTAINERS, Source.ENV)


def test_empty_variable_counts_as_unset() -> None:
    assert choose_sources({"TEST_DATABASE_URL": ""}, DockerProbe(False)).postgres is Source.EMBEDDED


def test_plain_dsn_drops_the_driver_and_keeps_the_password() -> None:
    dsn = plain_dsn("postgresql+asyncpg://u:secret@h:5433/db")
    assert dsn == "postgresql://u:secret@h:5433/db"


def test_docker_probe_says_no_when_nothing_listens(tmp_path: Path) -> None:
    from tests.servers import docker_available

    assert docker_available({"DOCKER_HOST": f"unix://{tmp_path}/missing.sock"}) is False
    assert docker_available({"DOCKER_HOST": "tcp://127.0.0.1:1"}) is False
    assert docker_available({"DOCKER_HOST": "ssh://somewhere"}) is False
