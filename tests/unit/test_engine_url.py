"""Database URLs: both spellings are accepted, anything else is a typed error."""

from __future__ import annotations

import pytest

from app.db.engine import mask_password, normalize_url
from app.domain import InvalidInput


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:p@h:5432/db",
        "postgresql+asyncpg://u:p@h:5432/db",
        "postgres://u:p@h:5432/db",
    ],
)
def test_postgres_urls_normalise_to_asyncpg(url: str) -> None:
    parsed = normalize_url(url)
    assert parsed.drivername == "postgresql+asyncpg"
    assert (parsed.host, parsed.port, parsed.database, parsed.password) == ("h", 5432, "db", "p")


@pytest.mark.parametrize("url", ["mysql://u@h/db", "sqlite:///x.db", "not a url"])
def test_other_urls_are_rejected(url: str) -> None:
    with pytest.raises(InvalidInput) as info:
        normalize_url(url)
    assert info.value.field == "url"


def test_passwords_are_masked() -> None:
    masked = mask_password("postgresql://admin:hunter2@db.internal:5432/prod")
    assert "hunter2" not in masked
    assert "admin:***@db.internal" in masked
