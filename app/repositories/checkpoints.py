"""CheckpointRepository: incremental (keyframe + delta) storage of resumable agent state.

An agent saves a checkpoint after every iteration. Storing the whole history in every
row makes storage and write time grow with the square of the session's length, so a
row stores only the messages its parent did not have (a *delta*), with a full copy (a
*keyframe*) when the history was rewritten and every ``keyframe_every`` saves. Loads
fetch a keyframe and its deltas in one recursive query and hand back the full history:
callers never see a delta (DESIGN.md §4).

A save that extends the history this process saved last for the session (the
``checkpoint_cache`` tip) checks, encodes, hashes and sends only the new messages, in
one guarded statement; everything else takes the full path (read the neighbours,
compare digests, upsert). Retention runs on counters, never on iteration numbers.

This module is the I/O; the statements are in ``checkpoint_sql`` and the payload
checks and encoding in ``checkpoint_codec``.
"""

from __future__ import annotations

import builtins
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import orjson
from sqlalchemy import CursorResult, Executable
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm.instrumentation import manager_of_class

from app.db.models import AgentCheckpoint
from app.domain import CheckpointNotFound, SessionNotFound, StaleRunner
from app.repositories import checkpoint_sql as sql
from app.repositories.checkpoint_cache import SHARED, HistoryCache, SessionTip
from app.repositories.checkpoint_codec import (
    EncodedHistory,
    Payload,
    copy_messages,
    digest,
    encode_history,
    encode_messages,
    extend_state,
    finish,
    history_list,
    new_state,
)
from app.repositories.checkpoint_codec import rebuild as rebuild_history
from app.repositories.checkpoint_sql import MetaRow
from app.repositories.errors import translate_errors, translated
from app.repositories.sql import core_connection
from app.validation import INT_MAX, require_int, require_text, stored_id

#: Retention runs at most once every this many saves on the append path (it costs a
#: statement), unless keep_last or keyframe_every is smaller.
MIN_PRUNE_EVERY: Final = 16


def retention_trigger(keep_last: int, keyframe_every: int) -> tuple[int, int]:
    """``(prune_every, row_cap)`` for a repository's settings (see ``_should_prune``)."""
    prune_every = min(keyframe_every, max(keep_last, MIN_PRUNE_EVERY))
    return prune_every, min(keep_last + keyframe_every + prune_every, INT_MAX - 1)


@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    """A restorable checkpoint's metadata, without the message bodies."""

    session_id: str
    iteration_number: int
    agent_state: str
    current_phase: str | None
    sandbox_id: str | None
    message_count: int
    keyframe: bool
    session_cost_microdollars: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class _Plan:
    """A save planned from the session's cached tip, written in one statement.

    Either a delta of the new messages on the tip, or a keyframe (the history does not
    extend the tip, or the chain is as long as ``keyframe_every`` allows).
    """

    tip: SessionTip
    history: str  # the JSON array text to store
    base: int  # 0 for a keyframe
    depth: int
    state: Any
    digest: bytes
    copies: list[dict[str, Any]]  # the new tip's messages, or only the new ones
    appended: bool  # copies extend the tip's (else they are the whole history)
    from_chain: bool = False  # a keyframe the database builds from the tip's chain


_NEW_CHECKPOINT: Final = manager_of_class(AgentCheckpoint).new_instance
# The columns of META, named as the checkpoint's attributes.
_FIELDS: Final = tuple(column.name for column in sql.META)


def _checkpoint(row: MetaRow, history: list[Any]) -> AgentCheckpoint:
    """The checkpoint of a row of ``META`` columns, holding the full history."""
    columns = row._mapping
    values = {name: columns[name] for name in _FIELDS}
    values["retry_counts"] = dict(row.retry_counts)
    return _transient(values, history)


def _transient(values: dict[str, Any], history: list[Any]) -> AgentCheckpoint:
    """A transient (never added to a session) checkpoint of these column values.

    Built as SQLAlchemy builds a loaded object, by filling the instance's dict: the
    dataclass ``__init__`` would send each of the 18 fields through attribute
    instrumentation, ten times slower, to record changes nobody will flush.
    """
    cp = _NEW_CHECKPOINT()
    cp.__dict__.update(values)
    cp.__dict__["message_history"] = history
    return cp


