"""``agent_sessions``: one row per agent run, the unit that sleeps and wakes."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, Index, String, func, text
from sqlalchemy.orm import Mapped, mapped_column, validates

from app.db.base import Base, Microdollars, Str50, Str100, Str255, check_in
from app.domain import SessionStatus, Tier
from app.validation import require_id


class AgentSession(Base):
    """An agent run; ``model_used`` is fixed at creation (BDGT-05), ``version`` counts moves."""

    __tablename__ = "agent_sessions"
    __table_args__ = (
        CheckConstraint(check_in("tier", Tier), name="tier"),
        CheckConstraint(check_in("status", SessionStatus), name="status"),
        CheckConstraint("cumulative_cost_microdollars >= 0", name="cumulative_cost_non_negative"),
        CheckConstraint("daily_budget_microdollars >= 0", name="daily_budget_non_negative"),
        # wake_at is set exactly while the session sleeps.
        CheckConstraint(
            "(status = 'sleeping') = (wake_at IS NOT NULL)", name="wake_at_iff_sleeping"
        ),
        Index(
            "ix_agent_sessions_wake_at_sleeping",
            "wake_at",
            postgresql_where=text("status = 'sleeping'"),
        ),
        # A resume is owed exactly while the session works; a parked one is owed no more.
        CheckConstraint(
            "resume_due_at IS NULL OR status = 'working'", name="resume_due_only_while_working"
        ),
        CheckConstraint("resume_attempts >= 0", name="resume_attempts_non_negative"),
        CheckConstraint("wake_failures >= 0", name="wake_failures_non_negative"),
        Index(
            "ix_agent_sessions_resume_due_at_owed",
            "resume_due_at",
            postgresql_where=text("resume_due_at IS NOT NULL"),
        ),
        Index(
            "ix_agent_sessions_last_seen_at_working",
            "last_seen_at",
            postgresql_where=text("status = 'working'"),
        ),
        Index("ix_agent_sessions_changed_at", "changed_at"),
        # Retention reads the completed sessions whose checkpoints are still kept.
        Index(
            "ix_agent_sessions_completed_at_unpurged",
            "completed_at",
            postgresql_where=text("status = 'completed' AND purged_at IS NULL"),
        ),
    )

    id: Mapped[Str255] = mapped_column(primary_key=True)
    job_id: Mapped[Str255] = mapped_column(index=True)
    clerk_user_id: Mapped[Str255] = mapped_column(index=True)
    tier: Mapped[Str50]
    model_used: Mapped[Str100]
    status: Mapped[Str50] = mapped_column(
        default=SessionStatus.WORKING.value, server_default=SessionStatus.WORKING.value
    )
    cumulative_cost_microdollars: Mapped[Microdollars] = mapped_column(
        default=0, server_default=text("0")
    )
    daily_budget_microdollars: Mapped[Microdollars] = mapped_column(
        default=0, server_default=text("0")
    )
    started_at: Mapped[datetime] = mapped_column(server_default=func.now(), init=False)
    last_checkpoint_at: Mapped[datetime | None] = mapped_column(default=None)
    completed_at: Mapped[datetime | None] = mapped_column(default=None)
    wake_at: Mapped[datetime | None] = mapped_column(default=None)
    version: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    #: The current runner's fencing token: new on every move to ``working``.
    resume_token: Mapped[str | None] = mapped_column(String(64), default=None)
    #: When the next resume delivery is due (NULL: none owed). A delivery in flight
    #: holds it one lease ahead; the acknowledgement clears it.
    resume_due_at: Mapped[datetime | None] = mapped_column(default=None)
    resume_attempts: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    #: Set when the deliveries ran out (RESUME_MAX_ATTEMPTS); cleared by a redelivery.
    resume_parked_at: Mapped[datetime | None] = mapped_column(default=None)
    #: Failed attempts to wake this sleeper (its checkpoint would not restore).
    wake_failures: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    #: The runner's last sign of life (a heartbeat, a delivery, an acknowledgement),
    #: on the database clock; charges and checkpoints count through their own stamps.
    last_seen_at: Mapped[datetime] = mapped_column(server_default=func.now(), init=False)
    #: When ``version`` last moved, stamped by a trigger: the Redis mirror reconciles
    #: from it.
    changed_at: Mapped[datetime] = mapped_column(server_default=func.now(), init=False)
    #: When retention deleted this completed session's checkpoints (RETENTION_DAYS
    #: after completion); the row and its ledger stay.
    purged_at: Mapped[datetime | None] = mapped_column(default=None)

    @validates("id", "job_id", "clerk_user_id")
    def _valid_id(self, key: str, value: str) -> str:
        # The id rule (DESIGN.md §6c) holds for a row built by hand too.
        return require_id(value, key)
