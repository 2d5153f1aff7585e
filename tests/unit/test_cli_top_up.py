"""``python -m app top-up USER_ID AMOUNT_USD``: the amount is parsed exactly, or refused."""

from __future__ import annotations

import pytest

from app.bootstrap import UsageError
from app.cli import build_parser, format_usd, parse_usd


@pytest.mark.parametrize(
    ("text", "micro"),
    [("10", 10_000_000), ("2.50", 2_500_000), ("$0.000001", 1), ("1e3", 1_000_000_000)],
)
def test_dollars_become_microdollars(text: str, micro: int) -> None:
    assert parse_usd(text) == micro


@pytest.mark.parametrize("text", ["0", "-5", "0.0000001", "ten", "", "nan", "inf"])
def test_bad_amounts_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError, match="AMOUNT_USD"):
        parse_usd(text)


def test_the_command_takes_a_user_and_an_amount() -> None:
    args = build_parser().parse_args(["top-up", "user_1", "12.5"])
    assert (args.command, args.user_id, args.amount_usd) == ("top-up", "user_1", "12.5")


@pytest.mark.parametrize(
    ("micro", "text"), [(2_500_000, "$2.50"), (1, "$0.000001"), (1_234_000_000, "$1,234.00")]
)
def test_amounts_print_as_dollars(micro: int, text: str) -> None:
    assert format_usd(micro) == text
