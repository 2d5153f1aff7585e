"""request ids belong to a user; top-ups take an idempotency key

* ``agent_cost_events`` is unique on ``(clerk_user_id, request_id)`` instead of
  ``request_id`` alone, and ``budget_reservations`` is keyed on the same pair
  (DESIGN.md §6c): the same request id from two users is two calls. Every existing row
  was unique on ``request_id`` alone, so it is unique on the pair too and keeps its
  meaning.
* ``budget_credits.idempotency_key``: a top-up retried with the same
  ``(clerk_user_id, idempotency_key)`` credits once. Existing credits have none.

The downgrade restores the global keys. Rows that only the per-user key allows (the
same request id under two users) cannot all keep their id under a global key: the
oldest keeps it, and each later one is renamed ``<first 222 characters>#<md5 of its
user>``. Its user, cost, day and tokens stay as they were, so no money leaves the books.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The later rows of a request id that two users share, renamed on the downgrade: the
# first 222 characters, "#", and 32 hex digits of the user fit the 255 of the column.
RENAME_SHARED = """
UPDATE {table} AS t SET request_id = left(t.request_id, 222) || '#' || md5(t.clerk_user_id)
FROM (
    SELECT ctid AS row_id,
           row_number() OVER (PARTITION BY request_id ORDER BY {oldest}) AS n
    FROM {table}
) AS ranked
WHERE t.ctid = ranked.row_id AND ranked.n > 1
"""


def upgrade() -> None:
    op.drop_constraint(op.f("uq_agent_cost_events_request_id"), "agent_cost_events", type_="unique")
    op.create_unique_constraint(
        op.f("uq_agent_cost_events_clerk_user_id_request_id"),
        "agent_cost_events",
        ["clerk_user_id", "request_id"],
    )
    op.drop_constraint(op.f("pk_budget_reservations"), "budget_reservations", type_="primary")
    op.create_primary_key(
        op.f("pk_budget_reservations"), "budget_reservations", ["clerk_user_id", "request_id"]
    )
    op.add_column(
        "budget_credits", sa.Column("idempotency_key", sa.String(length=255), nullable=True)
    )
    op.create_unique_constraint(
        op.f("uq_budget_credits_clerk_user_id_idempotency_key"),
        "budget_credits",
        ["clerk_user_id", "idempotency_key"],
    )


def downgrade() -> None:
    op.drop_constraint(
        op.f("uq_budget_credits_clerk_user_id_idempotency_key"), "budget_credits", type_="unique"
    )
    op.drop_column("budget_credits", "idempotency_key")
    op.execute(RENAME_SHARED.format(table="budget_reservations", oldest="created_at, ctid"))
    op.drop_constraint(op.f("pk_budget_reservations"), "budget_reservations", type_="primary")
    op.create_primary_key(op.f("pk_budget_reservations"), "budget_reservations", ["request_id"])
    op.execute(RENAME_SHARED.format(table="agent_cost_events", oldest="id"))
    op.drop_constraint(
        op.f("uq_agent_cost_events_clerk_user_id_request_id"), "agent_cost_events", type_="unique"
    )
    op.create_unique_constraint(
        op.f("uq_agent_cost_events_request_id"), "agent_cost_events", ["request_id"]
    )
