"""Repositories: async classes over an ``AsyncSession`` that flush but never commit."""

from app.repositories.budget import BudgetRepository, ChargeResult
from app.repositories.checkpoints import CheckpointInfo, CheckpointRepository
from app.repositories.events import (
    ClaimedEvent,
    EventRepository,
    NewEvent,
    session_event,
    threshold_events,
)
from app.repositories.resume import ResumeRepository
from app.repositories.sessions import WAKE_CHANNEL, SessionRepository

__all__ = [
    "WAKE_CHANNEL",
    "BudgetRepository",
    "ChargeResult",
    "CheckpointInfo",
    "CheckpointRepository",
    "ClaimedEvent",
    "EventRepository",
    "NewEvent",
    "ResumeRepository",
    "SessionRepository",
    "session_event",
    "threshold_events",
]
