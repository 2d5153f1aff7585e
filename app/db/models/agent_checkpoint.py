"""``agent_checkpoints``: the resumable state of a session, one row per saved iteration."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Identity,
    LargeBinary,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, JSONList, Microdollars, Str50, Str255, check_in
from app.domain import SessionStatus


class AgentCheckpoint(Base):
    """Everything an agent needs to resume (BDGT-04).

    Rows are stored as keyframes (full history, ``base_message_count == 0``) or deltas
    (only the messages after the parent's first ``base_message_count``). The repository
    always hands out the full ``message_history``; callers never see a delta.
    """

    __tablename__ = "agent_checkpoints"
    __table_args__ = (
        UniqueConstraint("session_id", "iteration_number"),
        CheckConstraint(check_in("agent_state", SessionStatus), name="agent_state"),
        CheckConstraint("iteration_number >= 0", name="iteration_non_negative"),
        CheckConstraint("session_cost_microdollars >= 0", name="session_cost_non_negative"),
        CheckConstraint("daily_budget_microdollars >= 0", name="daily_budget_non_negative"),
        CheckConstraint(
            "base_message_count >= 0 AND base_message_count <= message_count",
            name="base_within_count",
        ),
        CheckConstraint(
            "(base_message_count = 0) OR (parent_iteration IS NOT NULL)",
            name="delta_has_parent",
        ),
        CheckConstraint(
            "(base_message_count = 0) = (delta_depth = 0) AND delta_depth >= 0",
            name="delta_depth_consistent",
        ),
    )

    session_id: Mapped[Str255] = mapped_column(ForeignKey("agent_sessions.id", ondelete="CASCADE"))
    job_id: Mapped[Str255] = mapped_column(index=True)
    id: Mapped[int] = mapped_column(
        BigInteger, Identity(), primary_key=True, init=False, repr=False, sort_order=-1
    )
    message_history: Mapped[JSONList] = mapped_column(default_factory=list, repr=False)
    sandbox_id: Mapped[Str255 | None] = mapped_column(default=None)
    current_phase: Mapped[Str255 | None] = mapped_column(default=None)
    retry_counts: Mapped[dict[str, int]] = mapped_column(default_factory=dict)
    session_cost_microdollars: Mapped[Microdollars] = mapped_column(default=0)
    daily_budget_microdollars: Mapped[Microdollars] = mapped_column(default=0)
    iteration_number: Mapped[int] = mapped_column(default=0)
    agent_state: Mapped[Str50] = mapped_column(default=SessionStatus.WORKING.value)
    # Incremental storage (DESIGN.md §4); maintained by CheckpointRepository.
    message_count: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    base_message_count: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    parent_iteration: Mapped[int | None] = mapped_column(default=None)
    # Deltas between this row and its keyframe; bounds the chain a load must walk.
    delta_depth: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    history_digest: Mapped[bytes | None] = mapped_column(LargeBinary, default=None, repr=False)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now(), init=False, repr=False)
    updated_at: Mapped[datetime] = mapped_column(
        server_default=func.now(), onupdate=func.now(), init=False, repr=False
    )
