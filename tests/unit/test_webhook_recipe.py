"""The operations page's webhook verification recipe accepts what the deliverer signs and
refuses a wrong secret, a changed body, an old timestamp and a malformed header."""

from __future__ import annotations

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


def test_the_readme_recipe_verifies_the_deliverers_signature() -> None:
    verify = recipe()
    body = b'{"id":"e-1","type":"budget.threshold"}'
    now = int(time.time())
    header = sign("whsec-1", now, body)
    assert verify("whsec-1", header, body)
    assert not verify("whsec-2", header, body)
    assert not verify("whsec-1", header, body.replace(b"e-1", b"e-2"))
    assert not verify("whsec-1", sign("whsec-1", now - 3600, body), body)


def test_the_recipe_refuses_a_malformed_header_without_raising() -> None:
    verify = recipe()
    body = b"{}"
    for header in (
        "",
        "t=abc,v1=00",
        "v1=\u00e9,t=1",
        "t=" + "9" * 5000,
        "t=\u0661,v1=0",
        "garbage",
    ):
        assert verify("whsec-1", header, body) is False, header
