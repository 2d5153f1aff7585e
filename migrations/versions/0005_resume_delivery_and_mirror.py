"""resume delivery (tokens, leases, attempts), signs of life, and the mirror's change stamp

A wake now records in its own transaction that the session is owed a resume, which a
worker delivers at least once; ``resume_token`` fences off an older runner. A trigger
stamps ``changed_at`` whenever ``version`` moves, whoever moves it, so the Redis mirror
can be reconciled from PostgreSQL by a bounded scan; the same trigger clears an owed
resume when a session stops working.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TRIGGER_FUNCTION = "agent_sessions_stamp_changed_at"
TRIGGER = "trg_agent_sessions_changed_at"


def upgrade() -> None:
    op.add_column("agent_sessions", sa.Column("resume_token", sa.String(64), nullable=True))
    op.add_column(
        "agent_sessions", sa.Column("resume_due_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column(
        "agent_sessions",
        sa.Column("resume_attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    op.add_column(
        "agent_sessions",
        sa.Column("resume_parked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.add_column(
        "agent_sessions",
        sa.Column("wake_failures", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    for column in ("last_seen_at", "changed_at"):
        op.add_column(
            "agent_sessions",
            sa.Column(
                column, sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
            ),
        )
    # Sessions already working when this runs have a runner that holds no token: give
    # each one, so its saves are accepted until it is delivered again.
    op.execute(
        "UPDATE agent_sessions SET resume_token = md5(id || clock_timestamp()::text)"
        " WHERE status = 'working'"
    )
    op.create_check_constraint(
        op.f("ck_agent_sessions_resume_due_only_while_working"),
        "agent_sessions",
        "resume_due_at IS NULL OR status = 'working'",
    )
    op.create_check_constraint(
        op.f("ck_agent_sessions_resume_attempts_non_negative"),
        "agent_sessions",
        "resume_attempts >= 0",
    )
    op.create_check_constraint(
        op.f("ck_agent_sessions_wake_failures_non_negative"),
        "agent_sessions",
        "wake_failures >= 0",
    )
    op.create_index(
        op.f("ix_agent_sessions_resume_due_at_owed"),
        "agent_sessions",
        ["resume_due_at"],
        postgresql_where=sa.text("resume_due_at IS NOT NULL"),
    )
    op.create_index(
        op.f("ix_agent_sessions_last_seen_at_working"),
        "agent_sessions",
        ["last_seen_at"],
        postgresql_where=sa.text("status = 'working'"),
    )
    op.create_index(op.f("ix_agent_sessions_changed_at"), "agent_sessions", ["changed_at"])
    # A runner's latest charge is a sign of life: found by session, newest first.
    op.create_index(
        op.f("ix_agent_cost_events_session_id_created_at"),
        "agent_cost_events",
        ["session_id", "created_at"],
    )
    # One place for two rules, whoever writes the row: a move stamps changed_at, and a
    # session that stops working is owed no resume.
    op.execute(
        f"""
        CREATE FUNCTION {TRIGGER_FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            NEW.changed_at := now();
            IF NEW.status <> 'working' THEN
                NEW.resume_due_at := NULL;
                NEW.resume_parked_at := NULL;
            END IF;
            RETURN NEW;
        END
        $$
        """
    )
    op.execute(
        f"CREATE TRIGGER {TRIGGER} BEFORE UPDATE ON agent_sessions FOR EACH ROW"
        f" WHEN (NEW.version IS DISTINCT FROM OLD.version)"
        f" EXECUTE FUNCTION {TRIGGER_FUNCTION}()"
    )


def downgrade() -> None:
    op.execute(f"DROP TRIGGER {TRIGGER} ON agent_sessions")
    op.execute(f"DROP FUNCTION {TRIGGER_FUNCTION}()")
    op.drop_index(op.f("ix_agent_cost_events_session_id_created_at"), "agent_cost_events")
    op.drop_index(op.f("ix_agent_sessions_changed_at"), "agent_sessions")
    op.drop_index(op.f("ix_agent_sessions_last_seen_at_working"), "agent_sessions")
    op.drop_index(op.f("ix_agent_sessions_resume_due_at_owed"), "agent_sessions")
    for name in (
        "wake_failures_non_negative",
        "resume_attempts_non_negative",
        "resume_due_only_while_working",
    ):
        op.drop_constraint(op.f(f"ck_agent_sessions_{name}"), "agent_sessions", type_="check")
    for column in (
        "changed_at",
        "last_seen_at",
        "wake_failures",
        "resume_parked_at",
        "resume_attempts",
        "resume_due_at",
        "resume_token",
    ):
        op.drop_column("agent_sessions", column)
