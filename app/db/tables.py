"""Core table handles for the statements the repositories build.

The mapped classes are the schema; the repositories mostly write Core SQL (CTEs,
``ON CONFLICT``, ``RETURNING``), and for that they need the ``Table`` behind each class.
``Model.__table__`` is typed as a ``FromClause``, so the one cast to ``Table`` lives
here, under the table's own name, and every module uses these handles.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import Table

from app.db.models import (
    AgentCheckpoint,
    AgentCostEvent,
    AgentEvent,
    AgentSession,
    BudgetCredit,
    BudgetDay,
    BudgetReservation,
    Price,
    PriceBand,
    UserSettings,
)

agent_checkpoints = cast(Table, AgentCheckpoint.__table__)
agent_cost_events = cast(Table, AgentCostEvent.__table__)
agent_events = cast(Table, AgentEvent.__table__)
agent_sessions = cast(Table, AgentSession.__table__)
budget_credits = cast(Table, BudgetCredit.__table__)
budget_days = cast(Table, BudgetDay.__table__)
budget_reservations = cast(Table, BudgetReservation.__table__)
prices = cast(Table, Price.__table__)
price_bands = cast(Table, PriceBand.__table__)
user_settings = cast(Table, UserSettings.__table__)

__all__ = [
    "agent_checkpoints",
    "agent_cost_events",
    "agent_events",
    "agent_sessions",
    "budget_credits",
    "budget_days",
    "budget_reservations",
    "price_bands",
    "prices",
    "user_settings",
]