def _rebuild_chain(session_id: str, rows: Sequence[MetaRow]) -> tuple[MetaRow, list[Any]]:
    """Keyframe first, then deltas: the target row and its full history."""
    if rows[0].base_message_count != 0:  # the chain is broken: its keyframe is gone
        raise CheckpointNotFound(session_id, rows[-1].iteration_number)
    loads = orjson.loads
    history = rebuild_history(
        loads(rows[0].message_history),
        ((r.base_message_count, loads(r.message_history)) for r in rows[1:]),
    )
    return rows[-1], history


@translated
class CheckpointRepository:
    """Checkpoints of agent sessions. Never commits: the caller owns the transaction."""

    def __init__(
        self,
        session: AsyncSession,
        *,
        keep_last: int = 5,
        keyframe_every: int = 50,
        cache: HistoryCache | None = None,
    ) -> None:
        self.session = session
        self.keep_last = require_int(keep_last, "keep_last", minimum=1, maximum=INT_MAX)
        self.keyframe_every = require_int(
            keyframe_every, "keyframe_every", minimum=1, maximum=INT_MAX
        )
        #: The process-wide tips of recently saved sessions (``checkpoint_cache``).
        self.cache = SHARED if cache is None else cache
        # Retention runs at least once every this many deltas added on top, and when
        # a keyframe leaves more than row_cap rows (see _should_prune).
        self.prune_every, self.row_cap = retention_trigger(self.keep_last, self.keyframe_every)

    async def _execute(self, statement: Executable, params: Mapping[str, Any]) -> CursorResult[Any]:
        """Run a Core statement on the session's connection, in its transaction."""
        return await (await core_connection(self.session)).execute(statement, params)

    async def _read(self, statement: Any, params: dict[str, Any]) -> builtins.list[MetaRow]:
        """The rows of a read-only statement.

        Inside the caller's transaction (or with ORM changes pending) it runs there and
        sees what the transaction wrote. Otherwise it runs on a pooled connection in
        autocommit mode: one round trip, where the session's own connection would add
        ``BEGIN`` and ``ROLLBACK``, and the session stays without a transaction, as it
        was. A single statement reads one snapshot either way.
        """
        session, engine = self.session, self.session.bind
        if (
            not isinstance(engine, AsyncEngine)
            or session.in_transaction()
            or session.new
            or session.dirty
            or session.deleted
        ):
            return list((await self._execute(statement, params)).all())
        async with engine.connect() as connection:
            autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
            return list((await autocommit.execute(statement, params)).all())

    # ------------------------------------------------------------------- save

    async def save(
        self, checkpoint: AgentCheckpoint, *, resume_token: str | None = None
    ) -> AgentCheckpoint:
        """Store ``checkpoint`` (its full history) and return the stored checkpoint.

        A runner passes the ``resume_token`` it was delivered: once the session has
        been delivered to another runner, the save raises ``StaleRunner`` and writes
        nothing (fencing, DESIGN.md §8).

        The same ``(session_id, iteration_number)`` saved twice leaves one row with
        the latest content; identical content is a no-op. The session's
        ``last_checkpoint_at`` moves in the same transaction, and retention runs
        often enough that the rows kept stay bounded.
        Everything is validated before any SQL: a bad payload writes nothing.

        A history that extends the one this process last saved for the session costs
        O(new messages) to check, encode, hash and send, in one statement (see
        ``checkpoint_cache``); anything else takes the full path. Telling it apart
        compares the earlier messages with this process's copy of them, so that an
        old message edited in place is stored too; :meth:`append` skips that
        comparison when the caller vouches for the prefix.
        """
        return await self._save(checkpoint, resume_token, appended=None)

    async def append(
        self,
        checkpoint: AgentCheckpoint,
        *,
        new_messages: int,
        resume_token: str | None = None,
    ) -> AgentCheckpoint:
        """:meth:`save`, for a caller that only appended to the history it saved last.

        ``new_messages`` is how many messages at the end of ``checkpoint``'s history
        are new since this process last saved the session; the caller vouches that
        every message before them is, unchanged, what it saved then. When this
        process's cache holds that save and the database still has it as the
        session's newest checkpoint, the earlier messages are not even read: the
        save's client work is O(new messages) however long the history is. An edit
        made in place to an earlier message is then not stored (the caller said
        there was none); use :meth:`save` after editing. In every other case (no
        cache entry, another count, another writer in between) it is exactly
        :meth:`save`. The stored checkpoint is returned.
        """
        count = len(history_list(checkpoint.message_history))
        appended = require_int(new_messages, "new_messages", maximum=count)
        return await self._save(checkpoint, resume_token, appended=appended)

    async def _save(
        self, checkpoint: AgentCheckpoint, resume_token: str | None, *, appended: int | None
    ) -> AgentCheckpoint:
        p = Payload.of(checkpoint)
        if resume_token is not None:
            require_text(resume_token, "resume_token")
        token = {"p_token": resume_token}
        encoded: EncodedHistory | None = None
        plan: _Plan | None = None
        tip = self.cache.get(p.session_id)
        if tip is not None and p.iteration_number > tip.iteration:
            vouched = appended is not None and len(p.messages) - appended == tip.count
            if tip.count and (vouched or tip.prefix_matches(p.messages)):
                plan = self._plan_append(p, tip)
            else:
                encoded = encode_history(p.messages)
                plan = self._plan_keyframe(tip, encoded)
        else:
            encoded = encode_history(p.messages)
        with translate_errors(session_id=p.session_id):
            if plan is not None:
                written = await self._write(p, plan, resume_token)
                if written is not None:
                    return written
                # Another writer moved the session on since this process saved it, or
                # the token is stale: the full path below tells which.
                self.cache.discard(p.session_id)
            key = {"p_session_id": p.session_id, "p_iteration": p.iteration_number}
            connection = await core_connection(self.session)
            if await connection.scalar(sql.TOUCH_SESSION, key | token) is None:
                if await connection.scalar(sql.SESSION_EXISTS, key) is None:
                    raise SessionNotFound(p.session_id)
                raise StaleRunner(p.session_id, resume_token)
            if encoded is None:
                encoded = encode_history(p.messages)
            row = await self._save_full(p, encoded)
        return _checkpoint(row, p.messages)

    def _plan_append(self, p: Payload, tip: SessionTip) -> _Plan:
        """Check, encode and hash only the messages after the tip's."""
        copies = copy_messages(p.messages, tip.count)
        tail = encode_messages(p.messages, tip.count)
        state = extend_state(tip.state, tip.count, tail)
        chain_full = tip.depth + 1 >= self.keyframe_every
        base, depth = (0, 0) if chain_full else (tip.count, tip.depth + 1)
        # A full chain ends with a keyframe that the database assembles from the chain
        # and these messages: still only the new messages travel.
        return _Plan(
            tip, tail.decode(), base, depth, state, finish(state), copies, True, chain_full
        )

    @staticmethod
    def _plan_keyframe(tip: SessionTip, encoded: EncodedHistory) -> _Plan:
        """A history that does not extend the tip: a keyframe, with no read first."""
        state = new_state(encoded.body)
        return _Plan(
            tip, encoded.body.decode(), 0, 0, state, finish(state), encoded.copies, appended=False
        )

    async def _write(
        self, p: Payload, plan: _Plan, resume_token: str | None = None
    ) -> AgentCheckpoint | None:
        """The one-statement save of a plan; None when it no longer holds (or the token
        is stale: nothing is written then either)."""
        tip = plan.tip
        params = p.params() | {
            "p_token": resume_token,
            "p_history": plan.history,
            "p_base": plan.base,
            "p_parent": tip.iteration if plan.base else None,
            "p_depth": plan.depth,
            "p_digest": plan.digest,
            "p_tip": tip.iteration,
            "p_tip_digest": tip.digest,
            "p_tip_count": tip.count,
            "p_cap": self.row_cap,
        }
        conn = await core_connection(self.session)
        if plan.from_chain:
            if await conn.scalar(sql.TOUCH_SESSION, params) is None:
                return None  # the full path raises SessionNotFound
            params["p_retry_counts"] = orjson.dumps(p.retry_counts).decode()
            row = (await conn.execute(sql.CHAIN_KEYFRAME, params)).one_or_none()
        else:
            row = (await conn.execute(sql.WRITE, params)).one_or_none()
        if row is None:
            return None
        if plan.appended:
            new_tip = tip.extended(
                iteration=p.iteration_number,
                tail=plan.copies,
                digest=plan.digest,
                depth=plan.depth,
                state=plan.state,
            )
        else:
            new_tip = SessionTip(
                p.iteration_number, len(p.messages), plan.digest, 0, plan.state, plan.copies
            )
        self.cache.put(p.session_id, new_tip)
        # The statement's row count does not include the row it inserted; a keyframe
        # that ends a full chain always runs retention (see _should_prune).
        rows = None if plan.from_chain else row.row_count + 1
        if self._should_prune(new_row=True, newest=True, depth=plan.depth, rows=rows):
            await self.prune(p.session_id, keep_last=self.keep_last)
        stored = {
            "session_id": p.session_id,
            "job_id": p.job_id,
            "sandbox_id": p.sandbox_id,
            "current_phase": p.current_phase,
            "retry_counts": dict(p.retry_counts),
            "session_cost_microdollars": p.session_cost_microdollars,
            "daily_budget_microdollars": p.daily_budget_microdollars,
            "iteration_number": p.iteration_number,
            "agent_state": p.agent_state,
            "message_count": len(p.messages),
            "base_message_count": plan.base,
            "parent_iteration": params["p_parent"],
            "delta_depth": plan.depth,
            "history_digest": plan.digest,
            "id": row.id,
            "created_at": row.created_at,
            "updated_at": row.updated_at,
        }
        return _transient(stored, p.messages)

    async def _save_full(self, p: Payload, encoded: EncodedHistory) -> MetaRow:
        """The general path: read the row at the iteration and its parent, then upsert."""
        key = {
            "p_session_id": p.session_id,
            "p_iteration": p.iteration_number,
            "p_cap": self.row_cap,
        }
        rows = (await self._execute(sql.NEIGHBOURS, key)).all()
        existing = rows[0] if rows and rows[0].iteration_number == p.iteration_number else None
        parent = next((r for r in rows if r.iteration_number < p.iteration_number), None)
        shape = rows[0] if rows else (await self._execute(sql.SHAPE, key)).one()
        newest, row_count = not shape.has_later, shape.row_count
        if not newest:
            # This process's last save is now below the tip it remembers (even an
            # identical one): an append that vouches for that save must not be planned on
            # the tip, whose message count can agree while its messages differ. Without a
            # tip the next save takes this full path, exact.
            self.cache.discard(p.session_id)

        state = new_state(encoded.body)
        full_digest = finish(state)
        if existing is not None:
            if p.same_content_as(existing, full_digest):
                return existing
            await self._detach_dependants(p.session_id, p.iteration_number)

        shared = self._shared_prefix(encoded, parent, full_digest)
        params = p.params() | {"p_digest": full_digest}
        if shared is None or parent is None:
            params |= {
                "p_history": encoded.body.decode(),
                "p_base": 0,
                "p_parent": None,
                "p_depth": 0,
            }
        else:
            params |= {
                "p_history": encoded.after(shared),
                "p_base": parent.message_count,
                "p_parent": parent.iteration_number,
                "p_depth": parent.delta_depth + 1,
            }
        row = (await self._execute(sql.UPSERT, params)).one()
        depth: int = params["p_depth"]
        if newest:
            tip = SessionTip(
                p.iteration_number, len(encoded), full_digest, depth, state, encoded.copies
            )
            self.cache.put(p.session_id, tip)
        chain_full = parent is not None and parent.delta_depth + 1 >= self.keyframe_every
        count = None if chain_full else row_count + 1
        if self._should_prune(new_row=existing is None, newest=newest, depth=depth, rows=count):
            await self.prune(p.session_id, keep_last=self.keep_last)
        return row

    def _should_prune(self, *, new_row: bool, newest: bool, depth: int, rows: int | None) -> bool:
        """Whether retention runs after this save; ``rows`` is the session's row count
        (capped), when the save read it.

        Rows only grow when a save adds one:

        * a row added below the newest (an out-of-order save) runs it at once;
        * a delta added on top extends the newest chain, whose depth grows by one per
          such save: it runs whenever the depth is a multiple of ``prune_every``;
        * a keyframe added on top (depth 0) runs it when the session holds more than
          ``row_cap`` rows, or when the count is unknown (a keyframe that ends a chain
          of ``keyframe_every`` deltas).

        So the rows kept stay within a bound set by ``keep_last``, ``keyframe_every``
        and ``prune_every`` (README: Retention), whatever the iteration numbers.
        """
        if not new_row:
            return False
        if not newest:
            return True
        if depth > 0:
            return depth % self.prune_every == 0
        return rows is None or rows > self.row_cap

    def _shared_prefix(
        self, history: EncodedHistory, parent: MetaRow | None, full_digest: bytes
    ) -> bytes | None:
        """The parent's history as a canonical prefix of this one, if this extends it and
        the chain may grow; None means "write a keyframe"."""
        if (
            parent is None
            or parent.message_count == 0  # nothing to share
            or parent.message_count > len(history)
            or parent.history_digest is None  # a row from before incremental storage
            or parent.delta_depth + 1 >= self.keyframe_every
        ):
            return None
        if parent.message_count == len(history):  # same length: same history or none
            return history.body if full_digest == parent.history_digest else None
        prefix = history.prefix(parent.message_count)
        return prefix if digest(prefix) == parent.history_digest else None

    async def _detach_dependants(self, session_id: str, iteration: int) -> None:
        """Rewrite the deltas built on ``iteration`` as keyframes before it changes."""
        key = {"p_session_id": session_id, "p_iteration": iteration}
        for child in (await self._execute(sql.DEPENDANTS, key)).scalars():
            found = await self._load(sql.LOAD_ANY, session_id, child)
            if found is None:  # pragma: no cover - the row was selected just above
                continue
            history = orjson.dumps(found[1], option=orjson.OPT_SORT_KEYS).decode()
            await self._execute(
                sql.MAKE_KEYFRAME,
                {"p_session_id": session_id, "p_iteration": child, "p_history": history},
            )

    # ------------------------------------------------------------------- load

    async def _load(
        self, statement: Any, session_id: str, iteration: int | None = None
    ) -> tuple[MetaRow, list[Any]] | None:
        """The target row and its full history, from one recursive SELECT; None if absent."""
        params = {
            "p_session_id": session_id,
            "p_iteration": iteration,
            "p_skip": self.keep_last - 1,
        }
        rows = await self._read(statement, params)
        return _rebuild_chain(session_id, rows) if rows else None

    async def load_latest(self, session_id: str) -> AgentCheckpoint | None:
        """The session's newest checkpoint with its full history, or None (one SELECT)."""
        require_text(session_id, "session_id")
        found = await self._load(sql.LOAD_LATEST, session_id)
        return None if found is None else _checkpoint(*found)

    async def load_latest_many(
        self, session_ids: Iterable[str]
    ) -> dict[str, AgentCheckpoint | CheckpointNotFound | None]:
        """``load_latest`` for many sessions in one SELECT (the wake worker's batch).

        Each id maps to its checkpoint, None when it has none, or the
        ``CheckpointNotFound`` that its broken chain raised; one bad session never
        spoils the others.
        """
        ids = [stored_id(sid, "session_id") for sid in session_ids]
        out: dict[str, AgentCheckpoint | CheckpointNotFound | None] = dict.fromkeys(ids)
        if not ids:
            return out
        rows = await self._read(sql.LOAD_LATEST_MANY, {"p_ids": ids})
        for session_id, chain in itertools.groupby(rows, key=lambda r: r.session_id):
            try:
                out[session_id] = _checkpoint(*_rebuild_chain(session_id, list(chain)))
            except CheckpointNotFound as exc:
                out[session_id] = exc
        return out

    async def load(self, session_id: str, iteration_number: int) -> AgentCheckpoint:
        """A restorable checkpoint with its full history (one SELECT); ``CheckpointNotFound``."""
        require_text(session_id, "session_id")
        require_int(iteration_number, "iteration_number", maximum=INT_MAX)
        found = await self._load(sql.LOAD_RESTORABLE, session_id, iteration_number)
        if found is None:
            raise CheckpointNotFound(session_id, iteration_number)
        return _checkpoint(*found)

    async def list(self, session_id: str, *, limit: int = 50) -> builtins.list[CheckpointInfo]:
        """The restorable checkpoints, newest first, without message bodies."""
        require_text(session_id, "session_id")
        require_int(limit, "limit", minimum=1, maximum=10_000)
        params = {"p_session_id": session_id, "p_skip": self.keep_last - 1, "p_limit": limit}
        return [
            CheckpointInfo(
                session_id=r.session_id,
                iteration_number=r.iteration_number,
                agent_state=r.agent_state,
                current_phase=r.current_phase,
                sandbox_id=r.sandbox_id,
                message_count=r.message_count,
                keyframe=r.base_message_count == 0,
                session_cost_microdollars=r.session_cost_microdollars,
                created_at=r.created_at,
                updated_at=r.updated_at,
            )
            for r in await self._read(sql.LIST, params)
        ]

    # -------------------------------------------------------------- retention

    async def prune(self, session_id: str, *, keep_last: int) -> int:
        """Keep the newest ``keep_last`` restorable; delete rows older than the keyframe
        they need. Never deletes the latest checkpoint. Returns the rows deleted."""
        require_text(session_id, "session_id")
        require_int(keep_last, "keep_last", minimum=1, maximum=INT_MAX)
        result = await self._execute(sql.PRUNE, {"p_session_id": session_id, "p_keep": keep_last})
        return int(result.rowcount)
