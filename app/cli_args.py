"""Command-line values checked where they enter: every bad one is one line that names
the argument and the value, and exit status 2 (DESIGN.md §6c, "Operator input")."""

from __future__ import annotations

import argparse
import sys
import unicodedata
from collections.abc import Callable
from decimal import Decimal, InvalidOperation, localcontext
from typing import Final, NoReturn

from app.validation import BIGINT_MAX, MAX_ID_LENGTH

#: Exit status of bad usage (app.cli_errors.USAGE; repeated here to import nothing).
USAGE_STATUS: Final = 2
#: Digits a money figure may carry: enough for BIGINT microdollars, and exact arithmetic.
MAX_DIGITS: Final = 40


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one line, without the usage block."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(USAGE_STATUS)


def to_micro(text: str, *, dollars: bool) -> int:
    """``text`` as whole microdollars: dollars (``2.50``) when ``dollars``, else a count
    of microdollars. ``ValueError`` says why not: not a number, NaN or infinite, not
    exact to the microdollar, negative or beyond BIGINT. Nothing here raises anything else,
    whatever the text (``sNaN`` used to signal on the first multiplication)."""
    try:
        value = Decimal(text.strip())
    except (InvalidOperation, ValueError):
        raise ValueError("not a number") from None
    if not value.is_finite():
        raise ValueError("not a finite number")
    digits = value.as_tuple().digits
    if len(digits) > MAX_DIGITS or not -MAX_DIGITS <= value.adjusted() <= MAX_DIGITS:
        # Beyond any budget, or finer than any microdollar: refused before arithmetic.
        raise ValueError("out of range" if value.adjusted() > 0 else "finer than a microdollar")
    with localcontext() as exact:
        exact.prec = 3 * MAX_DIGITS
        micro = value.scaleb(6) if dollars else value
    if micro != micro.to_integral_value():
        raise ValueError("finer than a microdollar")
    if micro < 0:
        raise ValueError("negative")
    if micro > BIGINT_MAX:
        raise ValueError(f"more than the largest amount ({BIGINT_MAX} µ$)")
    return int(micro)


def whole_number(minimum: int, maximum: int, unit: str = "") -> Callable[[str], int]:
    """An argparse ``type``: an integer in ``[minimum, maximum]``."""
    suffix = f" {unit}" if unit else ""

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number{suffix}: {text!r}") from None
        what = unit or "the value"
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{what} must be {minimum} or more, got {value}")
        if value > maximum:
            raise argparse.ArgumentTypeError(f"{what} must be at most {maximum}, got {value}")
        return value

    return parse


def identifier(text: str) -> str:
    """An argparse ``type``: an id as the store accepts it (1 to 255 characters, not
    blank, no control character, no lone surrogate), so that a bad one never reaches SQL."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"an id must not be blank: {text!r}")
    if len(text) > MAX_ID_LENGTH:
        raise argparse.ArgumentTypeError(
            f"an id has at most {MAX_ID_LENGTH} characters, this one {len(text)}"
        )
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in text):
        raise argparse.ArgumentTypeError(f"an id has no control characters: {text!r}")
    return text
