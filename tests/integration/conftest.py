"""Integration tests share one migrated database; each test starts from empty tables."""

from __future__ import annotations

from typing import Final

import pytest

#: The repositories' tests run twice: straight to PostgreSQL and through a real
#: pgbouncer in transaction mode. The store's tests run on one Redis and on a cluster.
#: Not through pgbouncer: test_top_up (its worker LISTENs on the engine, which a
#: transaction-mode pooler cannot carry: test_pgbouncer covers the worker there) and
#: test_checkpoint_saves (its lock probe finds the blocked statement by its text in
#: pg_stat_activity, which shows an empty query for the waiting backend when the
#: statement came through pgbouncer; the save does wait on the lock, and every other
#: test of the module passes through pgbouncer).
THROUGH_PGBOUNCER: Final = {"test_sessions", "test_budget", "test_checkpoints", "test_resume"}
ON_A_CLUSTER: Final = {"test_session_store"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    module = metafunc.module.__name__.rpartition(".")[2]
    if module in THROUGH_PGBOUNCER and "db_route" in metafunc.fixturenames:
        metafunc.parametrize("db_route", ["direct", "pgbouncer"], indirect=True, scope="session")
    if module in ON_A_CLUSTER and "redis_route" in metafunc.fixturenames:
        metafunc.parametrize("redis_route", ["single", "cluster"], indirect=True, scope="session")


@pytest.fixture(autouse=True)
def _empty_tables(clean_tables: None) -> None:
    """Every test here leaves the shared database empty (see tests/fixtures.py)."""
