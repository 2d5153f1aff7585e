"""RedisSessionStore: the live session key in Redis, a cache in front of PostgreSQL.

PostgreSQL is the source of truth. A key that Redis lost is rebuilt from it, never
mistaken for a lost session. The 25 h TTL outlives an overnight sleep.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.domain import InvalidInput, SessionStoreUnavailable
from app.validation import require_int, require_text

if TYPE_CHECKING:
    from app.db.models import AgentSession

#: 25 hours: a key written before an overnight sleep is still there at the next wake.
SESSION_TTL: Final = 90_000
DEFAULT_PREFIX: Final = "agent:session"
DEFAULT_TIMEOUT: Final = 2.0

T = TypeVar("T")


class RedisSessionStore:
    """JSON snapshots of live sessions under ``{prefix}:{session_id}`` with a TTL."""

    def __init__(
        self,
        redis: Redis,
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

    def key(self, session_id: str) -> str:
        """The Redis key of a session. Every key this store touches starts with the prefix."""
        return f"{self.prefix}:{require_text(session_id, 'session_id')}"

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

    async def put(self, session_id: str, state: Mapping[str, Any]) -> None:
        """Store ``state`` as JSON with a fresh TTL (``SET .. EX``)."""
        key = self.key(session_id)
        try:
            data = orjson.dumps(dict(state))
        except (TypeError, orjson.JSONEncodeError) as exc:
            raise InvalidInput(
                f"session state is not JSON-serialisable: {exc}", field="state"
            ) from exc
        await self._call("SET", self.redis.set(key, data, ex=self.ttl_seconds))

    async def put_many(self, states: Mapping[str, Mapping[str, Any]]) -> None:
        """``put`` for many sessions in one round trip (a pipeline of ``SET .. EX``)."""
        if not states:
            return
        pipe = self.redis.pipeline(transaction=False)
        for session_id, state in states.items():
            try:
                data = orjson.dumps(dict(state))
            except (TypeError, orjson.JSONEncodeError) as exc:
                raise InvalidInput(
                    f"session state of {session_id!r} is not JSON-serialisable: {exc}",
                    field="state",
                ) from exc
            pipe.set(self.key(session_id), data, ex=self.ttl_seconds)
        await self._call("SET (pipeline)", pipe.execute())

    async def get(self, session_id: str, *, refresh: bool = True) -> dict[str, Any] | None:
        """The stored state, or None. ``refresh`` renews the TTL (``GETEX .. EX``)."""
        key = self.key(session_id)
        if refresh:
            raw = await self._call("GETEX", self.redis.getex(key, ex=self.ttl_seconds))
        else:
            raw = await self._call("GET", self.redis.get(key))
        if raw is None:
            return None
        value: dict[str, Any] = orjson.loads(raw)
        return value

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
