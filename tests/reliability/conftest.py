"""Reliability tests share the integration harness (servers, empty tables per test)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _empty_tables(clean_tables: None) -> None:
    """Every test here leaves the shared database empty (see tests/fixtures.py)."""
