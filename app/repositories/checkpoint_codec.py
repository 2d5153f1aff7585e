"""Checkpoint payloads: validation, canonical encoding and the chained history digest.

Pure functions, no I/O. A history is encoded once with orjson (sorted keys); the same
bytes feed the digest and the JSONB literal, so a save never encodes twice.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from app.domain import CheckpointPayloadError
from app.validation import INT_MAX

_OPTIONS: Final = orjson.OPT_SORT_KEYS
# orjson writes NUL as this escape, and NaN/Infinity as null: a cheap hint that a
# message needs the slow walk that finds the offending value and its path.
_NUL_ESCAPE: Final = b"\\u0000"
_NULL: Final = b"null"

Path = tuple[str | int, ...]


def _find_bad_value(value: Any, path: Path = ()) -> tuple[Path, str] | None:
    """The path of the first value JSONB cannot hold exactly, and why."""
    if isinstance(value, str):
        if "\x00" in value:
            return path, "contains \\u0000, which JSONB cannot store"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path, "is not valid UTF-8 (a lone surrogate)"
        return None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        if not -(2**63) <= value < 2**64:
            return path, f"integer {value} is too large for JSON"
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return path, f"{value} is not a JSON number"
        return None
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                return (*path, repr(key)), f"object key must be a string, not {type(key).__name__}"
            found = _find_bad_value(key, (*path, key))
            if found is not None:
                return found[0], "key " + found[1]
            found = _find_bad_value(item, (*path, key))
            if found is not None:
                return found
        return None
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = _find_bad_value(item, (*path, i))
            if found is not None:
                return found
        return None
    return path, f"{type(value).__name__} is not JSON-serialisable"


def encode_message(message: Any, index: int) -> bytes:
    """Canonical JSON of one message, or ``CheckpointPayloadError`` naming index and path."""
    if not isinstance(message, Mapping):
        raise CheckpointPayloadError(
            f"message must be a JSON object, not {type(message).__name__}", index=index
        )
    try:
        encoded = orjson.dumps(message, option=_OPTIONS)
    except (orjson.JSONEncodeError, TypeError) as exc:
        try:
            found = _find_bad_value(message)
        except RecursionError:
            found = None
        if found is None:
            raise CheckpointPayloadError(f"cannot be encoded: {exc}", index=index) from exc
        raise CheckpointPayloadError(found[1], index=index, path=found[0]) from exc
    if _NUL_ESCAPE in encoded or _NULL in encoded:
        found = _find_bad_value(message)
        if found is not None:
            raise CheckpointPayloadError(found[1], index=index, path=found[0])
    return encoded


@dataclass(frozen=True, slots=True)
class EncodedHistory:
    """A validated history as canonical JSON (sorted keys), encoded in one pass."""

    messages: list[Any]
    body: bytes

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

    One orjson call encodes the list. Only when that fails, or its output hints at a
    value JSONB cannot hold exactly (NUL, or NaN/Infinity which orjson writes as
    null), are the messages walked one by one to name the index and key path.
    """
    if not isinstance(history, list):
        raise CheckpointPayloadError(
            f"message history must be a list of objects, not {type(history).__name__}"
        )
    for i, message in enumerate(history):
        if type(message) is not dict and not isinstance(message, Mapping):
            raise CheckpointPayloadError(
                f"message must be a JSON object, not {type(message).__name__}", index=i
            )
    try:
        body = orjson.dumps(history, option=_OPTIONS)
    except (orjson.JSONEncodeError, TypeError):
        body = b""
    if not body or _NUL_ESCAPE in body or _NULL in body:
        for i, message in enumerate(history):
            encode_message(message, i)
        if not body:  # pragma: no cover - every message encoded on its own
            raise CheckpointPayloadError("cannot be encoded")
    return EncodedHistory(history, body)


def digest(canonical: bytes) -> bytes:
    """BLAKE2b-256 of a canonical history. Equal digests mean equal histories, and a
    history extends another exactly when the digest of its prefix equals the other's."""
    return hashlib.blake2b(canonical, digest_size=32).digest()


def check_retry_counts(value: Any) -> dict[str, int]:
    """``retry_counts`` must map non-empty strings to non-negative integers."""
    if not isinstance(value, Mapping):
        raise CheckpointPayloadError(
            f"must be a mapping of str to int, not {type(value).__name__}", field="retry_counts"
        )
    for key, count in value.items():
        if not isinstance(key, str) or not key or _find_bad_value(key) is not None:
            raise CheckpointPayloadError(
                f"key {key!r} must be a non-empty string", field="retry_counts", path=(repr(key),)
            )
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= INT_MAX:
            raise CheckpointPayloadError(
                f"count must be a non-negative integer, got {count!r}",
                field="retry_counts",
                path=(key,),
            )
    return dict(value)


def rebuild(keyframe: list[Any], deltas: Iterable[tuple[int, list[Any]]]) -> list[Any]:
    """The full history: a keyframe, then each delta's messages after its base count."""
    history = keyframe
    for base, messages in deltas:
        history = history[:base] + messages
    return history
