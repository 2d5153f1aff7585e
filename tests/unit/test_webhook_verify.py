"""``app.webhooks.verify`` reads a header that whoever sent the request wrote: any string
at all is an answer, True or False, never an exception (DESIGN.md §6c)."""

from __future__ import annotations

import time

from hypothesis import given
from hypothesis import strategies as st

from app.webhooks import sign, signature, verify

SECRET = "whsec-verify"
BODY = b'{"id":"e-1"}'
NOW = 1_800_000_000.0  # a float, like time.time()

any_char = st.characters(codec=None, categories=None)  # NUL and lone surrogates included
fragments = st.one_of(
    st.text(any_char, max_size=30),
    st.sampled_from(["t=", "v1=", ",", "=", "t=1", "v1=é", "t=" + "9" * 400, "t=١٢٣", "t=1_0"]),
    st.just(f"t={int(NOW)}"),  # a fresh timestamp, so that v1 is compared
    st.integers().map(lambda n: f"t={n}"),
    st.text(any_char, max_size=70).map(lambda v: f"v1={v}"),
)


@given(header=st.one_of(st.text(any_char), st.lists(fragments, max_size=6).map(",".join)))
def test_any_header_is_true_or_false_never_an_exception(header: str) -> None:
    assert verify(SECRET, header, BODY, now=NOW) in (True, False)


def test_the_malformed_headers_that_used_to_raise_are_refused() -> None:
    good = signature(SECRET, int(NOW), BODY)
    hostile = [
        f"t={int(NOW)},v1={good[:-1]}é",  # non-ASCII v1: compare_digest raised TypeError
        f"t={'9' * 400},v1={good}",  # a huge t: the float subtraction raised OverflowError
        f"t={'9' * 5000},v1={good}",  # beyond int()'s digit limit: ValueError, then more
        f"t=١٢٣,v1={good}",  # non-ASCII digits int() accepts
        "t=\ud800,v1=\x00",
        "garbage",
        "",
    ]
    for header in hostile:
        assert verify(SECRET, header, BODY, now=NOW) is False, header


def test_a_good_signature_still_verifies() -> None:
    now = int(time.time())
    assert verify(SECRET, sign(SECRET, now, BODY), BODY, now=now)
    assert not verify("whsec-other", sign(SECRET, now, BODY), BODY, now=now)
