"""``app.webhooks.verify`` reads headers that whoever sent the request wrote: any values
at all are an answer, True or False, never an exception. ``sign`` writes what Standard
Webhooks defines, one signature per secret during a key rotation."""

from __future__ import annotations

import base64
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.domain import InvalidInput
from app.webhooks import ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign, verify

SECRET = "whsec_" + base64.b64encode(b"a key of thirty-two bytes, say..").decode()
BODY = b'{"id":"e-1"}'
NOW = 1_800_000_000.0  # a float, like time.time()

any_char = st.characters(codec=None, categories=None)  # NUL and lone surrogates included
stamps = st.one_of(
    st.text(any_char, max_size=20),
    st.just(str(int(NOW))),  # a fresh timestamp, so that the signatures are compared
    st.sampled_from(["9" * 400, "١٢٣", "1_0", "", "-1"]),
    st.integers().map(str),
)
signatures = st.one_of(
    st.text(any_char, max_size=90),
    st.lists(st.text(any_char, max_size=50).map(lambda v: f"v1,{v}"), max_size=4).map(" ".join),
)


@given(
    msg_id=st.text(any_char, max_size=40),
    stamp=stamps,
    signed=signatures,
    extra=st.dictionaries(st.text(any_char, max_size=10), st.text(any_char, max_size=10)),
)
def test_any_headers_are_true_or_false_never_an_exception(
    msg_id: str, stamp: str, signed: str, extra: dict[str, str]
) -> None:
    headers = {**extra, ID_HEADER: msg_id, TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: signed}
    assert verify(SECRET, headers, BODY, now=NOW) in (True, False)


def test_the_malformed_headers_that_used_to_raise_are_refused() -> None:
    good = sign(SECRET, "e-1", int(NOW), BODY)
    hostile = [
        {**good, SIGNATURE_HEADER: good[SIGNATURE_HEADER][:-1] + "é"},  # non-ASCII signature
        {**good, TIMESTAMP_HEADER: "9" * 400},  # a huge timestamp: float overflow
        {**good, TIMESTAMP_HEADER: "9" * 5000},  # beyond int()'s digit limit
        {**good, TIMESTAMP_HEADER: "١٢٣"},  # non-ASCII digits int() accepts
        {**good, ID_HEADER: "e-\ud800"},  # a lone surrogate cannot be encoded
        {SIGNATURE_HEADER: "garbage"},
        {},
    ]
    for headers in hostile:
        assert verify(SECRET, headers, BODY, now=NOW) is False, headers


def test_a_good_signature_verifies_whatever_the_header_case() -> None:
    now = int(time.time())
    headers = sign(SECRET, "e-1", now, BODY)
    assert verify(SECRET, headers, BODY, now=now)
    assert verify(SECRET, {k.title(): v for k, v in headers.items()}, BODY, now=now)
    other = "whsec_" + base64.b64encode(b"another key entirely, 32 bytes.").decode()
    assert not verify(other, headers, BODY, now=now)


def test_a_rotation_signs_with_every_secret_and_each_verifies() -> None:
    old, new = SECRET, "whsec_" + base64.b64encode(b"the next key, thirty-two bytes..").decode()
    headers = sign(f"{new} {old}", "e-1", int(NOW), BODY)
    assert headers[SIGNATURE_HEADER].count("v1,") == 2
    assert verify(old, headers, BODY, now=NOW)
    assert verify(new, headers, BODY, now=NOW)


@pytest.mark.parametrize("secret", ["", "   ", "whsec_not base64!"])
def test_a_bad_secret_is_invalid_input_naming_it(secret: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        sign(secret, "e-1", int(NOW), BODY)
    assert caught.value.field == "webhook_secret"
