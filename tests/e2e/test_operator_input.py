"""Operator input (DESIGN.md §6c): every bad value given to ``python -m app``, on the
command line or in the environment, is exit status 2 and one line that names the
argument and the value; no traceback, no exception class name, no SQL."""

from __future__ import annotations

import re

import pytest

from app.budget.pricing import parse_usage
from app.cli import main
from app.domain import InvalidInput
from tests.e2e.conftest import base_env, run_app

LATER = "2999-01-01T00:00:00Z"
PRICE = ["prices", "set", "claude-x", "--output", "$1", "--from", LATER]

#: (argv, extra environment, what the line must name: the argument, then the value)
BAD: list[tuple[list[str], dict[str, str], tuple[str, str]]] = [
    ([*PRICE, "--input", "$sNaN"], {}, ("--input", "$sNaN")),
    ([*PRICE, "--input", "NaN"], {}, ("--input", "NaN")),
    ([*PRICE, "--input", "$inf"], {}, ("--input", "$inf")),
    ([*PRICE, "--input", "-3"], {}, ("--input", "-3")),
    ([*PRICE, "--input", "3.75"], {}, ("--input", "$3.75")),  # dollars without "$"
    ([*PRICE, "--input", "1e99999999"], {}, ("--input", "1e99999999")),
    ([*PRICE[:-1], "9999-12-31T23:59:59-23:59", "--input", "1"], {}, ("--from", "9999-12-31")),
    (["top-up", "u", "sNaN"], {}, ("AMOUNT_USD", "sNaN")),
    (["top-up", "u", "NaN"], {}, ("AMOUNT_USD", "NaN")),
    (["top-up", "u", "Infinity"], {}, ("AMOUNT_USD", "Infinity")),
    (["top-up", "u", "1e99999999"], {}, ("AMOUNT_USD", "1e99999999")),
    (["top-up", "u", "10000000000000"], {}, ("AMOUNT_USD", "10000000000000")),
    (["top-up", "u", "$5 USD"], {}, ("AMOUNT_USD", "$5 USD")),
    (["top-up", "u\x1b[2J", "5"], {}, ("USER_ID", "\\x1b[2J")),
    (["sessions", "purge", "--older-than", "3000000000"], {}, ("--older-than", "3000000000")),
    (["sessions", "purge", "--older-than", "30d"], {}, ("--older-than", "30d")),
    (["sessions", "purge", "--older-than", "-1"], {}, ("--older-than", "-1")),
    (["sessions", "list", "--limit", "-1"], {}, ("--limit", "-1")),
    (["sessions", "show", "a\nb"], {}, ("id", "a\\nb")),
    (["status", "--top", "-5"], {}, ("--top", "-5")),
    (["status", "--top", "1e3"], {}, ("--top", "1e3")),
    (["worker", "--batch-size", "0"], {}, ("--batch-size", "0")),
    (["daemon", "--batch-size", "99999999999999999999"], {}, ("--batch-size", "9999999999")),
    (["daemon", "--metrics-port", "70000"], {}, ("--metrics-port", "70000")),
    (["demo", "--sessions", "-2"], {}, ("--sessions", "-2")),
    (["status"], {"RETENTION_DAYS": "3000000000"}, ("RETENTION_DAYS", "3000000000")),
    (["status"], {"WEBHOOK_TIMEOUT_SECONDS": "inf"}, ("WEBHOOK_TIMEOUT_SECONDS", "inf")),
    (["status"], {"DAEMON_INTERVAL": "NaN"}, ("DAEMON_INTERVAL", "NaN")),
    (["status"], {"RESERVATION_TTL_SECONDS": "1e12"}, ("RESERVATION_TTL_SECONDS", "1e12")),
    (["status"], {"LOG_LEVEL": "loud"}, ("LOG_LEVEL", "loud")),
]
CLASS_NAME = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception|Operation|Overflow)\b|\[<class")
SQL = re.compile(r"sqlalchemy|asyncpg|make_interval|SQLSTATE|\b(SELECT|UPDATE|INSERT)\b", re.I)


def check(code: int, output: str, argument: str, value: str) -> None:
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 2, lines
    assert len(lines) == 1, lines
    [line] = lines
    assert argument in line
    assert value in line
    assert "Traceback" not in line
    assert not CLASS_NAME.search(line), line
    assert not SQL.search(line), line


@pytest.fixture(scope="module")
def servers_env(database_url: str, redis_url: str) -> dict[str, str]:
    """Real servers, so that a value that slips through fails where it used to: in SQL."""
    return {"DATABASE_URL": database_url, "REDIS_URL": redis_url}


@pytest.mark.parametrize(("argv", "env", "named"), BAD, ids=lambda v: repr(v)[:60])
def test_a_bad_value_is_one_line_naming_it_and_exit_status_2(
    argv: list[str],
    env: dict[str, str],
    named: tuple[str, str],
    servers_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in {**servers_env, **env}.items():
        monkeypatch.setenv(name, value)
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's way out
        code = int(exit_.code or 0)
    out = capsys.readouterr()
    check(code, out.out + out.err, *named)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        ([*PRICE, "--input", "$sNaN"], ("--input", "$sNaN")),
        (["top-up", "u", "sNaN"], ("AMOUNT_USD", "sNaN")),
        (["sessions", "purge", "--older-than", "3000000000"], ("--older-than", "3000000000")),
    ],
)
async def test_the_reported_values_as_a_real_process(
    argv: list[str], named: tuple[str, str], servers_env: dict[str, str]
) -> None:
    """Issue 24 #18 as found: a 59-line traceback, ``InvalidOperation: [<class ...>]``
    and a ``make_interval(bigint)`` database error."""
    done = await run_app(base_env(**servers_env), *argv)
    check(done.returncode, done.stdout + done.stderr, *named)


def test_parse_usage_refuses_a_service_tier_that_is_not_a_string() -> None:
    usage = {"input_tokens": 1, "output_tokens": 1}
    for tier in (["batch"], {"batch": 1}, 2, b"batch"):
        with pytest.raises(InvalidInput) as refused:
            parse_usage({**usage, "service_tier": tier})
        assert refused.value.field == "usage.service_tier"
    with pytest.raises(InvalidInput) as fast:
        parse_usage({**usage, "speed": ["fast"]})
    assert fast.value.field == "usage.speed"
    assert parse_usage({**usage, "service_tier": "batch"}).batch
