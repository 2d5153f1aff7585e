"""The one masking rule (DESIGN.md §6c): what a URL or a text looks like once its
secrets are masked, for every way a password or token can sit in a URL."""

from __future__ import annotations

import pytest

from app.settings import Settings, mask_secrets, mask_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:pw@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u@h/db?password=pw&sslmode=require", "postgresql://u@h/db?password=***&sslmode=require"),
        ("postgresql+asyncpg://u:p%40ss@h/db", "postgresql+asyncpg://u:***@h/db"),
        ("redis://default:pw@127.0.0.1:6379/0", "redis://default:***@127.0.0.1:6379/0"),
        ("rediss://:pw@h:6380", "rediss://:***@h:6380"),
        ("https://h/hook?token=abc&x=1", "https://h/hook?token=***&x=1"),
        ("postgresql://h/db", "postgresql://h/db"),
    ],
)  # fmt: skip
def test_mask_url_hides_passwords_and_credential_like_query_values(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_a_webhook_url_shows_none_of_its_query_values() -> None:
    shown = mask_url("https://a:b@h/hook?id=team-7&sig=zz", every_query_value=True)
    assert shown == "https://a:***@h/hook?id=***&sig=***"


def test_every_secret_of_the_settings_is_masked_in_any_text() -> None:
    settings = Settings(
        _env_file=None,
        database_url="postgresql://u:p%40ss-1@h/db?password=qpw-2",
        redis_url="redis://default:rpw-3@h:6379/0",
        webhook_url="https://hooks:hpw-4@h/x?team=tok-abc-5&v=1",
        webhook_secret="whsec-6",
    )
    text = "p%40ss-1 p@ss-1 qpw-2 rpw-3 hpw-4 tok-abc-5 whsec-6 v=1"
    assert mask_secrets(text, settings.secrets()) == "*** *** *** *** *** *** *** v=1"
