"""RedisSessionStore: the live session key in Redis, a cache in front of PostgreSQL.

PostgreSQL is the source of truth. A key that Redis lost is rebuilt from it, never
mistaken for a lost session. The 25 h TTL outlives an overnight sleep.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.exceptions import RedisError

from app.domain import InvalidInput, SessionStoreUnavailable
from app.incarnation import incarnation
from app.validation import require_aware, require_int, require_text, stored_id

if TYPE_CHECKING:
    from app.db.models import AgentSession

#: 25 hours: a key written before an overnight sleep is still there at the next wake.
SESSION_TTL: Final = 90_000
DEFAULT_PREFIX: Final = "agent:session"
DEFAULT_TIMEOUT: Final = 2.0

T = TypeVar("T")

#: A single server or a Redis Cluster: the store sends one key per command, so every
#: command it sends runs on a cluster.
RedisClient = Redis | RedisCluster
CLUSTER_SCHEMES: Final = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://host:port``)."""
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


def connect_redis(url: str, *, cluster: bool = False) -> RedisClient:
    """A client for ``url``: a ``RedisCluster`` when ``cluster`` or the URL says so
    (``redis+cluster://`` or ``rediss+cluster://``, any node of the cluster)."""
    require_text(url, "redis_url")
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise InvalidInput(f"not a Redis URL: {url!r}", field="redis_url")
    if scheme.lower() in CLUSTER_SCHEMES:
        return RedisCluster.from_url(f"{CLUSTER_SCHEMES[scheme.lower()]}://{rest}")
    if scheme.lower() not in ("redis", "rediss", "unix"):
        raise InvalidInput(
            f"unsupported Redis URL scheme {scheme!r}: use redis://, rediss:// or redis+cluster://",
            field="redis_url",
        )
    if cluster:
        return RedisCluster.from_url(url)
    return Redis.from_url(url)


# KEYS[1]: the key; ARGV: the JSON snapshot, its version, the TTL, its incarnation ("" for
# none). Within one incarnation the stored snapshot is replaced unless its version is
# higher, so writes that arrive out of order never move a key backwards. A snapshot of
# another incarnation (an erased session whose id is used again) is always replaced,
# whatever its version; so is a value that is not a snapshot.
_PUT_IF_NOT_OLDER: Final = """
local current = redis.call('GET', KEYS[1])
if current then
    local ok, stored = pcall(cjson.decode, current)
    if ok and type(stored) == 'table'
        and tonumber(stored['incarnation']) == tonumber(ARGV[4]) then
        local stored_version = tonumber(stored['version'])
        if stored_version and stored_version > tonumber(ARGV[2]) then
            return 0
        end
    end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
return 1
"""

# KEYS[1]: the key; ARGV: an incarnation ("" for none) and a version. Deletes the key
# only if it holds that incarnation at that version or an older one (or no snapshot at
# all): a newer write, or a new session under the same id, is never removed.
_DELETE_IF_NOT_NEWER: Final = """
local current = redis.call('GET', KEYS[1])
if not current then
    return 0
end
local ok, stored = pcall(cjson.decode, current)
if ok and type(stored) == 'table' then
    if tonumber(stored['incarnation']) ~= tonumber(ARGV[1]) then
        return 0
    end
    local stored_version = tonumber(stored['version'])
    if stored_version and stored_version > tonumber(ARGV[2]) then
        return 0
    end
end
return redis.call('DEL', KEYS[1])
"""


