"""The store and the processes on a real 3-master Redis Cluster: writes that span slots
(and so nodes), the version guard on each node, a wake and a reconciliation pass.

test_session_store.py runs whole on this cluster too (tests/integration/conftest.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio.cluster import RedisCluster

from app.lifecycle import RestoredSession, Runtime, start_session
from app.repositories import SessionRepository
from app.session_store import RedisSessionStore, connect_redis
from app.settings import Settings
from app.workers import BudgetDaemon, WakeWorker
from tests.integration.helpers import Factory, later


@pytest.fixture
async def cluster(redis_cluster_url: str) -> AsyncIterator[RedisCluster]:
    client = connect_redis(redis_cluster_url)
    assert isinstance(client, RedisCluster)
    await client.initialize()  # learn the slot map, for get_node_from_key
    yield client
    await client.aclose()


@pytest.fixture
async def cluster_store(cluster: RedisCluster, key_prefix: str) -> AsyncIterator[RedisSessionStore]:
    store = RedisSessionStore(cluster, prefix=key_prefix)
    yield store
    async for key in cluster.scan_iter(match=f"{key_prefix}:*", count=500):
        await cluster.delete(key)
    await cluster.delete(store.own_key("reconciled-through"))


def _nodes_of(cluster: RedisCluster, keys: list[str]) -> set[str]:
    nodes = [cluster.get_node_from_key(key) for key in keys]
    return {node.name for node in nodes if node is not None}


async def test_put_many_spans_every_master_and_guards_each_key(
    cluster_store: RedisSessionStore, cluster: RedisCluster
) -> None:
    ids = [f"s-{i}" for i in range(60)]
    assert len(_nodes_of(cluster, [cluster_store.key(i) for i in ids])) == 3
    assert await cluster_store.put_many({i: {"version": 5, "n": i} for i in ids}) == 60
    # An older batch is refused key by key, on every node; a newer one goes through.
    assert await cluster_store.put_many({i: {"version": 4} for i in ids}) == 0
    newer = {i: {"version": 6} for i in ids[::2]}
    assert await cluster_store.put_many(newer) == 30
    versions = [await cluster_store.version(i) for i in ids]
    assert versions == [6 if n % 2 == 0 else 5 for n in range(60)]
    assert await cluster_store.delete_many(ids) == 60
    assert [await cluster_store.get(i) for i in ids] == [None] * 60


async def test_put_many_reaches_a_node_that_never_loaded_the_script(
    cluster_store: RedisSessionStore, cluster: RedisCluster
) -> None:
    """A flushed script cache (a restarted or promoted node) costs nothing: the
    single put reloads it, the pipeline carries it."""
    await cluster_store.put("s-1", {"version": 1})
    await cluster.script_flush()  # on every primary
    assert await cluster_store.put_many({f"s-{i}": {"version": 2} for i in range(20)}) == 20
    await cluster.script_flush()  # on every primary
    assert await cluster_store.put("s-1", {"version": 3}) is True
    assert await cluster_store.version("s-1") == 3


async def test_a_worker_wakes_sessions_and_writes_their_keys_on_the_cluster(
    session_factory: Factory, cluster_store: RedisSessionStore, cluster: RedisCluster
) -> None:
    settings = Settings(_env_file=None)
    rt = Runtime(session_factory, cluster_store, settings)
    ids = [f"s-{i}" for i in range(12)]
    for sid in ids:
        await start_session(rt, session_id=sid, job_id="j", clerk_user_id="u-1", tier="partner")
        async with session_factory.begin() as s:
            await SessionRepository(s).transition(
                sid, "sleeping", expected="working", wake_at=later(-60)
            )
    resumed: list[str] = []

    def hook(restored: RestoredSession) -> None:
        resumed.append(restored.session.id)

    report = await WakeWorker(session_factory, cluster_store, settings, on_resume=hook).run_once()
    assert (report.woken, report.store_errors) == (12, 0)
    assert sorted(resumed) == sorted(ids)
    assert len(_nodes_of(cluster, [cluster_store.key(i) for i in ids])) > 1
    for sid in ids:
        state = await cluster_store.get(sid)
        assert state is not None
        assert state["status"] == "working"


async def test_the_daemon_rebuilds_keys_lost_on_the_cluster(
    session_factory: Factory, cluster_store: RedisSessionStore, cluster: RedisCluster
) -> None:
    settings = Settings(_env_file=None)
    rt = Runtime(session_factory, cluster_store, settings)
    ids = [f"s-{i}" for i in range(30)]
    for sid in ids:
        await start_session(rt, session_id=sid, job_id="j", clerk_user_id="u-1", tier="partner")
    # The cluster loses everything (every node flushed): the daemon's pass rewrites it.
    await cluster.flushall(target_nodes=RedisCluster.PRIMARIES)
    report = await BudgetDaemon(session_factory, cluster_store, settings).run_once()
    assert report.reconciled >= 30
    states = [await cluster_store.get(sid) for sid in ids]
    assert all(state is not None and state["status"] == "working" for state in states)
    ttls = [await cluster_store.ttl(sid) for sid in ids]
    assert all(ttl is not None and ttl > 24 * 3600 for ttl in ttls)
