"""Checkpoint payloads: exact-type validation, canonical encoding and the history digest.

Pure functions, no I/O. A history is checked by one strict walk over its values (which
also takes the private copy the save cache compares against), then encoded once with
orjson (sorted keys); the same bytes feed the digest and the JSONB literal.

"JSON-exact" means that what PostgreSQL's JSONB hands back decodes to an equal value
of the same types: ``dict`` with ``str`` keys, ``list``, ``str``, ``int``, ``bool``,
``None`` and the floats JSONB keeps as floats. Everything else is refused, never
converted: orjson would happily write a ``datetime``, ``UUID``, ``Enum``, dataclass or
``tuple``, and they would come back as ``str``, ``dict`` or ``list``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import chain
from typing import Any, Final, NoReturn

import orjson

from app.db.models import AgentCheckpoint
from app.domain import CheckpointPayloadError, SessionStatus
from app.validation import INT_MAX, parse_enum, require_int, require_money, require_text

_OPTIONS: Final = orjson.OPT_SORT_KEYS
# orjson writes NUL as this escape; JSONB rejects it. A hit (it may also be the text
# "\u0000" written by the caller) sends the history through the walk that names it.
_NUL_ESCAPE: Final = b"\\u0000"
# Integral floats from 1e16 up come back from JSONB as integers (its numeric output has
# no exponent and no ".0"); below that orjson writes them with ".0", which JSONB keeps.
FLOAT_LIMIT: Final = 1e16
# orjson refuses nesting deeper than 254 levels (the history list included); the walk
# stops a little earlier, so that it, not the encoder, names the message and the path.
MAX_DEPTH: Final = 250
INT_MIN: Final = -(2**63)
INT_LIMIT: Final = 2**64  # orjson encodes and decodes integers in [-2**63, 2**64)

Path = tuple[str | int, ...]
_PLAIN: Final = frozenset({str, int, bool, type(None)})
_DICT: Final = frozenset({dict})


class _Refused(Exception):
    """Raised by the fast walk; the slow walk then finds the path and the reason."""


def _refuse() -> NoReturn:
    raise _Refused


def _exact_float(value: float) -> bool:
    return -FLOAT_LIMIT < value < FLOAT_LIMIT and (value != 0.0 or math.copysign(1.0, value) > 0)


def _copy_exact(value: Any, depth: int) -> Any:
    """A copy of a JSON-exact container (leaves shared), or ``_Refused``.

    The fast walk: exact type checks only, no path bookkeeping. Plain leaves are
    handled inline so that a typical message costs one call.
    """
    if depth > MAX_DEPTH:
        _refuse()
    t = type(value)
    if t is dict:
        out = {}
        for key, item in value.items():
            if type(key) is not str:
                _refuse()
            out[key] = item if type(item) in _PLAIN else _copy_exact(item, depth + 1)
        return out
    if t is list:
        return [item if type(item) in _PLAIN else _copy_exact(item, depth + 1) for item in value]
    if t is float and _exact_float(value):
        return value
    if t in _PLAIN:
        return value
    _refuse()


def _why_refused(value: Any) -> str | None:
    """Why a leaf value cannot round-trip through JSONB exactly; None if it can."""
    t = type(value)
    if t is str:
        if "\x00" in value:
            return "contains \\u0000, which JSONB cannot store"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "is not valid UTF-8 (a lone surrogate)"
        return None
    if t is bool or value is None:
        return None
    if t is int:
        if not INT_MIN <= value < INT_LIMIT:
            return f"integer {value} is too large for JSON"
        return None
    if t is float:
        if not math.isfinite(value):
            return f"{value} is not a JSON number"
        if not _exact_float(value):
            return (
                f"float {value!r} would not load back as the same float"
                " (JSONB turns floats of magnitude 1e16 or more into integers and drops"
                " the sign of -0.0)"
            )
        return None
    name = t.__name__
    if isinstance(value, str | int | float):
        base = next(b for b in (bool, str, int, float) if isinstance(value, b)).__name__
        return f"{name} is a subclass of {base} and would load back as a plain {base}"
    if isinstance(value, tuple):
        return f"{name} would load back as a list: pass a list"
    if isinstance(value, Mapping):
        return f"{name} would load back as a dict: pass a dict"
    return f"{name} is not a JSON value (dict, list, str, int, float, bool or None)"


def _find_bad_value(value: Any, path: Path = (), depth: int = 0) -> tuple[Path, str] | None:
    """The path of the first value JSONB cannot hold exactly, and why (the slow walk)."""
    if depth > MAX_DEPTH:
        return path, f"nesting deeper than {MAX_DEPTH} levels"
    t = type(value)
    if t is dict:
        for key, item in value.items():
            if type(key) is not str:
                return (*path, repr(key)), f"object key must be a str, not {type(key).__name__}"
            reason = _why_refused(key)
            if reason is not None:
                return (*path, key), "key " + reason
            found = _find_bad_value(item, (*path, key), depth + 1)
            if found is not None:
                return found
        return None
    if t is list:
        for i, item in enumerate(value):
            found = _find_bad_value(item, (*path, i), depth + 1)
            if found is not None:
                return found
        return None
    reason = _why_refused(value)
    return None if reason is None else (path, reason)


def _raise_for(messages: list[Any], start: int, exc: BaseException | None = None) -> NoReturn:
    """Raise the ``CheckpointPayloadError`` that names the first bad message and path."""
    for i in range(start, len(messages)):
        message = messages[i]
        if type(message) is not dict:
            reason = _why_refused(message) if isinstance(message, Mapping) else None
            raise CheckpointPayloadError(
                reason or f"message must be a JSON object (dict), not {type(message).__name__}",
                index=i,
            )
        try:
            found = _find_bad_value(message)
        except RecursionError:
            found = ((), "nesting too deep")
        if found is not None:
            raise CheckpointPayloadError(found[1], index=i, path=found[0]) from exc
    raise CheckpointPayloadError(f"cannot be encoded: {exc}") from exc


def copy_messages(messages: list[Any], start: int = 0) -> list[dict[str, Any]]:
    """Private copies (leaves shared) of ``messages[start:]``, each checked JSON-exact;
    ``CheckpointPayloadError`` naming the index and key path otherwise.

    Always followed by ``encode_messages`` of the same messages, which checks what
    only the encoder sees; the keys of flat messages are left to it too (orjson
    refuses every key that is not exactly a ``str``, subclasses included), so the
    common case reads each message once here.
    """
    tail = messages[start:] if start else messages
    # The common case in C: flat messages of strings, ints, bools and None.
    if _DICT.issuperset(map(type, tail)) and _PLAIN.issuperset(
        map(type, chain.from_iterable(map(dict.values, tail)))
    ):
        return list(map(dict.copy, tail))
    try:
        out = []
        for message in tail:
            if type(message) is not dict:
                _refuse()
            out.append(_copy_exact(message, 0))
        return out
    except (_Refused, RecursionError):
        _raise_for(messages, start)


def encode_messages(messages: list[Any], start: int = 0) -> bytes:
    """Canonical JSON array of already-checked ``messages[start:]``.

    Refuses what only the encoder sees: integers beyond 64 bits, lone surrogates and NUL.
    """
    tail = messages[start:] if start else messages
    try:
        body = orjson.dumps(tail, option=_OPTIONS)
    except (orjson.JSONEncodeError, TypeError) as exc:
        _raise_for(messages, start, exc)
    if _NUL_ESCAPE in body:
        for i in range(start, len(messages)):
            found = _find_bad_value(messages[i])
            if found is not None:
                raise CheckpointPayloadError(found[1], index=i, path=found[0])
    return body


def new_state(body: bytes) -> Any:
    """The digest state of a canonical history (its bytes but the closing bracket).

    The digest of a history is SHA-256 of its canonical JSON; keeping the state before
    ``]`` lets an extension be hashed by feeding only the new messages.
    """
    return hashlib.sha256(memoryview(body)[:-1])


def extend_state(state: Any, count: int, tail: bytes) -> Any:
    """The state of a history of ``count`` messages extended by the array ``tail``."""
    out = state.copy()
    if len(tail) > 2:
        inner = memoryview(tail)[1:-1]
        if count:
            out.update(b",")
        out.update(inner)
    return out


def finish(state: Any) -> bytes:
    """The digest of the history whose state this is."""
    done = state.copy()
    done.update(b"]")
    return bytes(done.digest())


@dataclass(frozen=True, slots=True)
class EncodedHistory:
    """A validated history as canonical JSON (sorted keys), encoded in one pass."""

    messages: list[Any]
    body: bytes
    copies: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.messages)

    def prefix(self, count: int) -> bytes:
        """Canonical JSON of the first ``count`` messages (a fresh encode of a slice)."""
        if count >= len(self.messages):
            return self.body
        return orjson.dumps(self.messages[:count], option=_OPTIONS)

    def after(self, prefix: bytes) -> str:
        """JSON array text of the messages that follow ``prefix`` (a delta's payload)."""
        if len(prefix) >= len(self.body):
            return "[]"
        if len(prefix) == 2:  # "[]": nothing shared
            return self.body.decode()
        # body = "[" + shared + "," + rest + "]" and prefix = "[" + shared + "]"
        return "[" + self.body[len(prefix) :].decode()


def encode_history(history: Any) -> EncodedHistory:
    """Validate and encode a whole message history (a list of JSON objects).

    One strict walk checks every value's exact type (and takes private copies); one
    orjson call encodes the list. ``CheckpointPayloadError`` names the message index
    and the key path of the first value that would not load back equal and of the
    same type.
    """
    if type(history) is not list:
        raise CheckpointPayloadError(
            f"message history must be a list of objects, not {type(history).__name__}"
        )
    copies = copy_messages(history)
    return EncodedHistory(history, encode_messages(history), copies)


def digest(canonical: bytes) -> bytes:
    """SHA-256 of a canonical history. Equal digests mean equal histories, and a history
    extends another exactly when the digest of its prefix equals the other's."""
    return hashlib.sha256(canonical).digest()


def check_retry_counts(value: Any) -> dict[str, int]:
    """``retry_counts`` must map non-empty strings to non-negative integers."""
    if not isinstance(value, Mapping):
        raise CheckpointPayloadError(
            f"must be a mapping of str to int, not {type(value).__name__}", field="retry_counts"
        )
    for key, count in value.items():
        if type(key) is not str or not key or _why_refused(key) is not None:
            raise CheckpointPayloadError(
                f"key {key!r} must be a non-empty string", field="retry_counts", path=(repr(key),)
            )
        if type(count) is not int or not 0 <= count <= INT_MAX:
            raise CheckpointPayloadError(
                f"count must be a non-negative integer, got {count!r}",
                field="retry_counts",
                path=(key,),
            )
    return dict(value)


def rebuild(keyframe: list[Any], deltas: Iterable[tuple[int, list[Any]]]) -> list[Any]:
    """The full history: a keyframe, then each delta's messages after its base count.

    One list is built and extended in place, so a chain of appends costs O(messages).
    """
    history = list(keyframe)
    for base, messages in deltas:
        del history[base:]
        history.extend(messages)
    return history


@dataclass(frozen=True, slots=True)
class Payload:
    """A checkpoint's validated fields; its history is checked and encoded apart (whole,
    or only the new messages when the process cache shows what the rest is)."""

    session_id: str
    job_id: str
    iteration_number: int
    messages: list[Any]
    sandbox_id: str | None
    current_phase: str | None
    retry_counts: dict[str, int]
    session_cost_microdollars: int
    daily_budget_microdollars: int
    agent_state: str

    @classmethod
    def of(cls, cp: AgentCheckpoint) -> Payload:
        """Validate every field but the history's contents; ``CheckpointPayloadError``."""
        optional = {
            name: None if getattr(cp, name) is None else require_text(getattr(cp, name), name)
            for name in ("sandbox_id", "current_phase")
        }
        return cls(
            session_id=require_text(cp.session_id, "session_id"),
            job_id=require_text(cp.job_id, "job_id"),
            iteration_number=require_int(cp.iteration_number, "iteration_number", maximum=INT_MAX),
            messages=history_list(cp.message_history),
            retry_counts=check_retry_counts(cp.retry_counts),
            session_cost_microdollars=require_money(
                cp.session_cost_microdollars, "session_cost_microdollars"
            ),
            daily_budget_microdollars=require_money(
                cp.daily_budget_microdollars, "daily_budget_microdollars"
            ),
            agent_state=parse_enum(SessionStatus, cp.agent_state, "agent_state").value,
            **optional,
        )

    def same_content_as(self, row: Any, full_digest: bytes) -> bool:
        """Whether ``row`` (a stored checkpoint's metadata) holds exactly this content."""
        return (
            row.history_digest == full_digest
            and row.message_count == len(self.messages)
            and (row.job_id, row.sandbox_id, row.current_phase, row.agent_state)
            == (self.job_id, self.sandbox_id, self.current_phase, self.agent_state)
            and row.retry_counts == self.retry_counts
            and row.session_cost_microdollars == self.session_cost_microdollars
            and row.daily_budget_microdollars == self.daily_budget_microdollars
        )

    def params(self) -> dict[str, Any]:
        """The statement parameters for these fields (``checkpoint_sql``'s ``p_`` names)."""
        return {
            "p_session_id": self.session_id,
            "p_job_id": self.job_id,
            "p_iteration": self.iteration_number,
            "p_sandbox_id": self.sandbox_id,
            "p_current_phase": self.current_phase,
            "p_retry_counts": self.retry_counts,
            "p_session_cost": self.session_cost_microdollars,
            "p_daily_budget": self.daily_budget_microdollars,
            "p_agent_state": self.agent_state,
            "p_message_count": len(self.messages),
        }


def history_list(history: Any) -> list[Any]:
    """``history`` itself if it is a list; ``CheckpointPayloadError`` otherwise."""
    if type(history) is not list:
        raise CheckpointPayloadError(
            f"message history must be a list of objects, not {type(history).__name__}"
        )
    return history
