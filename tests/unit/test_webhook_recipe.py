"""The operations page's webhook verification recipe accepts what the deliverer signs and
refuses a wrong secret, a changed body and an old timestamp."""

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
