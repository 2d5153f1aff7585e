"""Repositories: async classes over an ``AsyncSession`` that flush but never commit."""

from app.repositories.budget import BudgetRepository, ChargeResult, Reservation
from app.repositories.checkpoints import CheckpointInfo, CheckpointRepository
from app.repositories.events import (
    ClaimedEvent,
    EventRepository,
    NewEvent,
    session_event,
    threshold_events,
)
from app.repositories.prices import PriceEntry, PriceRepository
from app.repositories.resume import ResumeRepository
from app.repositories.retention import Deleted, Purged, RetentionRepository
from app.repositories.sessions import WAKE_CHANNEL, SessionRepository
from app.repositories.users import KEEP, UserRepository

__all__ = [
    "KEEP",
    "WAKE_CHANNEL",
    "BudgetRepository",
    "ChargeResult",
    "CheckpointInfo",
    "CheckpointRepository",
    "ClaimedEvent",
    "Deleted",
    "EventRepository",
    "NewEvent",
    "PriceEntry",
    "PriceRepository",
    "Purged",
    "Reservation",
    "ResumeRepository",
    "RetentionRepository",
    "SessionRepository",
    "UserRepository",
    "session_event",
    "threshold_events",
]
