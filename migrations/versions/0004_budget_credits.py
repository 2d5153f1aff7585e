"""budget credits: top-ups bought by a user, counted in the period they were bought in

A period's allowance is the tier's (or the override) plus the credits bought in that
period; the day a credit is bought on gets the whole amount at once (DESIGN.md §6b).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "budget_credits",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("clerk_user_id", sa.String(length=255), nullable=False),
        sa.Column("amount_microdollars", sa.BigInteger(), nullable=False),
        sa.Column("budget_day", sa.Date(), nullable=False),
        sa.Column("bought_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint(
            "amount_microdollars > 0", name=op.f("ck_budget_credits_amount_positive")
        ),
        sa.ForeignKeyConstraint(
            ["clerk_user_id"],
            ["user_settings.clerk_user_id"],
            name=op.f("fk_budget_credits_clerk_user_id_user_settings"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_budget_credits")),
    )
    op.create_index(
        op.f("ix_budget_credits_clerk_user_id_budget_day"),
        "budget_credits",
        ["clerk_user_id", "budget_day"],
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_budget_credits_clerk_user_id_budget_day"), table_name="budget_credits")
    op.drop_table("budget_credits")
