"""Webhook signatures as Standard Webhooks defines them (https://www.standardwebhooks.com),
so that a receiver verifies them with the ``standardwebhooks`` library in any language:

* ``webhook-id``: the event's id (receivers deduplicate on it);
* ``webhook-timestamp``: unix seconds when the attempt was signed;
* ``webhook-signature``: ``v1,<base64 HMAC-SHA256>`` of ``f"{id}.{timestamp}."`` followed
  by the exact body bytes, one per secret, space-separated (during a key rotation
  ``WEBHOOK_SECRET`` holds the new and the old secret, and both sign).

A secret is ``whsec_`` followed by the base64 of its key, as the standard writes it; any
other string is used as its UTF-8 bytes (a receiver then passes the base64 of those bytes
to the library). Pure code, no I/O: the deliverer signs with it, and a receiver in Python
can verify with it as well as with the library.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from typing import Final

from app.domain import InvalidInput

ID_HEADER: Final = "webhook-id"
TIMESTAMP_HEADER: Final = "webhook-timestamp"
SIGNATURE_HEADER: Final = "webhook-signature"
#: Not part of the standard: the event's type, for routing before the body is parsed.
EVENT_TYPE_HEADER: Final = "webhook-event-type"
SECRET_PREFIX: Final = "whsec_"  # noqa: S105 (a prefix, not a secret)
#: A receiver should refuse signatures older (or newer) than this: replays.
DEFAULT_TOLERANCE_SECONDS: Final = 300
#: Longer headers are not ours: refused before any parsing.
MAX_HEADER_LENGTH: Final = 4096
#: Unix seconds have 10 digits until the year 2286.
MAX_TIMESTAMP_DIGITS: Final = 12


def secret_keys(secret: str) -> list[bytes]:
    """The keys of ``secret``: one per space-separated secret (the first signs first).
    ``InvalidInput`` for an empty secret or a ``whsec_`` one that is not base64."""
    keys = []
    for each in secret.split():
        if each.startswith(SECRET_PREFIX):
            try:
                keys.append(base64.b64decode(each[len(SECRET_PREFIX) :], validate=True))
            except (binascii.Error, ValueError):
                raise InvalidInput(
                    "a whsec_ webhook secret must be base64 after its prefix",
                    field="webhook_secret",
                ) from None
        else:
            keys.append(each.encode())
    if not keys or not all(keys):
        raise InvalidInput("the webhook secret is empty", field="webhook_secret")
    return keys


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The base64 HMAC-SHA256 of ``f"{msg_id}.{timestamp}.".encode() + body``."""
    message = f"{msg_id}.{timestamp}.".encode() + body
    return base64.b64encode(hmac.new(key, message, hashlib.sha256).digest()).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body`` sent as ``msg_id`` at
    ``timestamp``: one ``v1`` signature per secret of ``secret``."""
    signed = " ".join(
        f"v1,{signature(key, msg_id, timestamp, body)}" for key in secret_keys(secret)
    )
    return {ID_HEADER: msg_id, TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: signed}


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
) -> bool:
    """True if one of the ``v1`` signatures in ``headers`` signs ``body`` under a key of
    ``secret`` and the timestamp is at most ``tolerance`` seconds from ``now``.

    Header names are matched without regard to case. Whatever the headers hold (a
    missing one, a timestamp that is not a few ASCII digits, a signature that is not
    ASCII, garbage), the answer is False, never an exception: the headers come from
    whoever sent the request. (A bad ``secret`` is the caller's, and is ``InvalidInput``.)
    """
    keys = secret_keys(secret)
    try:
        found = {str(name).lower(): value for name, value in headers.items()}
    except (AttributeError, TypeError):
        return False
    msg_id, stamp, signed = (found.get(h) for h in (ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER))
    if not (_short_text(msg_id) and _short_text(stamp) and _short_text(signed)):
        return False
    msg_id, stamp, signed = str(msg_id), str(stamp), str(signed)
    # ASCII digits only, and few of them: int() would take "١٢" or "1_0", and a huge value
    # overflows the float arithmetic below.
    if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= MAX_TIMESTAMP_DIGITS):
        return False
    timestamp = int(stamp)
    if abs(now - timestamp) > tolerance:
        return False
    try:
        expected = {signature(key, msg_id, timestamp, body) for key in keys}
    except UnicodeEncodeError:  # a lone surrogate in the id: not what anyone signed
        return False
    for each in signed.split(" "):
        version, _, given = each.partition(",")
        # compare_digest refuses non-ASCII str with TypeError: check first.
        if (
            version == "v1"
            and given.isascii()
            and any(hmac.compare_digest(given, good) for good in expected)
        ):
            return True
    return False


def _short_text(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_HEADER_LENGTH
