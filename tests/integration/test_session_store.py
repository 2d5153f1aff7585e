"""RedisSessionStore against a real Redis: TTL, refresh, prefix, and bounded failures."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis

from app.domain import InvalidInput, SessionStoreUnavailable
from app.session_store import SESSION_TTL, RedisSessionStore


def test_session_ttl_is_25_hours() -> None:
    assert SESSION_TTL == 90_000 == 25 * 3600


async def test_put_then_get_round_trips_with_a_25h_ttl(store: RedisSessionStore) -> None:
    state = {
        "status": "sleeping",
        "wake_at": "2031-01-02T00:00:00+00:00",
        "iteration": 7,
        "version": 3,
    }
    await store.put("s-1", state)
    assert await store.get("s-1") == state
    ttl = await store.ttl("s-1")
    assert ttl is not None
    assert SESSION_TTL - 2 <= ttl <= SESSION_TTL


async def test_get_renews_the_ttl_unless_told_not_to(
    store: RedisSessionStore, redis: Redis
) -> None:
    await store.put("s-1", {"status": "working", "version": 1})
    await redis.expire(store.key("s-1"), 100)
    assert await store.get("s-1", refresh=False) == {"status": "working", "version": 1}
    assert await store.ttl("s-1") <= 100  # type: ignore[operator]
    await store.get("s-1")
    ttl = await store.ttl("s-1")
    assert ttl is not None
    assert ttl >= SESSION_TTL - 2


async def test_touch_and_delete_say_whether_the_key_existed(store: RedisSessionStore) -> None:
    assert await store.touch("s-1") is False
    assert await store.delete("s-1") is False
    await store.put("s-1", {"status": "working", "version": 1})
    assert await store.touch("s-1") is True
    assert await store.delete("s-1") is True
    assert await store.get("s-1") is None
    assert await store.ttl("s-1") is None


async def test_expired_key_reads_as_missing(store: RedisSessionStore, redis: Redis) -> None:
    await store.put("s-1", {"status": "working", "version": 1})
    await redis.expire(store.key("s-1"), 0)
    assert await store.get("s-1") is None


async def test_keys_carry_the_prefix_and_nothing_else_is_touched(
    store: RedisSessionStore, redis: Redis, key_prefix: str
) -> None:
    neighbour = f"{key_prefix}-neighbour:s-1"
    await redis.set(neighbour, b"theirs")
    try:
        for sid in ("s-1", "*", "../s-1", "s-1:extra", "a b"):
            await store.put(sid, {"id": sid, "version": 0})
            assert store.key(sid) == f"{key_prefix}:{sid}"
        keys = {k.decode() async for k in redis.scan_iter(match=f"{key_prefix}*")}
        assert all(k.startswith(f"{key_prefix}:") for k in keys - {neighbour})
        for sid in ("s-1", "*", "../s-1", "s-1:extra", "a b"):
            assert await store.delete(sid)
        assert await redis.get(neighbour) == b"theirs"
    finally:
        await redis.delete(neighbour)


@pytest.mark.parametrize("session_id", ["", None, "x" * 256, "nul\x00"])
async def test_bad_session_ids_are_typed_errors(
    store: RedisSessionStore, session_id: object
) -> None:
    with pytest.raises(InvalidInput):
        await store.put(session_id, {"version": 1})  # type: ignore[arg-type]


async def test_unserialisable_state_is_refused(store: RedisSessionStore) -> None:
    with pytest.raises(InvalidInput):
        await store.put("s-1", {"when": object(), "version": 1})
    assert await store.get("s-1") is None


async def test_an_older_version_never_replaces_a_newer_one(store: RedisSessionStore) -> None:
    assert await store.put("s-1", {"status": "sleeping", "version": 5}) is True
    assert await store.put("s-1", {"status": "working", "version": 4}) is False
    assert await store.get("s-1") == {"status": "sleeping", "version": 5}
    # An equal version overwrites (the same row written again), a higher one too.
    assert await store.put("s-1", {"status": "sleeping", "note": "again", "version": 5})
    assert (await store.get("s-1")) == {"status": "sleeping", "note": "again", "version": 5}
    assert await store.put("s-1", {"status": "working", "version": 6})
    assert await store.version("s-1") == 6


async def test_put_many_is_guarded_key_by_key(store: RedisSessionStore) -> None:
    await store.put("a", {"version": 9})
    written = await store.put_many({"a": {"version": 8}, "b": {"version": 1}, "c": {"version": 2}})
    assert written == 2
    assert [await store.version(k) for k in ("a", "b", "c")] == [9, 1, 2]


async def test_racing_writers_converge_on_the_highest_version(store: RedisSessionStore) -> None:
    versions = list(range(40))
    random.Random(7).shuffle(versions)
    await asyncio.gather(*(store.put("s-1", {"version": v}) for v in versions))
    await asyncio.gather(
        *(store.put_many({f"m-{i}": {"version": v} for i in range(5)}) for v in versions)
    )
    assert await store.version("s-1") == 39
    assert {await store.version(f"m-{i}") for i in range(5)} == {39}


@pytest.mark.parametrize("version", [None, "7", -1, True, 1.5])
async def test_a_state_without_an_integer_version_is_refused(
    store: RedisSessionStore, version: object
) -> None:
    state = {"status": "working"} if version is None else {"status": "working", "version": version}
    with pytest.raises(InvalidInput, match="version"):
        await store.put("s-1", state)
    with pytest.raises(InvalidInput, match="version"):
        await store.put_many({"s-2": {"version": 1}, "s-1": state})
    assert await store.get("s-1") is None
    assert await store.get("s-2") is None


async def test_closed_port_raises_unavailable_quickly() -> None:
    client = Redis(host="127.0.0.1", port=1, socket_connect_timeout=30, socket_timeout=30)
    store = RedisSessionStore(client, prefix="unused")
    started = time.monotonic()
    with pytest.raises(SessionStoreUnavailable):
        await store.put("s-1", {"status": "working", "version": 1})
    assert time.monotonic() - started < 3
    await client.aclose()


@pytest.mark.parametrize(
    "session_id", ["~reconciled-through", "|reconciled-through", "reconciled-through", ":"]
)
async def test_no_session_id_reaches_a_name_the_store_keeps_for_itself(
    store: RedisSessionStore, redis: Redis, session_id: str
) -> None:
    """On one Redis and on a cluster: the watermark and a session named after it (or
    after its old key) live side by side, and neither reads the other."""
    moment = datetime(2026, 3, 10, 12, 0, 0, 123456, tzinfo=UTC)
    await store.set_reconciled_through(moment)
    assert await store.put(session_id, {"status": "working", "version": 2}) is True
    await store.set_reconciled_through(moment)
    assert await store.get(session_id) == {"status": "working", "version": 2}
    assert await store.reconciled_through() == moment
    assert store.key(session_id) != store.own_key("reconciled-through")


async def test_a_key_that_holds_no_snapshot_reads_as_missing_and_is_replaced(
    store: RedisSessionStore, redis: Redis
) -> None:
    # What an older version kept under a session's key: its watermark, an ISO string.
    await redis.set(store.key("~reconciled-through"), "2026-03-10T12:00:00+00:00")
    assert await store.get("~reconciled-through") is None
    assert await store.put("~reconciled-through", {"version": 0}) is True
    assert await store.get("~reconciled-through") == {"version": 0}


async def test_another_incarnation_replaces_any_version_and_discard_spares_newer_writes(
    store: RedisSessionStore,
) -> None:
    """On one Redis and on a cluster: versions order writes within one incarnation
    only; a new life of the id wins over whatever the old one left behind."""
    assert await store.put("s-1", {"incarnation": 100, "version": 50}) is True
    assert await store.put("s-1", {"incarnation": 100, "version": 49}) is False
    assert await store.put("s-1", {"incarnation": 200, "version": 0}) is True
    assert await store.put("s-1", {"incarnation": 200, "version": 1}) is True
    assert await store.put("s-1", {"version": 9}) is True  # none is an incarnation too
    assert await store.put("s-1", {"incarnation": 200, "version": 2}) is True
    # A stale key is removed only as it was read: never a newer one, nor a new life's.
    assert await store.discard("s-1", incarnation=100, version=50) is False
    assert await store.discard("s-1", incarnation=200, version=1) is False
    assert await store.version("s-1") == 2
    assert await store.discard("s-1", incarnation=200, version=2) is True
    assert await store.get("s-1") is None
    with pytest.raises(InvalidInput) as caught:
        await store.put("s-1", {"incarnation": "100", "version": 1})
    assert caught.value.field == "state.incarnation"


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """A TCP server on loopback that accepts connections and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def swallow(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield port
    for w in held:
        w.close()
    server.close()
    await server.wait_closed()


async def test_a_server_that_never_answers_raises_within_the_bound(silent_server: int) -> None:
    client = Redis(host="127.0.0.1", port=silent_server, socket_timeout=None)
    store = RedisSessionStore(client, prefix="unused", timeout=0.5)
    for call in (store.get("s-1"), store.put("s-1", {"version": 1}), store.ttl("s-1")):
        started = time.monotonic()
        with pytest.raises(SessionStoreUnavailable, match="longer than"):
            await call
        assert time.monotonic() - started < 1.5
    await client.aclose()
