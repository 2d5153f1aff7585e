"""retention of finished sessions: when a completed session's checkpoints were purged

``purged_at`` is set when retention deletes a completed session's checkpoints (the row
and its ledger stay). The partial index holds exactly the completed sessions not yet
purged, ordered by completion, so each retention pass reads only what it will delete
and the index does not grow with the history of finished sessions.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "agent_sessions", sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.create_index(
        "ix_agent_sessions_completed_at_unpurged",
        "agent_sessions",
        ["completed_at"],
        postgresql_where=sa.text("status = 'completed' AND purged_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_agent_sessions_completed_at_unpurged", "agent_sessions")
    op.drop_column("agent_sessions", "purged_at")
