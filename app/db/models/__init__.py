"""Every mapped model, importable from one place."""

from app.db.models.agent_checkpoint import AgentCheckpoint
from app.db.models.agent_cost_event import AgentCostEvent
from app.db.models.agent_event import AgentEvent
from app.db.models.agent_session import AgentSession
from app.db.models.budget_credit import BudgetCredit
from app.db.models.budget_day import BudgetDay
from app.db.models.budget_reservation import BudgetReservation
from app.db.models.price import Price, PriceBand
from app.db.models.user_settings import UserSettings

__all__ = [
    "AgentCheckpoint",
    "AgentCostEvent",
    "AgentEvent",
    "AgentSession",
    "BudgetCredit",
    "BudgetDay",
    "BudgetReservation",
    "Price",
    "PriceBand",
    "UserSettings",
]
