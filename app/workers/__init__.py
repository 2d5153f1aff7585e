"""The long-running processes: the wake worker and the budget daemon."""

from app.workers.daemon import BudgetDaemon, DaemonReport
from app.workers.wake import WakeReport, WakeWorker

__all__ = ["BudgetDaemon", "DaemonReport", "WakeReport", "WakeWorker"]