class RedisSessionStore:
    """JSON snapshots of live sessions under ``{prefix}:{session_id}`` with a TTL.

    Every write is ordered by the snapshot's ``version`` (the session row's) within its
    ``incarnation`` (the row's, see :mod:`app.incarnation`), so the mirror converges on
    PostgreSQL whatever order processes write in, and a new session under an erased
    one's id replaces whatever key the erasure left behind.
    """

    def __init__(
        self,
        redis: RedisClient,
        *,
        ttl_seconds: int = SESSION_TTL,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.redis = redis
        self.ttl_seconds = require_int(ttl_seconds, "ttl_seconds", minimum=1)
        self.prefix = require_text(prefix, "prefix")
        if not timeout > 0:
            raise InvalidInput(f"timeout must be positive, got {timeout}", field="timeout")
        self.timeout = timeout
        self.cluster = isinstance(redis, RedisCluster)
        self._put_script = redis.register_script(_PUT_IF_NOT_OLDER)
        self._discard_script = redis.register_script(_DELETE_IF_NOT_NEWER)

    def key(self, session_id: str) -> str:
        """The Redis key of a session. Every key this store touches starts with the prefix.
        Any stored id has one (Redis keys are binary-safe): the id rule is checked where
        ids enter, and a session row from before it is still mirrored."""
        return f"{self.prefix}:{stored_id(session_id, 'session_id')}"

    async def _call(self, what: str, awaitable: Awaitable[T]) -> T:
        # The bound holds whatever the client's own socket timeouts and retries are.
        try:
            async with asyncio.timeout(self.timeout):
                return await awaitable
        except TimeoutError as exc:
            raise SessionStoreUnavailable(
                f"Redis {what} took longer than {self.timeout:g}s"
            ) from exc
        except (RedisError, OSError) as exc:
            raise SessionStoreUnavailable(f"Redis {what} failed: {exc}") from exc

    def _encode(self, session_id: str, state: Mapping[str, Any]) -> tuple[bytes, int, int | str]:
        version = state.get("version")
        if type(version) is not int or version < 0:
            raise InvalidInput(
                f"session state of {session_id!r} needs an integer 'version' >= 0, got"
                f" {version!r}: writes are ordered by it",
                field="state.version",
            )
        life = state.get("incarnation")
        if life is not None and (type(life) is not int or life < 0):
            raise InvalidInput(
                f"session state of {session_id!r} has 'incarnation' {life!r}: an integer"
                " >= 0, or none",
                field="state.incarnation",
            )
        try:
            return orjson.dumps(dict(state)), version, "" if life is None else life
        except (TypeError, orjson.JSONEncodeError) as exc:
            raise InvalidInput(
                f"session state of {session_id!r} is not JSON-serialisable: {exc}",
                field="state",
            ) from exc

    async def put(self, session_id: str, state: Mapping[str, Any]) -> bool:
        """Store ``state`` as JSON with a fresh TTL, unless the stored snapshot is of the
        same ``incarnation`` (none counts as one) and has a higher ``version`` (one round
        trip: a script runs the check and the ``SET .. EX``).

        Returns False when a newer snapshot was kept. An equal version overwrites.
        """
        key = self.key(session_id)
        data, version, life = self._encode(session_id, state)
        written = await self._call(
            "SET (versioned)",
            self._put_script(keys=[key], args=[data, version, self.ttl_seconds, life]),
        )
        return bool(written)

    async def discard(self, session_id: str, *, incarnation: int | None, version: int) -> bool:
        """Remove the key if it holds ``incarnation`` at ``version`` or older (or no
        snapshot at all); a newer write, or another incarnation's, stays. True if removed."""
        require_int(version, "version")
        life = "" if incarnation is None else require_int(incarnation, "incarnation")
        key = self.key(session_id)
        removed = await self._call(
            "DEL (versioned)", self._discard_script(keys=[key], args=[life, version])
        )
        return bool(removed)

    async def put_many(self, states: Mapping[str, Mapping[str, Any]]) -> int:
        """``put`` for many sessions in one round trip (a pipeline of the same script, one
        key per call). Returns how many were written.

        On a cluster the pipeline is split by node (redis-py groups its commands by
        slot owner) and each call carries the script itself (``EVAL``): a node that
        never saw the script, after a failover say, cannot answer NOSCRIPT."""
        if not states:
            return 0
        encoded = [(self.key(sid), *self._encode(sid, state)) for sid, state in states.items()]

        async def queue(pipe: Pipeline | ClusterPipeline) -> None:
            for key, data, version, life in encoded:
                args: list[bytes | int | str] = [data, version, self.ttl_seconds, life]
                if isinstance(pipe, Pipeline):
                    await self._put_script(keys=[key], args=args, client=pipe)
                else:
                    pipe.eval(_PUT_IF_NOT_OLDER, 1, key, *args)

        results = await self._pipeline("SET (versioned pipeline)", queue)
        return sum(1 for written in results if written)

    async def _pipeline(
        self, what: str, queue: Callable[[Pipeline | ClusterPipeline], Awaitable[None]]
    ) -> list[Any]:
        """Queue commands on a non-transactional pipeline and run it within the bound.
        The pipeline is always reset, so a failure or a timeout (a script load that
        could not connect, say) never leaves it holding a connection."""

        async def run() -> list[Any]:
            async with self.redis.pipeline(transaction=False) as pipe:
                await queue(pipe)
                return list(await pipe.execute())

        return await self._call(what, run())

    async def version(self, session_id: str) -> int | None:
        """The ``version`` of the stored snapshot (no TTL refresh), or None without one."""
        stored = await self.get(session_id, refresh=False)
        return None if stored is None else int(stored["version"])

    async def get(self, session_id: str, *, refresh: bool = True) -> dict[str, Any] | None:
        """The stored state, or None (also for a value that is not a JSON object).
        ``refresh`` renews the TTL (``GETEX .. EX``)."""
        key = self.key(session_id)
        if refresh:
            raw = await self._call("GETEX", self.redis.getex(key, ex=self.ttl_seconds))
        else:
            raw = await self._call("GET", self.redis.get(key))
        if raw is None:
            return None
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            value = None
        # Not a snapshot (a name an older version kept under a session's key, say): no
        # key, so it is rebuilt from PostgreSQL; the guard replaces it on the next write.
        return value if isinstance(value, dict) else None

    async def delete_many(self, session_ids: Collection[str]) -> int:
        """Remove the keys of these sessions (one round trip, one key per command);
        returns how many existed."""
        if not session_ids:
            return 0
        keys = [self.key(session_id) for session_id in session_ids]

        async def queue(pipe: Pipeline | ClusterPipeline) -> None:
            for key in keys:
                pipe.delete(key)

        return sum(await self._pipeline("DEL (pipeline)", queue))

    async def count_existing(self, session_ids: Collection[str]) -> int:
        """How many of these sessions have a key (``EXISTS``, one key per command)."""
        if not session_ids:
            return 0
        keys = [self.key(session_id) for session_id in session_ids]

        async def queue(pipe: Pipeline | ClusterPipeline) -> None:
            for key in keys:
                pipe.exists(key)

        return sum(await self._pipeline("EXISTS (pipeline)", queue))

    def own_key(self, name: str) -> str:
        """A name the store keeps for itself: ``{prefix}|{name}``. Every session key is
        ``{prefix}:{id}``, so no session id, whatever it is, can reach one (DESIGN.md
        §6c); on a cluster each is one key like any other, in its own slot."""
        return f"{self.prefix}|{name}"

    @property
    def _reconciled_key(self) -> str:
        return self.own_key("reconciled-through")

    async def reconciled_through(self) -> datetime | None:
        """How far the mirror was reconciled from PostgreSQL (None: never, or Redis lost
        it, which also lost the keys it vouched for)."""
        raw = await self._call("GET", self.redis.get(self._reconciled_key))
        if raw is None:
            return None
        return datetime.fromisoformat(raw if isinstance(raw, str) else raw.decode())

    async def set_reconciled_through(self, moment: datetime) -> None:
        """Record how far the mirror was reconciled (see :meth:`reconciled_through`)."""
        require_aware(moment, "moment")
        await self._call("SET", self.redis.set(self._reconciled_key, moment.isoformat()))

    async def touch(self, session_id: str) -> bool:
        """Renew the TTL; False when the key does not exist."""
        return bool(
            await self._call("EXPIRE", self.redis.expire(self.key(session_id), self.ttl_seconds))
        )

    async def delete(self, session_id: str) -> bool:
        """Remove the key; False when it did not exist."""
        return bool(await self._call("DEL", self.redis.delete(self.key(session_id))))

    async def ttl(self, session_id: str) -> int | None:
        """Seconds left, or None when the key is missing or never expires."""
        left = int(await self._call("TTL", self.redis.ttl(self.key(session_id))))
        return left if left >= 0 else None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


class CheckpointMeta(Protocol):
    """What a snapshot needs of a checkpoint (an ``AgentCheckpoint`` or a ``CheckpointInfo``)."""

    @property
    def iteration_number(self) -> int: ...
    @property
    def current_phase(self) -> str | None: ...
    @property
    def sandbox_id(self) -> str | None: ...


def session_snapshot(
    session: AgentSession, checkpoint: CheckpointMeta | None = None
) -> dict[str, Any]:
    """What the store holds for a session: the row and the latest checkpoint's metadata.

    Never the message history: that lives in PostgreSQL only.
    """
    snapshot: dict[str, Any] = {
        "session_id": session.id,
        "job_id": session.job_id,
        "clerk_user_id": session.clerk_user_id,
        "status": session.status,
        "tier": session.tier,
        "model": session.model_used,
        "wake_at": _iso(session.wake_at),
        "cumulative_cost_microdollars": session.cumulative_cost_microdollars,
        "daily_budget_microdollars": session.daily_budget_microdollars,
        "version": session.version,
        "incarnation": incarnation(session),
        "last_checkpoint_at": _iso(session.last_checkpoint_at),
        "iteration": None,
        "phase": None,
        "sandbox_id": None,
    }
    if checkpoint is not None:
        snapshot.update(
            iteration=checkpoint.iteration_number,
            phase=checkpoint.current_phase,
            sandbox_id=checkpoint.sandbox_id,
        )
    return snapshot
