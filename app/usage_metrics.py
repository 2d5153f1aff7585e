"""Counters of money spent, kept by ``lifecycle.charge`` (exported with the processes'
metrics by ``app.workers.metrics``). Charges made straight through
``BudgetRepository.charge`` are not counted: the repository does no I/O but SQL."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter

CHARGES: Final = Counter(
    "agent_charges_total", "LLM calls charged through lifecycle.charge (repeats excluded)"
)
SPEND: Final = Counter(
    "agent_spend_microdollars_total", "Microdollars charged through lifecycle.charge"
)
