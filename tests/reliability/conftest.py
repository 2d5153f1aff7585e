"""Reliability tests share the integration harness (servers, empty tables per test)."""

from tests.integration.conftest import _empty_tables, store

__all__ = ["_empty_tables", "store"]
