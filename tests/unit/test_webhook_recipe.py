"""The operations page's webhook verification recipe accepts what the deliverer signs and
refuses a wrong secret, a changed body, an old timestamp and a malformed header."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.webhooks import sign

README = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def recipe() -> Callable[..., bool]:
    found = re.search(
        r"<!-- example:verify-webhook -->\s*```python\n(.*?)```", README.read_text(), re.S
    )
    assert found, "docs/operations.md has no verify-webhook example"
    namespace: dict[str, Any] = {}
    exec(compile(found.group(1), "docs/operations.md:verify-webhook", "exec"), namespace)  # noqa: S102
    verify: Callable[..., bool] = namespace["verify"]
    return verify


SECRET = "whsec_" + base64.b64encode(b"a key of thirty-two bytes, say..").decode()


def test_the_recipe_verifies_the_deliverers_signature() -> None:
    verify = recipe()
    body = b'{"id":"e-1","type":"budget.threshold"}'
    now = int(time.time())
    headers = sign(SECRET, "e-1", now, body)
    other = "whsec_" + base64.b64encode(b"another key entirely, 32 bytes.").decode()
    assert verify(SECRET, headers, body)
    assert verify(SECRET, {k.upper(): v for k, v in headers.items()}, body)
    assert not verify(other, headers, body)
    assert not verify(SECRET, headers, body.replace(b"e-1", b"e-2"))
    assert not verify(SECRET, {**headers, "webhook-id": "e-2"}, body)
    assert not verify(SECRET, sign(SECRET, "e-1", now - 3600, body), body)
    rotated = sign(f"{other} {SECRET}", "e-1", now, body)  # during a key rotation
    assert verify(SECRET, rotated, body)
    assert verify(other, rotated, body)


def test_the_recipe_refuses_malformed_headers_without_raising() -> None:
    verify = recipe()
    body = b"{}"
    good = sign(SECRET, "e-1", int(time.time()), body)
    hostile = [
        {},
        {"webhook-timestamp": "abc"},
        {**good, "webhook-timestamp": "9" * 5000},
        {**good, "webhook-timestamp": "\u0661"},
        {**good, "webhook-signature": "v1,\u00e9"},
        {**good, "webhook-signature": "garbage"},
    ]
    for headers in hostile:
        assert verify(SECRET, headers, body) is False, headers
