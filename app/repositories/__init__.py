"""Repositories: async classes over an ``AsyncSession`` that flush but never commit."""

from app.repositories.budget import BudgetRepository, ChargeResult
from app.repositories.checkpoints import CheckpointInfo, CheckpointRepository
from app.repositories.resume import ResumeRepository
from app.repositories.retention import Deleted, Purged, RetentionRepository
from app.repositories.sessions import WAKE_CHANNEL, SessionRepository

__all__ = [
    "WAKE_CHANNEL",
    "BudgetRepository",
    "ChargeResult",
    "CheckpointInfo",
    "CheckpointRepository",
    "Deleted",
    "Purged",
    "ResumeRepository",
    "RetentionRepository",
    "SessionRepository",
]
