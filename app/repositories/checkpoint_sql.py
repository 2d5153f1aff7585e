"""The SQL of CheckpointRepository: every statement it runs, built once.

Statements live here and the I/O in ``checkpoints.py`` (as LangGraph's saver keeps its
SQL in ``base.py`` and its calls in ``aio.py``). Each one is built once with bound
parameters, so a hot path pays for execution, not construction. Parameter names start
with ``p_`` so that an UPDATE never reads them as column values.
"""

from __future__ import annotations

from typing import Any, Final

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Integer,
    LargeBinary,
    Row,
    String,
    Text,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    literal,
    null,
    or_,
    select,
    text,
    true,
    tuple_,
    update,
)
from sqlalchemy import cast as cast_
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, insert

from app.db.tables import agent_checkpoints, agent_sessions
from app.domain import SessionStatus

#: A row of ``META`` (and the statements that return it).
MetaRow = Row[*tuple[Any, ...]]

# Everything a load needs except the history itself.
META = (
    agent_checkpoints.c.id,
    agent_checkpoints.c.session_id,
    agent_checkpoints.c.job_id,
    agent_checkpoints.c.sandbox_id,
    agent_checkpoints.c.current_phase,
    agent_checkpoints.c.retry_counts,
    agent_checkpoints.c.session_cost_microdollars,
    agent_checkpoints.c.daily_budget_microdollars,
    agent_checkpoints.c.iteration_number,
    agent_checkpoints.c.agent_state,
    agent_checkpoints.c.message_count,
    agent_checkpoints.c.base_message_count,
    agent_checkpoints.c.parent_iteration,
    agent_checkpoints.c.delta_depth,
    agent_checkpoints.c.history_digest,
    agent_checkpoints.c.created_at,
    agent_checkpoints.c.updated_at,
)

# What only the database knows of a row it inserted: the rest of a planned save's row is
# what the client sent, so the hot statements return just these (fewer columns to
# decode on every save).
GENERATED = (
    agent_checkpoints.c.id,
    agent_checkpoints.c.created_at,
    agent_checkpoints.c.updated_at,
)

SESSION_ID = bindparam("p_session_id", type_=String)
ITERATION = bindparam("p_iteration", type_=Integer)

# Locks the session row (and stamps it): saves of one session are serialised. A save
# that names a resume token goes through only while that token is the session's and the
# session is not completed (an operator's cancel, or a purge after one): a fenced runner
# writes nothing (DESIGN.md §6c).
TOKEN = bindparam("p_token", type_=String)
TOUCH_SESSION = (
    update(agent_sessions)
    .where(
        agent_sessions.c.id == SESSION_ID,
        or_(
            TOKEN.is_(None),
            and_(
                agent_sessions.c.resume_token == TOKEN,
                agent_sessions.c.status != SessionStatus.COMPLETED.value,
            ),
        ),
    )
    .values(last_checkpoint_at=func.now())
    .returning(agent_sessions.c.id)
)
SESSION_EXISTS = select(agent_sessions.c.id).where(agent_sessions.c.id == SESSION_ID)

# The row at the iteration (if any) and its parent: the highest row below it; whether a
# later row exists (the save is then out of order); and an upper bound of the session's
# row count that is exact above p_cap (retention's trigger for keyframes, see
# _should_prune).
LATER = (
    exists().where(
        agent_checkpoints.c.session_id == SESSION_ID,
        agent_checkpoints.c.iteration_number > ITERATION,
    )
).label("has_later")
_CAP = bindparam("p_cap", type_=Integer)
# Iteration numbers are unique per session, so the span between the lowest and the
# highest bounds the row count from above: two index probes. Only when it exceeds the
# cap are the rows counted, and then up to the cap + 1 only.
_SPAN = func.coalesce(
    select(
        func.max(agent_checkpoints.c.iteration_number)
        - func.min(agent_checkpoints.c.iteration_number)
        + 1
    )
    .where(agent_checkpoints.c.session_id == SESSION_ID)
    .scalar_subquery(),
    0,
)
_COUNTED = (
    select(func.count())
    .select_from(
        select(literal(1))
        .where(agent_checkpoints.c.session_id == SESSION_ID)
        .limit(_CAP + 1)
        .subquery()
    )
    .scalar_subquery()
)
ROWS = case((_SPAN <= _CAP, _SPAN), else_=_COUNTED).label("row_count")
NEIGHBOURS = (
    select(*META, LATER, ROWS)
    .where(
        agent_checkpoints.c.session_id == SESSION_ID,
        agent_checkpoints.c.iteration_number <= ITERATION,
    )
    .order_by(agent_checkpoints.c.iteration_number.desc())
    .limit(2)
)
SHAPE: Final = select(LATER, ROWS)

DEPENDANTS = select(agent_checkpoints.c.iteration_number).where(
    agent_checkpoints.c.session_id == SESSION_ID,
    agent_checkpoints.c.parent_iteration == ITERATION,
    agent_checkpoints.c.base_message_count > 0,
)

