"""The Anthropic SDK at the edges (``pip install 'agent-sleepwake[anthropic]'``): charge
from a ``Message``, and keep histories built from SDK objects as plain JSON.

Nothing here calls the API. The functions read the SDK's objects by their fields, so
they also take the dict forms (``message.model_dump()``, a ``MessageParam``), and the
module imports without the SDK installed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from app.domain import InvalidInput
from app.lifecycle import Runtime, charge_usage
from app.repositories import ChargeResult

if TYPE_CHECKING:
    from anthropic.types import Message


def _get(source: Any, name: str) -> Any:
    return source.get(name) if isinstance(source, Mapping) else getattr(source, name, None)


async def charge_message(
    rt: Runtime,
    *,
    session_id: str,
    message: Message | Mapping[str, Any],
    request_id: str | None = None,
    now: datetime | None = None,
) -> ChargeResult:
    """Charge one response: ``message.id`` is the request id, ``message.model`` the model,
    and ``message.usage`` is priced in full (cache writes by TTL, cache reads, batch, the
    band its prompt falls into, and ``server_tool_use.web_search_requests`` per use); a
    usage field that changes the bill and has no price is ``InvalidInput``, nothing
    written (docs/pricing.md).

    Pass ``request_id`` to charge under your own id instead, e.g. the one a
    ``reserve()`` before the call booked under (the provider's id is not known then).
    """
    rid = _get(message, "id") if request_id is None else request_id
    model = _get(message, "model")
    if not isinstance(rid, str) or not rid:
        raise InvalidInput("message.id must be the response's id (msg_...)", field="message.id")
    if not isinstance(model, str) or not model:
        raise InvalidInput("message.model must name the model", field="message.model")
    return await charge_usage(
        rt,
        session_id=session_id,
        request_id=rid,
        model=model,
        usage=_get(message, "usage"),
        now=now,
    )


def to_json(value: Any) -> Any:
    """``value`` with every SDK object in it (content blocks, messages, citations)
    turned into the plain JSON the SDK would send for it: its fields that were set,
    by their API names. Dicts, lists and tuples are walked; anything else is returned
    as it is, for the checkpoint codec to accept or refuse."""
    if isinstance(value, BaseModel):
        # As the SDK sends a model in a request body: only the fields set, API names.
        exclude = getattr(value, "__api_exclude__", None)
        return value.model_dump(mode="json", exclude_unset=True, by_alias=True, exclude=exclude)
    if isinstance(value, Mapping):
        return {key: to_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    return value


def history_entry(message: Any) -> dict[str, Any]:
    """One history entry, ``{"role": ..., "content": [...]}``, from a ``Message`` (the
    response) or a ``MessageParam``-like dict whose content may hold SDK blocks, e.g.
    ``{"role": "assistant", "content": response.content}``."""
    role = _get(message, "role")
    if role not in ("user", "assistant"):
        raise InvalidInput(
            f"a history entry's role must be 'user' or 'assistant', not {role!r}",
            field="message.role",
        )
    content = _get(message, "content")
    return {"role": role, "content": to_json(content)}


def history(messages: Iterable[Any]) -> list[dict[str, Any]]:
    """A message history, built from SDK objects and dicts alike, as plain JSON entries
    that a checkpoint saves and loads back exactly."""
    return [history_entry(message) for message in messages]
