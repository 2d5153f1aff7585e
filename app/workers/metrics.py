"""Prometheus metrics of the worker and the daemon (served with ``--metrics-port``)."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram, start_http_server

# Counted by lifecycle.charge, which sits below the workers: defined there, exported here.
from app.usage_metrics import CHARGES, SPEND

SESSIONS: Final = Gauge("agent_sessions", "Agent sessions by status", ["status"])
SLEEPS: Final = Counter("agent_sleeps_total", "Sessions put to sleep", ["by"])
WAKES: Final = Counter("agent_wakes_total", "Sessions woken", ["reason"])
STOPS: Final = Counter("agent_stops_total", "Sessions stopped above 110% of the daily budget")
WAKE_FAILURES: Final = Counter("agent_wake_failures_total", "Wakes that failed and were retried")
STORE_ERRORS: Final = Counter("agent_store_errors_total", "Redis writes that failed")
WAKE_LAG: Final = Gauge(
    "agent_wake_lag_seconds", "How long the most overdue sleeping session has been due"
)
DUE: Final = Gauge("agent_sleepers_due", "Sleeping sessions whose wake time has passed")
RESUMES: Final = Counter(
    "agent_resumes_total", "Resume deliveries by outcome", ["outcome"]
)  # outcome: acknowledged | failed | unrestorable
RESUME_ATTEMPTS: Final = Counter(
    "agent_resume_attempts_total", "Resume deliveries handed to hooks", ["kind"]
)  # kind: first (at the wake) | redelivery (owed: retried, unparked, or a fenced runner's)
PARKED: Final = Gauge("agent_sessions_parked", "Sessions whose resume ran out of attempts")
PARKED_TOTAL: Final = Counter("agent_resume_parks_total", "Resumes parked after the last attempt")
RUNNERS_LOST: Final = Counter(
    "agent_runners_lost_total", "Working sessions delivered again after their runner went silent"
)
HOOKS_RUNNING: Final = Gauge("agent_resume_hooks_running", "Resume hooks running in this worker")
RECONCILED: Final = Counter("agent_store_reconciled_total", "Redis keys rewritten from PostgreSQL")
PURGED: Final = Counter(
    "agent_sessions_purged_total", "Completed sessions whose checkpoints retention deleted"
)
WEBHOOK_DELIVERIES: Final = Counter(
    "agent_webhook_deliveries_total", "Webhook deliveries of outbox events by outcome", ["outcome"]
)  # outcome: delivered | failed
EVENTS_PENDING: Final = Gauge("agent_events_pending", "Outbox events not yet delivered")
EVENTS_OLDEST_PENDING: Final = Gauge(
    "agent_events_oldest_pending_seconds", "Age of the oldest undelivered outbox event"
)
BATCH_SECONDS: Final = Histogram(
    "agent_batch_duration_seconds",
    "Duration of one worker, daemon or event deliverer batch",
    ["process"],
)


def serve(port: int | None) -> None:
    """Expose the metrics over HTTP on ``port`` (no-op for None)."""
    if port is not None:
        start_http_server(port)


__all__ = [
    "BATCH_SECONDS",
    "CHARGES",
    "DUE",
    "EVENTS_OLDEST_PENDING",
    "EVENTS_PENDING",
    "HOOKS_RUNNING",
    "PARKED",
    "PARKED_TOTAL",
    "RECONCILED",
    "RESUMES",
    "RESUME_ATTEMPTS",
    "RUNNERS_LOST",
    "SESSIONS",
    "SLEEPS",
    "SPEND",
    "STOPS",
    "STORE_ERRORS",
    "WAKES",
    "WAKE_FAILURES",
    "WAKE_LAG",
    "WEBHOOK_DELIVERIES",
    "serve",
]
