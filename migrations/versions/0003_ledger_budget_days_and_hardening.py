"""cost ledger, budget days, sleep/wake columns, BIGINT money, JSONB, named constraints

What the original plan lacked: the append-only ledger (BDGT-06), one budget row per
user per UTC day, ``wake_at`` and ``version`` on sessions, incremental checkpoint
columns, a unique (session_id, iteration_number), a foreign key to the session, and a
named CHECK on every enum-like column. Money is widened from int4 to BIGINT, which
int4 overflows at $2,147, and documents move from JSON to JSONB, with lz4 TOAST
compression where the server has it.

Revision ID: 0003
Revises: 0002
Create Date: 2026-03-10
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIERS = "'bootstrapper', 'partner', 'cto_scale'"
STATUSES = "'working', 'sleeping', 'budget_exceeded', 'completed'"
JSONB_COLUMNS = ("message_history", "retry_counts")
# A JSON escape of NUL that is not itself escaped (preceded by an even number of
# backslashes). `json` stores it as written; `jsonb` refuses it.
NUL_ESCAPE = r"(?<!\\)((?:\\\\)*)\\u0000"
# U+FFFD REPLACEMENT CHARACTER, as a JSON escape.
REPLACEMENT = r"\1\\ufffd"

log = logging.getLogger("alembic.runtime.migration")


def _replace_nul_escapes(table: str, column: str) -> int:
    """Replace each \\u0000 in a json column with \\ufffd, so the cast to jsonb succeeds;
    returns how many rows changed."""
    t = sa.table(table, sa.column(column, sa.JSON()))
    as_text = sa.cast(t.c[column], sa.Text())
    repaired = sa.func.regexp_replace(as_text, NUL_ESCAPE, REPLACEMENT, "g")
    result = op.get_bind().execute(
        sa.update(t)
        .values({column: sa.cast(repaired, sa.JSON())})
        .where(sa.func.strpos(as_text, "\\u0000") > 0, as_text.regexp_match(NUL_ESCAPE))
    )
    changed = int(result.rowcount)
    if changed:
        message = (
            f"0003: {changed} row(s) of {table}.{column} held \\u0000, which jsonb cannot"
            " store; each one was replaced with U+FFFD"
        )
        log.warning(message)
        if context.config is not None:
            context.config.print_stdout(message)
    return changed


def _server_has_lz4() -> bool:
    # pg_settings lists lz4 among default_toast_compression's values only on a
    # server that is version 14+ and was built --with-lz4.
    found = op.get_bind().scalar(
        sa.text(
            "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'"
        )
    )
    return bool(found)


def upgrade() -> None:
    # ------------------------------------------------------------- user_settings
    op.create_check_constraint(op.f("ck_user_settings_tier"), "user_settings", f"tier IN ({TIERS})")
    op.create_check_constraint(
        op.f("ck_user_settings_budget_override_non_negative"),
        "user_settings",
        "budget_override_microdollars IS NULL OR budget_override_microdollars >= 0",
    )

    # ------------------------------------------------------------ agent_sessions
    for column in ("cumulative_cost_microdollars", "daily_budget_microdollars"):
        op.alter_column(
            "agent_sessions",
            column,
            type_=sa.BigInteger(),
            existing_type=sa.Integer(),
            existing_nullable=False,
            server_default=sa.text("0"),
        )
    op.alter_column(
        "agent_sessions",
        "status",
        existing_type=sa.String(length=50),
        existing_nullable=False,
        server_default="working",
    )
    op.add_column("agent_sessions", sa.Column("wake_at", sa.DateTime(timezone=True)))
    op.add_column(
        "agent_sessions",
        sa.Column("version", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    # Sessions that were already asleep wake at the next UTC midnight, as a new one would.
    op.execute(
        "UPDATE agent_sessions SET wake_at ="
        " (date_trunc('day', now() AT TIME ZONE 'UTC') + interval '1 day') AT TIME ZONE 'UTC'"
        " WHERE status = 'sleeping'"
    )
    op.create_check_constraint(
        op.f("ck_agent_sessions_tier"), "agent_sessions", f"tier IN ({TIERS})"
    )
    op.create_check_constraint(
        op.f("ck_agent_sessions_status"), "agent_sessions", f"status IN ({STATUSES})"
    )
    op.create_check_constraint(
        op.f("ck_agent_sessions_cumulative_cost_non_negative"),
        "agent_sessions",
        "cumulative_cost_microdollars >= 0",
    )
    op.create_check_constraint(
        op.f("ck_agent_sessions_daily_budget_non_negative"),
        "agent_sessions",
        "daily_budget_microdollars >= 0",
    )
    op.create_check_constraint(
        op.f("ck_agent_sessions_wake_at_iff_sleeping"),
        "agent_sessions",
        "(status = 'sleeping') = (wake_at IS NOT NULL)",
    )
    op.create_index(
        "ix_agent_sessions_wake_at_sleeping",
        "agent_sessions",
        ["wake_at"],
        postgresql_where=sa.text("status = 'sleeping'"),
    )

    # --------------------------------------------------------- agent_checkpoints
    # serial int4 -> bigint identity, keeping the numbering where it was.
    op.execute("ALTER TABLE agent_checkpoints ALTER COLUMN id DROP DEFAULT")
    op.execute("DROP SEQUENCE IF EXISTS agent_checkpoints_id_seq")
    op.alter_column("agent_checkpoints", "id", type_=sa.BigInteger(), existing_type=sa.Integer())
    op.execute("ALTER TABLE agent_checkpoints ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY")
    op.execute(
        "SELECT setval(pg_get_serial_sequence('agent_checkpoints', 'id'),"
        " coalesce(max(id), 0) + 1, false) FROM agent_checkpoints"
    )
    for column in ("session_cost_microdollars", "daily_budget_microdollars"):
        op.alter_column(
            "agent_checkpoints",
            column,
            type_=sa.BigInteger(),
            existing_type=sa.Integer(),
            existing_nullable=False,
        )
    for column in JSONB_COLUMNS:
        _replace_nul_escapes("agent_checkpoints", column)
        op.alter_column(
            "agent_checkpoints",
            column,
            type_=postgresql.JSONB(),
            existing_type=sa.JSON(),
            existing_nullable=False,
            postgresql_using=f"{column}::jsonb",
        )
    if _server_has_lz4():
        for column in JSONB_COLUMNS:
            op.execute(f"ALTER TABLE agent_checkpoints ALTER COLUMN {column} SET COMPRESSION lz4")

    op.add_column(
        "agent_checkpoints",
        sa.Column("message_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    op.add_column(
        "agent_checkpoints",
        sa.Column("base_message_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    op.add_column("agent_checkpoints", sa.Column("parent_iteration", sa.Integer()))
    op.add_column(
        "agent_checkpoints",
        sa.Column("delta_depth", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    op.add_column("agent_checkpoints", sa.Column("history_digest", sa.LargeBinary()))
    # Existing rows hold their whole history: they are keyframes. Their digest stays
    # NULL, so the next save after the upgrade writes a keyframe instead of a delta.
    op.execute(
        "UPDATE agent_checkpoints SET message_count = jsonb_array_length(message_history)"
        " WHERE jsonb_typeof(message_history) = 'array'"
    )

    # The plan allowed the same iteration twice; keep the newest row of each.
    op.execute(
        "DELETE FROM agent_checkpoints AS old USING agent_checkpoints AS new"
        " WHERE old.session_id = new.session_id"
        " AND old.iteration_number = new.iteration_number AND old.id < new.id"
    )
    op.drop_index(op.f("ix_agent_checkpoints_session_id"), table_name="agent_checkpoints")
    op.create_unique_constraint(
        op.f("uq_agent_checkpoints_session_id_iteration_number"),
        "agent_checkpoints",
        ["session_id", "iteration_number"],
    )
    # A checkpoint without its session can never be restored; the plan had no FK.
    op.execute(
        "DELETE FROM agent_checkpoints AS c WHERE NOT EXISTS"
        " (SELECT 1 FROM agent_sessions AS s WHERE s.id = c.session_id)"
    )
    op.create_foreign_key(
        op.f("fk_agent_checkpoints_session_id_agent_sessions"),
        "agent_checkpoints",
        "agent_sessions",
        ["session_id"],
        ["id"],
        ondelete="CASCADE",
    )
    op.create_check_constraint(
        op.f("ck_agent_checkpoints_agent_state"),
        "agent_checkpoints",
        f"agent_state IN ({STATUSES})",
    )
    op.create_check_constraint(
        op.f("ck_agent_checkpoints_iteration_non_negative"),
        "agent_checkpoints",
        "iteration_number >= 0",
    )
    op.create_check_constraint(
        op.f("ck_agent_checkpoints_session_cost_non_negative"),
        "agent_checkpoints",
        "session_cost_microdollars >= 0",
    )
    op.create_check_constraint(
        op.f("ck_agent_checkpoints_daily_budget_non_negative"),
        "agent_checkpoints",
        "daily_budget_microdollars >= 0",
    )
    op.create_check_constraint(
        op.f("ck_agent_checkpoints_base_within_count"),
        "agent_checkpoints",
        "base_message_count >= 0 AND base_message_count <= message_count",
    )
    op.create_check_constraint(
        op.f("ck_agent_checkpoints_delta_has_parent"),
        "agent_checkpoints",
        "(base_message_count = 0) OR (parent_iteration IS NOT NULL)",
    )
    op.create_check_constraint(
        op.f("ck_agent_checkpoints_delta_depth_consistent"),
        "agent_checkpoints",
        "(base_message_count = 0) = (delta_depth = 0) AND delta_depth >= 0",
    )

    # --------------------------------------------------------- agent_cost_events
    op.create_table(
        "agent_cost_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("request_id", sa.String(length=255), nullable=False),
        sa.Column("session_id", sa.String(length=255), nullable=False),
        sa.Column("clerk_user_id", sa.String(length=255), nullable=False),
        sa.Column("model", sa.String(length=100), nullable=False),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("cost_microdollars", sa.BigInteger(), nullable=False),
        sa.Column("budget_day", sa.Date(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint(
            "input_tokens >= 0", name=op.f("ck_agent_cost_events_input_tokens_non_negative")
        ),
        sa.CheckConstraint(
            "output_tokens >= 0", name=op.f("ck_agent_cost_events_output_tokens_non_negative")
        ),
        sa.CheckConstraint(
            "cost_microdollars >= 0", name=op.f("ck_agent_cost_events_cost_non_negative")
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["agent_sessions.id"],
            name=op.f("fk_agent_cost_events_session_id_agent_sessions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_cost_events")),
        sa.UniqueConstraint("request_id", name=op.f("uq_agent_cost_events_request_id")),
    )
    op.create_index(
        op.f("ix_agent_cost_events_clerk_user_id_budget_day"),
        "agent_cost_events",
        ["clerk_user_id", "budget_day"],
    )
    op.create_index(op.f("ix_agent_cost_events_session_id"), "agent_cost_events", ["session_id"])

    # --------------------------------------------------------------- budget_days
    op.create_table(
        "budget_days",
        sa.Column("clerk_user_id", sa.String(length=255), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("budget_microdollars", sa.BigInteger(), nullable=False),
        sa.Column(
            "spent_microdollars", sa.BigInteger(), server_default=sa.text("0"), nullable=False
        ),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint(
            "budget_microdollars >= 0", name=op.f("ck_budget_days_budget_non_negative")
        ),
        sa.CheckConstraint(
            "spent_microdollars >= 0", name=op.f("ck_budget_days_spent_non_negative")
        ),
        sa.PrimaryKeyConstraint("clerk_user_id", "day", name=op.f("pk_budget_days")),
    )


def downgrade() -> None:
    op.drop_table("budget_days")
    op.drop_index(op.f("ix_agent_cost_events_session_id"), table_name="agent_cost_events")
    op.drop_index(
        op.f("ix_agent_cost_events_clerk_user_id_budget_day"), table_name="agent_cost_events"
    )
    op.drop_table("agent_cost_events")

    # --------------------------------------------------------- agent_checkpoints
    for name in (
        "delta_depth_consistent",
        "delta_has_parent",
        "base_within_count",
        "daily_budget_non_negative",
        "session_cost_non_negative",
        "iteration_non_negative",
        "agent_state",
    ):
        op.drop_constraint(op.f(f"ck_agent_checkpoints_{name}"), "agent_checkpoints", type_="check")
    op.drop_constraint(
        op.f("fk_agent_checkpoints_session_id_agent_sessions"),
        "agent_checkpoints",
        type_="foreignkey",
    )
    op.drop_constraint(
        op.f("uq_agent_checkpoints_session_id_iteration_number"),
        "agent_checkpoints",
        type_="unique",
    )
    op.create_index(op.f("ix_agent_checkpoints_session_id"), "agent_checkpoints", ["session_id"])
    # The plan's schema has no deltas: expand every delta into its full history first,
    # walking each chain from its keyframe, or the downgraded rows would be truncated.
    op.execute(
        """
        WITH RECURSIVE chain AS (
            SELECT id, session_id, iteration_number, message_history AS full_history
            FROM agent_checkpoints WHERE base_message_count = 0
          UNION ALL
            SELECT c.id, c.session_id, c.iteration_number,
                   (SELECT coalesce(jsonb_agg(m ORDER BY o), '[]'::jsonb)
                      FROM jsonb_array_elements(p.full_history) WITH ORDINALITY AS e(m, o)
                     WHERE o <= c.base_message_count) || c.message_history
            FROM agent_checkpoints AS c
            JOIN chain AS p
              ON p.session_id = c.session_id AND p.iteration_number = c.parent_iteration
            WHERE c.base_message_count > 0
        )
        UPDATE agent_checkpoints AS t SET message_history = chain.full_history
        FROM chain WHERE chain.id = t.id AND t.base_message_count > 0
        """
    )
    for column in (
        "history_digest",
        "delta_depth",
        "parent_iteration",
        "base_message_count",
        "message_count",
    ):
        op.drop_column("agent_checkpoints", column)
    for column in JSONB_COLUMNS:
        op.alter_column(
            "agent_checkpoints",
            column,
            type_=sa.JSON(),
            existing_type=postgresql.JSONB(),
            existing_nullable=False,
            postgresql_using=f"{column}::json",
        )
    for column in ("session_cost_microdollars", "daily_budget_microdollars"):
        op.alter_column(
            "agent_checkpoints",
            column,
            type_=sa.Integer(),
            existing_type=sa.BigInteger(),
            existing_nullable=False,
        )
    # bigint identity -> serial int4, as the plan created it.
    op.execute("ALTER TABLE agent_checkpoints ALTER COLUMN id DROP IDENTITY")
    op.alter_column("agent_checkpoints", "id", type_=sa.Integer(), existing_type=sa.BigInteger())
    op.execute("CREATE SEQUENCE agent_checkpoints_id_seq AS integer OWNED BY agent_checkpoints.id")
    op.execute(
        "ALTER TABLE agent_checkpoints ALTER COLUMN id"
        " SET DEFAULT nextval('agent_checkpoints_id_seq')"
    )
    op.execute(
        "SELECT setval('agent_checkpoints_id_seq', coalesce(max(id), 0) + 1, false)"
        " FROM agent_checkpoints"
    )

    # ------------------------------------------------------------ agent_sessions
    op.drop_index("ix_agent_sessions_wake_at_sleeping", table_name="agent_sessions")
    for name in (
        "wake_at_iff_sleeping",
        "daily_budget_non_negative",
        "cumulative_cost_non_negative",
        "status",
        "tier",
    ):
        op.drop_constraint(op.f(f"ck_agent_sessions_{name}"), "agent_sessions", type_="check")
    op.drop_column("agent_sessions", "version")
    op.drop_column("agent_sessions", "wake_at")
    op.alter_column(
        "agent_sessions",
        "status",
        existing_type=sa.String(length=50),
        existing_nullable=False,
        server_default=None,
    )
    for column in ("cumulative_cost_microdollars", "daily_budget_microdollars"):
        op.alter_column(
            "agent_sessions",
            column,
            type_=sa.Integer(),
            existing_type=sa.BigInteger(),
            existing_nullable=False,
            server_default=None,
        )

    # ------------------------------------------------------------- user_settings
    op.drop_constraint(
        op.f("ck_user_settings_budget_override_non_negative"), "user_settings", type_="check"
    )
    op.drop_constraint(op.f("ck_user_settings_tier"), "user_settings", type_="check")
