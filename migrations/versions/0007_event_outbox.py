"""agent_events: the transactional outbox of budget and session events

Each event is written in the transaction of the change it reports (a threshold crossed,
a sleep, wake, stop or top-up, a parked resume, a fenced runner) and a deliverer POSTs
it as a signed webhook, at least once. ``dedup_key`` is unique, so "once per user-day
and threshold" holds under concurrent charges.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EVENT_TYPES = (
    "budget.threshold",
    "session.slept",
    "session.woken",
    "session.stopped",
    "budget.topped_up",
    "resume.parked",
    "runner.fenced",
)


def upgrade() -> None:
    types = ", ".join(f"'{t}'" for t in EVENT_TYPES)
    op.create_table(
        "agent_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("type", sa.String(50), nullable=False),
        sa.Column("dedup_key", sa.String(255), nullable=False),
        sa.Column("payload", postgresql.JSONB(), nullable=False),
        sa.Column("clerk_user_id", sa.String(255), nullable=True),
        sa.Column("session_id", sa.String(255), nullable=True),
        sa.Column(
            "event_id",
            postgresql.UUID(as_uuid=False),
            server_default=sa.func.gen_random_uuid(),
            nullable=False,
        ),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "next_attempt_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint(f"type IN ({types})", name=op.f("ck_agent_events_type_known")),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_agent_events_attempts_non_negative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_events")),
        sa.UniqueConstraint("dedup_key", name=op.f("uq_agent_events_dedup_key")),
        sa.UniqueConstraint("event_id", name=op.f("uq_agent_events_event_id")),
    )
    op.create_index(op.f("ix_agent_events_clerk_user_id"), "agent_events", ["clerk_user_id"])
    op.create_index(
        op.f("ix_agent_events_next_attempt_at_pending"),
        "agent_events",
        ["next_attempt_at"],
        postgresql_where=sa.text("delivered_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_agent_events_next_attempt_at_pending"), "agent_events")
    op.drop_index(op.f("ix_agent_events_clerk_user_id"), "agent_events")
    op.drop_table("agent_events")
