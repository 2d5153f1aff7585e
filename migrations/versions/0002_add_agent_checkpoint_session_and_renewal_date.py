"""add agent_checkpoints, agent_sessions, and subscription_renewal_date

The agent migration exactly as the original plan (43-01) lists it, types included:
Integer money and JSON documents. Revision 0003 widens and hardens them.

Revision ID: 0002
Revises: 0001
Create Date: 2026-02-20
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "agent_checkpoints",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("session_id", sa.String(length=255), nullable=False),
        sa.Column("job_id", sa.String(length=255), nullable=False),
        sa.Column("message_history", sa.JSON(), nullable=False),
        sa.Column("sandbox_id", sa.String(length=255), nullable=True),
        sa.Column("current_phase", sa.String(length=255), nullable=True),
        sa.Column("retry_counts", sa.JSON(), nullable=False),
        sa.Column("session_cost_microdollars", sa.Integer(), nullable=False),
        sa.Column("daily_budget_microdollars", sa.Integer(), nullable=False),
        sa.Column("iteration_number", sa.Integer(), nullable=False),
        sa.Column("agent_state", sa.String(length=50), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_checkpoints")),
    )
    op.create_index(op.f("ix_agent_checkpoints_session_id"), "agent_checkpoints", ["session_id"])
    op.create_index(op.f("ix_agent_checkpoints_job_id"), "agent_checkpoints", ["job_id"])

    op.create_table(
        "agent_sessions",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("job_id", sa.String(length=255), nullable=False),
        sa.Column("clerk_user_id", sa.String(length=255), nullable=False),
        sa.Column("tier", sa.String(length=50), nullable=False),
        sa.Column("model_used", sa.String(length=100), nullable=False),
        sa.Column("status", sa.String(length=50), nullable=False),
        sa.Column("cumulative_cost_microdollars", sa.Integer(), nullable=False),
        sa.Column("daily_budget_microdollars", sa.Integer(), nullable=False),
        sa.Column(
            "started_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("last_checkpoint_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_sessions")),
    )
    op.create_index(op.f("ix_agent_sessions_job_id"), "agent_sessions", ["job_id"])
    op.create_index(op.f("ix_agent_sessions_clerk_user_id"), "agent_sessions", ["clerk_user_id"])

    op.add_column(
        "user_settings",
        sa.Column("subscription_renewal_date", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_column("user_settings", "subscription_renewal_date")
    op.drop_index(op.f("ix_agent_sessions_clerk_user_id"), table_name="agent_sessions")
    op.drop_index(op.f("ix_agent_sessions_job_id"), table_name="agent_sessions")
    op.drop_table("agent_sessions")
    op.drop_index(op.f("ix_agent_checkpoints_job_id"), table_name="agent_checkpoints")
    op.drop_index(op.f("ix_agent_checkpoints_session_id"), table_name="agent_checkpoints")
    op.drop_table("agent_checkpoints")
