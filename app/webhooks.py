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
    seconds from ``now`` (constant-time comparison)."""
    parts = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    return hmac.compare_digest(parts.get("v1", ""), signature(secret, timestamp, body))
