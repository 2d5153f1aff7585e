"""Settings build with no environment, and .env.example documents every one of them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.domain import Tier
from app.settings import OPUS, SONNET, Settings

ENV_EXAMPLE = Path(__file__).resolve().parents[2] / ".env.example"


def test_settings_build_with_nothing_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    s = Settings(_env_file=None)
    assert s.database_url is None
    assert s.model_prices[OPUS].output_per_mtok == 75_000_000
    assert s.model_prices[SONNET].input_per_mtok == 3_000_000


def test_env_example_documents_every_setting() -> None:
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), re.M))
    expected = {name.upper() for name in Settings.model_fields}
    assert expected - documented == set()


def test_env_example_values_are_the_defaults() -> None:
    assert Settings(_env_file=ENV_EXAMPLE) == Settings(_env_file=None)


def test_tier_maps_to_model_and_allowance() -> None:
    s = Settings(_env_file=None)
    assert s.model_for(Tier.CTO_SCALE) == OPUS
    assert s.model_for(Tier.PARTNER) == SONNET
    assert s.model_for(Tier.BOOTSTRAPPER) == SONNET
    assert s.allowance_for(Tier.PARTNER) == s.tier_allowance_partner


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIER_MODEL_PARTNER", OPUS)
    monkeypatch.setenv("TIER_ALLOWANCE_PARTNER", "123")
    s = Settings(_env_file=None)
    assert s.model_for(Tier.PARTNER) == OPUS
    assert s.allowance_for(Tier.PARTNER) == 123
