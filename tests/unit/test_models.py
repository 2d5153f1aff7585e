"""Model shape, carried over from the original plan's test_agent_models.py."""

from __future__ import annotations

from sqlalchemy import BigInteger, Constraint, Index
from sqlalchemy.dialects.postgresql import JSONB

from app.db.base import Base
from app.db.models import AgentCheckpoint, AgentCostEvent, AgentSession, BudgetDay, UserSettings


def test_agent_checkpoint_defaults() -> None:
    cp = AgentCheckpoint(session_id="s-1", job_id="j-1")
    assert cp.message_history == []
    assert cp.retry_counts == {}
    assert cp.session_cost_microdollars == 0
    assert cp.daily_budget_microdollars == 0
    assert cp.iteration_number == 0
    assert cp.agent_state == "working"


def test_agent_checkpoint_defaults_are_not_shared() -> None:
    a = AgentCheckpoint(session_id="s-1", job_id="j-1")
    b = AgentCheckpoint(session_id="s-2", job_id="j-2")
    a.message_history.append({"role": "user", "content": "hi"})
    a.retry_counts["tool"] = 1
    assert b.message_history == []
    assert b.retry_counts == {}


def test_agent_session_defaults() -> None:
    s = AgentSession(id="s-1", job_id="j-1", clerk_user_id="u-1", tier="partner", model_used="m")
    assert s.status == "working"
    assert s.cumulative_cost_microdollars == 0


def test_table_names() -> None:
    assert AgentCheckpoint.__tablename__ == "agent_checkpoints"
    assert AgentSession.__tablename__ == "agent_sessions"


def test_user_settings_has_renewal_date() -> None:
    assert hasattr(UserSettings, "subscription_renewal_date")
    us = UserSettings(clerk_user_id="u-1", tier="partner")
    assert us.subscription_renewal_date is None
    assert us.budget_override_microdollars is None


def test_money_columns_are_bigint() -> None:
    money = [
        c
        for table in Base.metadata.tables.values()
        for c in table.columns
        if c.name.endswith(("microdollars", "_per_mtok"))
    ]
    # 9, plus the day's reserved amount, a reservation's amount, five price classes and
    # the same five of a price band.
    assert len(money) == 21
    assert all(isinstance(c.type, BigInteger) for c in money), [
        f"{c.table.name}.{c.name}" for c in money if not isinstance(c.type, BigInteger)
    ]


def test_documents_are_jsonb() -> None:
    table = AgentCheckpoint.__table__
    assert isinstance(table.c.message_history.type, JSONB)
    assert isinstance(table.c.retry_counts.type, JSONB)


def test_every_constraint_is_named() -> None:
    unnamed: list[str] = []
    for t in Base.metadata.tables.values():
        items: list[Constraint | Index] = [*t.constraints, *t.indexes]
        unnamed += [f"{t.name}:{type(c).__name__}" for c in items if not c.name]
    assert unnamed == []


def test_all_models_exported() -> None:
    import app.db.models as models

    assert set(models.__all__) == {
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
    }
    assert {m.__tablename__ for m in (AgentCostEvent, BudgetDay)} == {
        "agent_cost_events",
        "budget_days",
    }
