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
"""

from __future__ import annotations

import builtins
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, cast

import orjson
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Integer,
    LargeBinary,
    Row,
    String,
    Table,
    Text,
    and_,
    bindparam,
    delete,
    exists,
    func,
    literal,
    or_,
    select,
    text,
    true,
    tuple_,
    update,
)
from sqlalchemy import cast as cast_
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.db.models import AgentCheckpoint, AgentSession
from app.domain import (
    CheckpointNotFound,
    CheckpointPayloadError,
    SessionNotFound,
    SessionStatus,
    StaleRunner,
)
from app.repositories.checkpoint_cache import SHARED, HistoryCache, SessionTip
from app.repositories.checkpoint_codec import (
    EncodedHistory,
    check_retry_counts,
    copy_messages,
    digest,
    encode_history,
    encode_messages,
    extend_state,
    finish,
    new_state,
)
from app.repositories.checkpoint_codec import rebuild as rebuild_history
from app.repositories.errors import translate_errors, translated
from app.validation import INT_MAX, parse_enum, require_int, require_money, require_text

MetaRow = Row[*tuple[Any, ...]]

_CHECKPOINTS = cast(Table, AgentCheckpoint.__table__)
_SESSIONS = cast(Table, AgentSession.__table__)
_cp = _CHECKPOINTS.c
_ses = _SESSIONS.c

# Everything a load needs except the history itself.
_META = (
    _cp.id,
    _cp.session_id,
    _cp.job_id,
    _cp.sandbox_id,
    _cp.current_phase,
    _cp.retry_counts,
    _cp.session_cost_microdollars,
    _cp.daily_budget_microdollars,
    _cp.iteration_number,
    _cp.agent_state,
    _cp.message_count,
    _cp.base_message_count,
    _cp.parent_iteration,
    _cp.delta_depth,
    _cp.history_digest,
    _cp.created_at,
    _cp.updated_at,
)

# ----------------------------------------------------------------- statements
# Built once with bound parameters: a hot path pays for execution, not construction.
# (Parameter names start with p_ so UPDATE never reads them as column values.)

_SESSION_ID = bindparam("p_session_id", type_=String)
_ITERATION = bindparam("p_iteration", type_=Integer)

# Locks the session row (and stamps it): saves of one session are serialised. A save
# that names a resume token goes through only while that token is the session's.
_TOKEN = bindparam("p_token", type_=String)
_TOUCH_SESSION = (
    update(_SESSIONS)
    .where(_ses.id == _SESSION_ID, or_(_TOKEN.is_(None), _ses.resume_token == _TOKEN))
    .values(last_checkpoint_at=func.now())
    .returning(_ses.id)
)
_SESSION_EXISTS = select(_ses.id).where(_ses.id == _SESSION_ID)

# The row at the iteration (if any) and its parent: the highest row below it; whether a
# later row exists (the save is then out of order); and the session's row count, counted
# up to p_cap + 1 only (retention's trigger for keyframes, see _should_prune).
_LATER = (exists().where(_cp.session_id == _SESSION_ID, _cp.iteration_number > _ITERATION)).label(
    "has_later"
)
_ROWS = (
    select(func.count())
    .select_from(
        select(literal(1))
        .where(_cp.session_id == _SESSION_ID)
        .limit(bindparam("p_cap", type_=Integer) + 1)
        .subquery()
    )
    .scalar_subquery()
    .label("row_count")
)
_NEIGHBOURS = (
    select(*_META, _LATER, _ROWS)
    .where(_cp.session_id == _SESSION_ID, _cp.iteration_number <= _ITERATION)
    .order_by(_cp.iteration_number.desc())
    .limit(2)
)
_SHAPE: Final = select(_LATER, _ROWS)

_DEPENDANTS = select(_cp.iteration_number).where(
    _cp.session_id == _SESSION_ID,
    _cp.parent_iteration == _ITERATION,
    _cp.base_message_count > 0,
)

_MAKE_KEYFRAME = (
    update(_CHECKPOINTS)
    .where(_cp.session_id == _SESSION_ID, _cp.iteration_number == _ITERATION)
    .values(
        message_history=cast_(bindparam("p_history", type_=Text), JSONB),
        base_message_count=0,
        parent_iteration=None,
        delta_depth=0,
    )
)


def _row_values() -> dict[str, Any]:
    return {
        "session_id": _SESSION_ID,
        "job_id": bindparam("p_job_id", type_=String),
        "iteration_number": _ITERATION,
        # The messages travel as the JSON text encoded during validation.
        "message_history": cast_(bindparam("p_history", type_=Text), JSONB),
        "sandbox_id": bindparam("p_sandbox_id", type_=String),
        "current_phase": bindparam("p_current_phase", type_=String),
        "retry_counts": bindparam("p_retry_counts", type_=JSONB),
        "session_cost_microdollars": bindparam("p_session_cost", type_=BigInteger),
        "daily_budget_microdollars": bindparam("p_daily_budget", type_=BigInteger),
        "agent_state": bindparam("p_agent_state", type_=String),
        "message_count": bindparam("p_message_count", type_=Integer),
        "base_message_count": bindparam("p_base", type_=Integer),
        "parent_iteration": bindparam("p_parent", type_=Integer),
        "delta_depth": bindparam("p_depth", type_=Integer),
        "history_digest": bindparam("p_digest", type_=LargeBinary),
    }


def _build_upsert() -> Any:
    values = _row_values()
    stmt = insert(_CHECKPOINTS).values(values)
    replace = {k: stmt.excluded[k] for k in values if k not in ("session_id", "iteration_number")}
    return stmt.on_conflict_do_update(
        index_elements=[_cp.session_id, _cp.iteration_number],
        set_={**replace, "updated_at": func.now()},
    ).returning(*_META)


def _build_write() -> Any:
    """One statement for a save planned from the process cache: lock the session (the
    same UPDATE as every save), then INSERT the new row, unless a row already holds that
    iteration. A delta is inserted only if its base is still the row the cache
    remembers (iteration, digest, message count): that row is read FOR SHARE, so a
    concurrent change to it is seen even though the snapshot predates the lock. No row
    comes back when the plan no longer holds; the caller then takes the full path."""
    values = _row_values()
    touched = _TOUCH_SESSION.cte("touched")
    # Correlated with the locked session row, so that it runs after the lock is held:
    # an uncorrelated one would run first and could deadlock with a writer that holds
    # the session and rewrites this row.
    tip_row = (
        select(_cp.iteration_number)
        .where(
            _cp.session_id == touched.c.id,
            _cp.iteration_number == bindparam("p_tip", type_=Integer),
            _cp.history_digest == bindparam("p_tip_digest", type_=LargeBinary),
            _cp.message_count == bindparam("p_tip_count", type_=Integer),
        )
        .with_for_update(read=True)
    )
    keyframe = values["base_message_count"] == 0
    rows = select(*values.values()).select_from(touched).where(keyframe | exists(tip_row))
    return (
        insert(_CHECKPOINTS)
        .from_select(list(values), rows)
        .on_conflict_do_nothing(index_elements=[_cp.session_id, _cp.iteration_number])
        .returning(*_META, _ROWS)
        .add_cte(touched)
    )


_UPSERT: Final = _build_upsert()
_WRITE: Final = _build_write()

# The periodic keyframe that ends a chain, built in the database from the rows of the
# chain (every delta extends its parent entirely, so the history is their messages in
# order) and the new messages: the client sends only those. It runs after the session
# lock, in its own snapshot; nothing is inserted unless the base row still has the
# remembered digest and the rebuilt history its message count.
_CHAIN_KEYFRAME: Final = text(
    """
    WITH RECURSIVE chain AS (
        SELECT iteration_number, parent_iteration, base_message_count, 0 AS depth
          FROM agent_checkpoints
         WHERE session_id = :p_session_id AND iteration_number = :p_tip
           AND history_digest = :p_tip_digest AND message_count = :p_tip_count
      UNION ALL
        SELECT p.iteration_number, p.parent_iteration, p.base_message_count, c.depth + 1
          FROM agent_checkpoints AS p
          JOIN chain AS c
            ON p.session_id = :p_session_id AND p.iteration_number = c.parent_iteration
         WHERE c.base_message_count > 0
    ), whole AS (
        -- The order is the aggregate's own: oldest row of the chain first, each row's
        -- messages in their order. (A subquery's ORDER BY does not survive the joins.)
        SELECT coalesce(jsonb_agg(e.value ORDER BY o.depth DESC, e.n), '[]'::jsonb) AS h
          FROM chain AS o
         CROSS JOIN LATERAL (
                SELECT message_history FROM agent_checkpoints
                 WHERE session_id = :p_session_id AND iteration_number = o.iteration_number
               ) AS r
         CROSS JOIN LATERAL jsonb_array_elements(r.message_history) WITH ORDINALITY AS e(value, n)
    )
    INSERT INTO agent_checkpoints (
        session_id, job_id, iteration_number, message_history, sandbox_id, current_phase,
        retry_counts, session_cost_microdollars, daily_budget_microdollars, agent_state,
        message_count, base_message_count, parent_iteration, delta_depth, history_digest)
    SELECT :p_session_id, :p_job_id, CAST(:p_iteration AS integer),
           whole.h || CAST(:p_history AS jsonb), :p_sandbox_id, :p_current_phase,
           CAST(:p_retry_counts AS jsonb), CAST(:p_session_cost AS bigint),
           CAST(:p_daily_budget AS bigint), :p_agent_state,
           CAST(:p_message_count AS integer), 0, NULL, 0, CAST(:p_digest AS bytea)
      FROM whole
     WHERE jsonb_array_length(whole.h) = :p_tip_count
    ON CONFLICT (session_id, iteration_number) DO NOTHING
    RETURNING id, session_id, job_id, sandbox_id, current_phase, retry_counts,
              session_cost_microdollars, daily_budget_microdollars, iteration_number,
              agent_state, message_count, base_message_count, parent_iteration,
              delta_depth, history_digest, created_at, updated_at
    """
).bindparams(
    bindparam("p_session_id", type_=String),
    bindparam("p_job_id", type_=String),
    bindparam("p_tip", type_=Integer),
    bindparam("p_tip_digest", type_=LargeBinary),
    bindparam("p_tip_count", type_=Integer),
    bindparam("p_sandbox_id", type_=String),
    bindparam("p_current_phase", type_=String),
    bindparam("p_agent_state", type_=String),
    bindparam("p_history", type_=Text),
    bindparam("p_retry_counts", type_=Text),
)

# The lowest restorable iteration: the keep_last-th newest (or -1 with fewer rows).
_FLOOR = func.coalesce(
    select(_cp.iteration_number)
    .where(_cp.session_id == _SESSION_ID)
    .order_by(_cp.iteration_number.desc())
    .offset(bindparam("p_skip", type_=Integer))
    .limit(1)
    .scalar_subquery(),
    -1,
)


def _build_chain(target: ColumnElement[bool], *, per_session: bool = True) -> Any:
    """One recursive SELECT: the target rows, then parents down to their keyframes."""
    anchor = select(*_META, _cp.message_history, literal(0).label("depth")).where(
        _cp.session_id == _SESSION_ID if per_session else true(), target
    )
    chain = anchor.cte("chain", recursive=True)
    parent = _CHECKPOINTS.alias("parent")
    chain = chain.union_all(
        select(
            *(parent.c[c.name] for c in _META),
            parent.c.message_history,
            (chain.c.depth + 1).label("depth"),
        ).where(
            parent.c.session_id == chain.c.session_id,
            parent.c.iteration_number == chain.c.parent_iteration,
            chain.c.base_message_count > 0,
        )
    )
    return select(chain).order_by(chain.c.session_id, chain.c.depth.desc())


_LOAD_LATEST: Final = _build_chain(
    _cp.iteration_number
    == select(func.max(_cp.iteration_number)).where(_cp.session_id == _SESSION_ID).scalar_subquery()
)
_LOAD_LATEST_MANY: Final = _build_chain(
    tuple_(_cp.session_id, _cp.iteration_number).in_(
        select(_cp.session_id, func.max(_cp.iteration_number))
        .where(_cp.session_id == func.any(bindparam("p_ids", type_=ARRAY(String))))
        .group_by(_cp.session_id)
    ),
    per_session=False,
)
_LOAD_RESTORABLE: Final = _build_chain(
    and_(_cp.iteration_number == _ITERATION, _cp.iteration_number >= _FLOOR)
)
_LOAD_ANY: Final = _build_chain(_cp.iteration_number == _ITERATION)

_LIST: Final = (
    select(*_META)
    .where(_cp.session_id == _SESSION_ID, _cp.iteration_number >= _FLOOR)
    .order_by(_cp.iteration_number.desc())
    .limit(bindparam("p_limit", type_=Integer))
)


def _build_prune() -> Any:
    newest = (
        select(_cp.iteration_number)
        .where(_cp.session_id == _SESSION_ID)
        .order_by(_cp.iteration_number.desc())
        .limit(bindparam("p_keep", type_=Integer))
    )
    needed = (
        select(_cp.iteration_number, _cp.parent_iteration, _cp.base_message_count)
        .where(_cp.session_id == _SESSION_ID, _cp.iteration_number.in_(newest))
        .cte("needed", recursive=True)
    )
    parent = _CHECKPOINTS.alias("parent")
    needed = needed.union(
        select(
            parent.c.iteration_number, parent.c.parent_iteration, parent.c.base_message_count
        ).where(
            parent.c.session_id == _SESSION_ID,
            parent.c.iteration_number == needed.c.parent_iteration,
            needed.c.base_message_count > 0,
        )
    )
    # Everything else goes: rows below the newest keep_last that no retained delta needs,
    # wherever they are (out-of-order saves can leave them between needed rows).
    return delete(_CHECKPOINTS).where(
        _cp.session_id == _SESSION_ID,
        _cp.iteration_number.not_in(select(needed.c.iteration_number)),
    )


_PRUNE: Final = _build_prune()


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
class _Payload:
    """A checkpoint's validated fields; its history is checked and encoded apart (whole,
    or only the new messages when the process cache shows what the rest is)."""

    session_id: str
    job_id: str
    iteration_number: int
    messages: list[Any]
    sandbox_id: str | None
    current_phase: str | None
    retry_counts: dict[str, int]
    session_cost_microdollars: int
    daily_budget_microdollars: int
    agent_state: str

    @classmethod
    def of(cls, cp: AgentCheckpoint) -> _Payload:
        optional = {
            name: None if getattr(cp, name) is None else require_text(getattr(cp, name), name)
            for name in ("sandbox_id", "current_phase")
        }
        return cls(
            session_id=require_text(cp.session_id, "session_id"),
            job_id=require_text(cp.job_id, "job_id"),
            iteration_number=require_int(cp.iteration_number, "iteration_number", maximum=INT_MAX),
            messages=_history_list(cp.message_history),
            retry_counts=check_retry_counts(cp.retry_counts),
            session_cost_microdollars=require_money(
                cp.session_cost_microdollars, "session_cost_microdollars"
            ),
            daily_budget_microdollars=require_money(
                cp.daily_budget_microdollars, "daily_budget_microdollars"
            ),
            agent_state=parse_enum(SessionStatus, cp.agent_state, "agent_state").value,
            **optional,
        )

    def same_content_as(self, row: MetaRow, full_digest: bytes) -> bool:
        return (
            row.history_digest == full_digest
            and row.message_count == len(self.messages)
            and (row.job_id, row.sandbox_id, row.current_phase, row.agent_state)
            == (self.job_id, self.sandbox_id, self.current_phase, self.agent_state)
            and row.retry_counts == self.retry_counts
            and row.session_cost_microdollars == self.session_cost_microdollars
            and row.daily_budget_microdollars == self.daily_budget_microdollars
        )

    def params(self) -> dict[str, Any]:
        return {
            "p_session_id": self.session_id,
            "p_job_id": self.job_id,
            "p_iteration": self.iteration_number,
            "p_sandbox_id": self.sandbox_id,
            "p_current_phase": self.current_phase,
            "p_retry_counts": self.retry_counts,
            "p_session_cost": self.session_cost_microdollars,
            "p_daily_budget": self.daily_budget_microdollars,
            "p_agent_state": self.agent_state,
            "p_message_count": len(self.messages),
        }


def _history_list(history: Any) -> list[Any]:
    if type(history) is not list:
        raise CheckpointPayloadError(
            f"message history must be a list of objects, not {type(history).__name__}"
        )
    return history


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


def _checkpoint(row: MetaRow, history: list[Any]) -> AgentCheckpoint:
    """A transient (never added to a session) checkpoint holding the full history."""
    cp = AgentCheckpoint(
        session_id=row.session_id,
        job_id=row.job_id,
        message_history=history,
        sandbox_id=row.sandbox_id,
        current_phase=row.current_phase,
        retry_counts=dict(row.retry_counts),
        session_cost_microdollars=row.session_cost_microdollars,
        daily_budget_microdollars=row.daily_budget_microdollars,
        iteration_number=row.iteration_number,
        agent_state=row.agent_state,
        message_count=row.message_count,
        base_message_count=row.base_message_count,
        parent_iteration=row.parent_iteration,
        delta_depth=row.delta_depth,
        history_digest=row.history_digest,
    )
    cp.id, cp.created_at, cp.updated_at = row.id, row.created_at, row.updated_at
    return cp


def _rebuild_chain(session_id: str, rows: Sequence[MetaRow]) -> tuple[MetaRow, list[Any]]:
    """Keyframe first, then deltas: the target row and its full history."""
    if rows[0].base_message_count != 0:  # the chain is broken: its keyframe is gone
        raise CheckpointNotFound(session_id, rows[-1].iteration_number)
    history = rebuild_history(
        rows[0].message_history,
        ((r.base_message_count, r.message_history) for r in rows[1:]),
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

    async def _connection(self) -> AsyncConnection:
        # Every statement here is Core over tables: run it on the session's connection
        # (same transaction) and skip the ORM's per-execution bookkeeping. Pending ORM
        # objects are flushed first, as Session.execute's autoflush would.
        await self.session.flush()
        return await self.session.connection()

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
        O(new messages): only they are checked, encoded, hashed and sent, in one
        statement (see ``checkpoint_cache``); anything else takes the full path.
        """
        p = _Payload.of(checkpoint)
        if resume_token is not None:
            require_text(resume_token, "resume_token")
        token = {"p_token": resume_token}
        encoded: EncodedHistory | None = None
        plan: _Plan | None = None
        tip = self.cache.get(p.session_id)
        if tip is not None and p.iteration_number > tip.iteration:
            if tip.count and tip.prefix_matches(p.messages):
                plan = self._plan_append(p, tip)
            else:
                encoded = encode_history(p.messages)
                plan = self._plan_keyframe(tip, encoded)
        else:
            encoded = encode_history(p.messages)
        with translate_errors(session_id=p.session_id):
            if plan is not None:
                row = await self._write(p, plan, resume_token)
                if row is not None:
                    return _checkpoint(row, p.messages)
                # Another writer moved the session on since this process saved it, or
                # the token is stale: the full path below tells which.
                self.cache.discard(p.session_id)
            key = {"p_session_id": p.session_id, "p_iteration": p.iteration_number}
            connection = await self._connection()
            if await connection.scalar(_TOUCH_SESSION, key | token) is None:
                if await connection.scalar(_SESSION_EXISTS, key) is None:
                    raise SessionNotFound(p.session_id)
                raise StaleRunner(p.session_id, resume_token)
            if encoded is None:
                encoded = encode_history(p.messages)
            row = await self._save_full(p, encoded)
        return _checkpoint(row, p.messages)

    def _plan_append(self, p: _Payload, tip: SessionTip) -> _Plan:
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
        self, p: _Payload, plan: _Plan, resume_token: str | None = None
    ) -> MetaRow | None:
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
        conn = await self._connection()
        if plan.from_chain:
            if await conn.scalar(_TOUCH_SESSION, params) is None:
                return None  # the full path raises SessionNotFound
            params["p_retry_counts"] = orjson.dumps(p.retry_counts).decode()
            row = (await conn.execute(_CHAIN_KEYFRAME, params)).one_or_none()
        else:
            row = (await conn.execute(_WRITE, params)).one_or_none()
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
        return row

    async def _save_full(self, p: _Payload, encoded: EncodedHistory) -> MetaRow:
        """The general path: read the row at the iteration and its parent, then upsert."""
        key = {
            "p_session_id": p.session_id,
            "p_iteration": p.iteration_number,
            "p_cap": self.row_cap,
        }
        rows = (await (await self._connection()).execute(_NEIGHBOURS, key)).all()
        existing = rows[0] if rows and rows[0].iteration_number == p.iteration_number else None
        parent = next((r for r in rows if r.iteration_number < p.iteration_number), None)
        shape = rows[0] if rows else (await (await self._connection()).execute(_SHAPE, key)).one()
        newest, row_count = not shape.has_later, shape.row_count

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
        row = (await (await self._connection()).execute(_UPSERT, params)).one()
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
        for child in list(await (await self._connection()).scalars(_DEPENDANTS, key)):
            found = await self._load(_LOAD_ANY, session_id, child)
            if found is None:  # pragma: no cover - the row was selected just above
                continue
            history = orjson.dumps(found[1], option=orjson.OPT_SORT_KEYS).decode()
            await (await self._connection()).execute(
                _MAKE_KEYFRAME,
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
        rows = (await (await self._connection()).execute(statement, params)).all()
        return _rebuild_chain(session_id, rows) if rows else None

    async def load_latest(self, session_id: str) -> AgentCheckpoint | None:
        """The session's newest checkpoint with its full history, or None (one SELECT)."""
        require_text(session_id, "session_id")
        found = await self._load(_LOAD_LATEST, session_id)
        return None if found is None else _checkpoint(*found)

    async def load_latest_many(
        self, session_ids: Iterable[str]
    ) -> dict[str, AgentCheckpoint | CheckpointNotFound | None]:
        """``load_latest`` for many sessions in one SELECT (the wake worker's batch).

        Each id maps to its checkpoint, None when it has none, or the
        ``CheckpointNotFound`` that its broken chain raised; one bad session never
        spoils the others.
        """
        ids = [require_text(sid, "session_id") for sid in session_ids]
        out: dict[str, AgentCheckpoint | CheckpointNotFound | None] = dict.fromkeys(ids)
        if not ids:
            return out
        rows = (await (await self._connection()).execute(_LOAD_LATEST_MANY, {"p_ids": ids})).all()
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
        found = await self._load(_LOAD_RESTORABLE, session_id, iteration_number)
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
            for r in await (await self._connection()).execute(_LIST, params)
        ]

    # -------------------------------------------------------------- retention

    async def prune(self, session_id: str, *, keep_last: int) -> int:
        """Keep the newest ``keep_last`` restorable; delete rows older than the keyframe
        they need. Never deletes the latest checkpoint. Returns the rows deleted."""
        require_text(session_id, "session_id")
        require_int(keep_last, "keep_last", minimum=1, maximum=INT_MAX)
        result = await (await self._connection()).execute(
            _PRUNE, {"p_session_id": session_id, "p_keep": keep_last}
        )
        return int(result.rowcount)
