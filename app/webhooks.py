"""Webhook signatures: ``X-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>`` over
``f"{t}."`` followed by the exact body bytes, keyed by ``WEBHOOK_SECRET``. Pure code, no
I/O: the deliverer signs with it, and a receiver can verify with it (or with the five
lines of the README's recipe)."""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

SIGNATURE_HEADER: Final = "X-Signature"
EVENT_ID_HEADER: Final = "X-Event-Id"
EVENT_TYPE_HEADER: Final = "X-Event-Type"
#: A receiver should refuse signatures older than this (replays).
DEFAULT_TOLERANCE_SECONDS: Final = 300
#: Longer headers are not ours: refused before any parsing.
MAX_HEADER_LENGTH: Final = 4096
#: Unix seconds have 10 digits until the year 2286.
MAX_TIMESTAMP_DIGITS: Final = 12


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``f"{timestamp}.".encode() + body`` under ``secret``."""
    message = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Signature`` header's value for ``body`` sent at ``timestamp``."""
    return f"t={timestamp},v1={signature(secret, timestamp, body)}"


def verify(
    secret: str,
    header: str,
    body: bytes,
    *,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
) -> bool:
    """True if ``header`` signs ``body`` under ``secret`` and is at most ``tolerance``
    seconds from ``now`` (constant-time comparison). A malformed header (no ``t``, a
    ``t`` that is not a few ASCII digits, a non-ASCII ``v1``, garbage) is False, never
    an exception: the header comes from whoever sent the request."""
    if not isinstance(header, str) or len(header) > MAX_HEADER_LENGTH:
        return False
    parts = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    stamp = parts.get("t", "").strip()
    # ASCII digits only, and few of them: int() would take "١٢" or "1_0", and a huge
    # value overflows the float arithmetic below.
    if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= MAX_TIMESTAMP_DIGITS):
        return False
    timestamp = int(stamp)
    if abs(now - timestamp) > tolerance:
        return False
    given = parts.get("v1", "")
    if not given.isascii():  # compare_digest refuses non-ASCII str with TypeError
        return False
    return hmac.compare_digest(given, signature(secret, timestamp, body))
