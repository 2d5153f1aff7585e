"""Database and Redis URLs: what is accepted, what it configures, and typed errors."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from app.db.engine import mask_password, normalize_url, pooler_connect_args
from app.domain import InvalidInput
from app.session_store import connect_redis


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:p@h:5432/db",
        "postgresql+asyncpg://u:p@h:5432/db",
        "postgres://u:p@h:5432/db",
    ],
)
def test_postgres_urls_normalise_to_asyncpg(url: str) -> None:
    parsed = normalize_url(url)
    assert parsed.drivername == "postgresql+asyncpg"
    assert (parsed.host, parsed.port, parsed.database, parsed.password) == ("h", 5432, "db", "p")


@pytest.mark.parametrize("url", ["mysql://u@h/db", "sqlite:///x.db", "not a url"])
def test_other_urls_are_rejected(url: str) -> None:
    with pytest.raises(InvalidInput) as info:
        normalize_url(url)
    assert info.value.field == "url"


def test_passwords_are_masked() -> None:
    masked = mask_password("postgresql://admin:hunter2@db.internal:5432/prod")
    assert "hunter2" not in masked
    assert "admin:***@db.internal" in masked


def test_pgbouncer_turns_off_statement_caches_and_names_statements_uniquely() -> None:
    args = pooler_connect_args("pgbouncer")
    assert args["statement_cache_size"] == 0
    assert args["prepared_statement_cache_size"] == 0
    names = {args["prepared_statement_name_func"]() for _ in range(100)}
    assert len(names) == 100
    assert pooler_connect_args("none") == {}


def test_an_unknown_pooler_is_a_typed_error() -> None:
    with pytest.raises(InvalidInput) as info:
        pooler_connect_args("pgpool")  # type: ignore[arg-type]
    assert info.value.field == "pooler"


@pytest.mark.parametrize(
    ("url", "cluster", "expected"),
    [
        ("redis://h:6379/0", False, Redis),
        ("redis://h:6379", True, RedisCluster),
        ("redis+cluster://h:7000", False, RedisCluster),
        ("rediss+cluster://h:7000", False, RedisCluster),
    ],
)
def test_redis_urls_choose_the_client(url: str, cluster: bool, expected: type) -> None:
    # Building a client opens no connection.
    assert isinstance(connect_redis(url, cluster=cluster), expected)


@pytest.mark.parametrize("url", ["", "h:6379", "memcached://h:11211"])
def test_bad_redis_urls_are_typed_errors(url: str) -> None:
    with pytest.raises(InvalidInput) as info:
        connect_redis(url)
    assert info.value.field == "redis_url"