MAKE_KEYFRAME = (
    update(agent_checkpoints)
    .where(
        agent_checkpoints.c.session_id == SESSION_ID,
        agent_checkpoints.c.iteration_number == ITERATION,
    )
    .values(
        message_history=cast_(bindparam("p_history", type_=Text), JSONB),
        base_message_count=0,
        parent_iteration=None,
        delta_depth=0,
    )
)


def _row_values() -> dict[str, Any]:
    return {
        "session_id": SESSION_ID,
        "job_id": bindparam("p_job_id", type_=String),
        "iteration_number": ITERATION,
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
    stmt = insert(agent_checkpoints).values(values)
    replace = {k: stmt.excluded[k] for k in values if k not in ("session_id", "iteration_number")}
    return stmt.on_conflict_do_update(
        index_elements=[agent_checkpoints.c.session_id, agent_checkpoints.c.iteration_number],
        set_={**replace, "updated_at": func.now()},
    ).returning(*META)


def _build_write() -> Any:
    """One statement for a save planned from the process cache: lock the session (the
    same UPDATE as every save), then INSERT the new row, unless a row already holds that
    iteration. A delta is inserted only if its base is still the row the cache
    remembers (iteration, digest, message count): that row is read FOR SHARE, so a
    concurrent change to it is seen even though the snapshot predates the lock. No row
    comes back when the plan no longer holds; the caller then takes the full path."""
    values = _row_values()
    touched = TOUCH_SESSION.cte("touched")
    # Correlated with the locked session row, so that it runs after the lock is held:
    # an uncorrelated one would run first and could deadlock with a writer that holds
    # the session and rewrites this row.
    tip_row = (
        select(agent_checkpoints.c.iteration_number)
        .where(
            agent_checkpoints.c.session_id == touched.c.id,
            agent_checkpoints.c.iteration_number == bindparam("p_tip", type_=Integer),
            agent_checkpoints.c.history_digest == bindparam("p_tip_digest", type_=LargeBinary),
            agent_checkpoints.c.message_count == bindparam("p_tip_count", type_=Integer),
        )
        .with_for_update(read=True)
    )
    keyframe = values["base_message_count"] == 0
    rows = select(*values.values()).select_from(touched).where(keyframe | exists(tip_row))
    return (
        insert(agent_checkpoints)
        .from_select(list(values), rows)
        .on_conflict_do_nothing(
            index_elements=[agent_checkpoints.c.session_id, agent_checkpoints.c.iteration_number]
        )
        .returning(*GENERATED, ROWS)
        .add_cte(touched)
    )


UPSERT: Final = _build_upsert()
WRITE: Final = _build_write()

# The periodic keyframe that ends a chain, built in the database from the rows of the
# chain (every delta extends its parent entirely, so the history is the keyframe's
# messages, then each delta's) and the new messages: the client sends only those. The
# deltas' few messages are aggregated first, so the long keyframe is copied once, by one
# concatenation, rather than taken apart and aggregated again. It runs after the session
# lock, in its own snapshot; nothing is inserted unless the base row still has the
# remembered digest and the rebuilt history its message count.
CHAIN_KEYFRAME: Final = text(
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
    ), tail AS (
        -- The order is the aggregate's own: oldest delta first, each delta's messages
        -- in their order. (A subquery's ORDER BY does not survive the joins.)
        SELECT coalesce(jsonb_agg(e.value ORDER BY o.depth DESC, e.n), '[]'::jsonb)
               || CAST(:p_history AS jsonb) AS h
          FROM chain AS o
         CROSS JOIN LATERAL (
                SELECT message_history FROM agent_checkpoints
                 WHERE session_id = :p_session_id AND iteration_number = o.iteration_number
               ) AS r
         CROSS JOIN LATERAL jsonb_array_elements(r.message_history) WITH ORDINALITY AS e(value, n)
         WHERE o.base_message_count > 0
    ), whole AS (
        SELECT k.message_history || tail.h AS h,
               k.message_count + jsonb_array_length(tail.h) AS n
          FROM chain AS o
          JOIN agent_checkpoints AS k
            ON k.session_id = :p_session_id AND k.iteration_number = o.iteration_number
         CROSS JOIN tail
         WHERE o.base_message_count = 0
    )
    INSERT INTO agent_checkpoints (
        session_id, job_id, iteration_number, message_history, sandbox_id, current_phase,
        retry_counts, session_cost_microdollars, daily_budget_microdollars, agent_state,
        message_count, base_message_count, parent_iteration, delta_depth, history_digest)
    SELECT :p_session_id, :p_job_id, CAST(:p_iteration AS integer),
           whole.h, :p_sandbox_id, :p_current_phase,
           CAST(:p_retry_counts AS jsonb), CAST(:p_session_cost AS bigint),
           CAST(:p_daily_budget AS bigint), :p_agent_state,
           CAST(:p_message_count AS integer), 0, NULL, 0, CAST(:p_digest AS bytea)
      FROM whole
     WHERE whole.n = CAST(:p_message_count AS integer)
    ON CONFLICT (session_id, iteration_number) DO NOTHING
    RETURNING id, created_at, updated_at
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
FLOOR = func.coalesce(
    select(agent_checkpoints.c.iteration_number)
    .where(agent_checkpoints.c.session_id == SESSION_ID)
    .order_by(agent_checkpoints.c.iteration_number.desc())
    .offset(bindparam("p_skip", type_=Integer))
    .limit(1)
    .scalar_subquery(),
    -1,
)


_CHAIN_LINKS: Final = frozenset(
    {"session_id", "iteration_number", "base_message_count", "parent_iteration"}
)


def _build_chain(target: ColumnElement[bool], *, per_session: bool = True) -> Any:
    """One recursive SELECT: the target rows, then parents down to their keyframes."""
    anchor = select(*META, agent_checkpoints.c.message_history, literal(0).label("depth")).where(
        agent_checkpoints.c.session_id == SESSION_ID if per_session else true(), target
    )
    chain = anchor.cte("chain", recursive=True)
    parent = agent_checkpoints.alias("parent")
    # Of the rows below the target, only what rebuilds the history is read: the other
    # columns come back NULL, so a chain of 50 rows decodes one row's metadata.
    chain = chain.union_all(
        select(
            *(
                parent.c[c.name] if c.name in _CHAIN_LINKS else cast_(null(), c.type).label(c.name)
                for c in META
            ),
            parent.c.message_history,
            (chain.c.depth + 1).label("depth"),
        ).where(
            parent.c.session_id == chain.c.session_id,
            parent.c.iteration_number == chain.c.parent_iteration,
            chain.c.base_message_count > 0,
        )
    )
    # The history travels as JSON text and is decoded once, by orjson, on the client:
    # no jsonb codec's copies of each value on the way.
    columns = [cast_(c, Text).label(c.name) if c.name == "message_history" else c for c in chain.c]
    return select(*columns).order_by(chain.c.session_id, chain.c.depth.desc())


LOAD_LATEST: Final = _build_chain(
    agent_checkpoints.c.iteration_number
    == select(func.max(agent_checkpoints.c.iteration_number))
    .where(agent_checkpoints.c.session_id == SESSION_ID)
    .scalar_subquery()
)
LOAD_LATEST_MANY: Final = _build_chain(
    tuple_(agent_checkpoints.c.session_id, agent_checkpoints.c.iteration_number).in_(
        select(agent_checkpoints.c.session_id, func.max(agent_checkpoints.c.iteration_number))
        .where(agent_checkpoints.c.session_id == func.any(bindparam("p_ids", type_=ARRAY(String))))
        .group_by(agent_checkpoints.c.session_id)
    ),
    per_session=False,
)
LOAD_RESTORABLE: Final = _build_chain(
    and_(
        agent_checkpoints.c.iteration_number == ITERATION,
        agent_checkpoints.c.iteration_number >= FLOOR,
    )
)
LOAD_ANY: Final = _build_chain(agent_checkpoints.c.iteration_number == ITERATION)

LIST: Final = (
    select(*META)
    .where(
        agent_checkpoints.c.session_id == SESSION_ID, agent_checkpoints.c.iteration_number >= FLOOR
    )
    .order_by(agent_checkpoints.c.iteration_number.desc())
    .limit(bindparam("p_limit", type_=Integer))
)


def _build_prune() -> Any:
    newest = (
        select(agent_checkpoints.c.iteration_number)
        .where(agent_checkpoints.c.session_id == SESSION_ID)
        .order_by(agent_checkpoints.c.iteration_number.desc())
        .limit(bindparam("p_keep", type_=Integer))
    )
    needed = (
        select(
            agent_checkpoints.c.iteration_number,
            agent_checkpoints.c.parent_iteration,
            agent_checkpoints.c.base_message_count,
        )
        .where(
            agent_checkpoints.c.session_id == SESSION_ID,
            agent_checkpoints.c.iteration_number.in_(newest),
        )
        .cte("needed", recursive=True)
    )
    parent = agent_checkpoints.alias("parent")
    needed = needed.union(
        select(
            parent.c.iteration_number, parent.c.parent_iteration, parent.c.base_message_count
        ).where(
            parent.c.session_id == SESSION_ID,
            parent.c.iteration_number == needed.c.parent_iteration,
            needed.c.base_message_count > 0,
        )
    )
    # Everything else goes: rows below the newest keep_last that no retained delta needs,
    # wherever they are (out-of-order saves can leave them between needed rows).
    return delete(agent_checkpoints).where(
        agent_checkpoints.c.session_id == SESSION_ID,
        agent_checkpoints.c.iteration_number.not_in(select(needed.c.iteration_number)),
    )


PRUNE: Final = _build_prune()
