"""The checkpoint codec: validation with index and path, digests, and rebuilding (no I/O)."""

from __future__ import annotations

import dataclasses
import enum
import uuid
from collections import OrderedDict
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain import CheckpointPayloadError
from app.repositories.checkpoint_cache import HistoryCache, SessionTip
from app.repositories.checkpoint_codec import (
    check_retry_counts,
    copy_messages,
    digest,
    encode_history,
    encode_messages,
    extend_state,
    finish,
    new_state,
    rebuild,
)
from tests.strategies import histories, same_types

fast = settings(max_examples=30)


@fast
@given(histories)
def test_valid_histories_encode_and_decode_exactly(history: list[dict[str, Any]]) -> None:
    encoded = encode_history(history)
    assert same_types(orjson.loads(encoded.body), history)
    assert same_types(encoded.copies, history)
    for k in range(len(history) + 1):
        assert orjson.loads(encoded.prefix(k)) == history[:k]
        assert orjson.loads(encoded.after(encoded.prefix(k))) == history[k:]


@fast
@given(histories, histories)
def test_prefix_digest_matches_exactly_when_one_history_extends_another(
    a: list[dict[str, Any]], c: list[dict[str, Any]]
) -> None:
    full_a = digest(encode_history(a).body)
    encoded_c = encode_history(c)
    prefix = digest(encoded_c.prefix(len(a))) if len(c) >= len(a) else None

    def canonical(h: list[dict[str, Any]]) -> list[bytes]:
        return [orjson.dumps(m, option=orjson.OPT_SORT_KEYS) for m in h]

    extends = len(c) >= len(a) and canonical(c[: len(a)]) == canonical(a)
    assert (prefix == full_a) == extends
    assert digest(encode_history(a + c).prefix(len(a))) == full_a


def test_digest_sees_an_edit_in_the_middle() -> None:
    h = [{"n": i} for i in range(5)]
    edited = [*h[:2], {"n": "changed"}, *h[3:]]
    assert digest(encode_history(h).body) != digest(encode_history(edited).body)


def test_digest_does_not_depend_on_key_order() -> None:
    a = digest(encode_history([{"a": 1, "b": 2}]).body)
    b = digest(encode_history([{"b": 2, "a": 1}]).body)
    assert a == b


@given(
    st.lists(st.integers(), max_size=8),
    st.lists(st.tuples(st.integers(0, 12), st.lists(st.integers(), max_size=5)), max_size=4),
)
def test_rebuild_applies_deltas_after_their_base(
    keyframe: list[Any], deltas: list[tuple[int, list[Any]]]
) -> None:
    expected = keyframe
    for base, extra in deltas:
        expected = expected[:base] + extra
    assert rebuild(keyframe, deltas) == expected


@pytest.mark.parametrize(
    ("history", "index", "path"),
    [
        ([{"a": 1}, {"b": {"c": [0, "x\x00"]}}], 1, ("b", "c", 1)),
        ([{"deep": [[[{"k": float("inf")}]]]}], 0, ("deep", 0, 0, 0, "k")),
        ([{"a": 1}, {"b": [1, {"c": float("nan")}]}], 1, ("b", 1, "c")),
        ([{"a": "ok"}, {"a": "\udfff"}], 1, ("a",)),
        ([{"obj": object()}], 0, ("obj",)),
        ([{"big": 2**70}], 0, ("big",)),
        ([{}, 3], 1, ()),
    ],
)
def test_errors_name_the_message_and_the_path(
    history: list[Any], index: int, path: tuple[Any, ...]
) -> None:
    with pytest.raises(CheckpointPayloadError) as info:
        encode_history(history)
    assert info.value.index == index
    assert info.value.path == path
    assert f"message_history[{index}]" in str(info.value)


def test_text_that_merely_looks_like_an_escape_is_fine() -> None:
    history = [{"a": "\\u0000 is how JSON writes NUL", "b": None}]
    assert orjson.loads(encode_history(history).body) == history


def test_deep_nesting_is_a_typed_error() -> None:
    deep: dict[str, Any] = {}
    cur = deep
    for _ in range(10_000):
        cur["x"] = {}
        cur = cur["x"]
    with pytest.raises(CheckpointPayloadError):
        encode_history([deep])


@pytest.mark.parametrize("counts", [{"a": 1, "b": 0}, {}])
def test_retry_counts_accept_str_to_int(counts: dict[str, int]) -> None:
    assert check_retry_counts(counts) == counts


@pytest.mark.parametrize("counts", [None, [("a", 1)], {"a": True}, {"a": "1"}, {"": 1}, {"a": -1}])
def test_retry_counts_reject_anything_else(counts: object) -> None:
    with pytest.raises(CheckpointPayloadError) as info:
        check_retry_counts(counts)
    assert info.value.field == "retry_counts"


class Colour(enum.Enum):
    RED = 1


class Mode(enum.StrEnum):
    FAST = "fast"


class Level(enum.IntEnum):
    HIGH = 3


@dataclasses.dataclass
class Point:
    x: int


class Text(str):
    pass


# Values orjson would encode without complaint but that JSONB hands back changed.
NOT_EXACT = [
    pytest.param(datetime(2026, 1, 2, tzinfo=UTC), id="datetime"),
    pytest.param(date(2026, 1, 2), id="date"),
    pytest.param(uuid.UUID(int=7), id="uuid"),
    pytest.param(Colour.RED, id="enum"),
    pytest.param(Mode.FAST, id="str-enum"),
    pytest.param(Level.HIGH, id="int-enum"),
    pytest.param(Point(1), id="dataclass"),
    pytest.param((1, 2), id="tuple"),
    pytest.param(Text("x"), id="str-subclass"),
    pytest.param(OrderedDict(a=1), id="dict-subclass"),
    pytest.param(1.2345678901234568e18, id="float-1e18"),
    pytest.param(1e16, id="float-1e16"),
    pytest.param(-1e16, id="float-minus-1e16"),
    pytest.param(-0.0, id="negative-zero"),
    pytest.param(float("nan"), id="nan"),
    pytest.param(float("-inf"), id="minus-inf"),
    pytest.param(Decimal("1.5"), id="decimal"),
    pytest.param(b"bytes", id="bytes"),
    pytest.param(2**64, id="int-too-big"),
    pytest.param(-(2**63) - 1, id="int-too-small"),
    pytest.param({1: "a"}, id="int-key"),
    pytest.param({Mode.FAST: "a"}, id="enum-key"),
]


@pytest.mark.parametrize("value", NOT_EXACT)
def test_values_json_cannot_carry_exactly_are_refused_with_index_and_path(value: Any) -> None:
    history = [{"ok": [1, 2.5, None, True]}, {"role": "tool", "content": [{"x": value}]}]
    with pytest.raises(CheckpointPayloadError) as info:
        encode_history(history)
    assert info.value.index == 1
    assert info.value.path[:3] == ("content", 0, "x")


@pytest.mark.parametrize("value", NOT_EXACT)
def test_the_same_values_are_refused_in_the_new_messages_only_check(value: Any) -> None:
    history = [{"ok": 1}, {"ok": 2}, {"x": value}]

    def check_new_messages() -> None:
        copy_messages(history, 1)
        encode_messages(history, 1)

    with pytest.raises(CheckpointPayloadError) as info:
        check_new_messages()
    assert info.value.index == 2


@pytest.mark.parametrize(
    "value",
    [9999999999999998.0, -9999999999999998.0, 1e15, 0.0, 5e-324, 1e-300, 0.1, 2**64 - 1, -(2**63)],
)
def test_edge_values_that_round_trip_are_accepted(value: Any) -> None:
    body = encode_history([{"v": value}]).body
    assert same_types(orjson.loads(body), [{"v": value}])


@pytest.mark.parametrize(
    "message",
    [pytest.param((("a", 1),), id="tuple"), pytest.param(OrderedDict(a=1), id="ordered-dict")],
)
def test_a_message_must_be_a_plain_dict(message: Any) -> None:
    with pytest.raises(CheckpointPayloadError) as info:
        encode_history([{"a": 1}, message])
    assert info.value.index == 1


def test_a_tuple_history_is_refused() -> None:
    with pytest.raises(CheckpointPayloadError):
        encode_history(({"a": 1},))


@fast
@given(histories, histories)
def test_the_digest_state_extends_with_only_the_new_messages(
    a: list[dict[str, Any]], b: list[dict[str, Any]]
) -> None:
    whole = a + b
    state = extend_state(new_state(encode_messages(a)), len(a), encode_messages(whole, len(a)))
    assert finish(state) == digest(encode_history(whole).body)
    assert finish(new_state(encode_messages(a))) == digest(encode_messages(a))


def test_copies_share_leaves_but_not_containers() -> None:
    history: list[dict[str, Any]] = [{"content": [{"text": "hello"}], "n": 1}]
    copies = copy_messages(history)
    assert copies == history
    assert copies[0] is not history[0]
    assert copies[0]["content"][0] is not history[0]["content"][0]
    assert copies[0]["content"][0]["text"] is history[0]["content"][0]["text"]


def tip_of(history: list[dict[str, Any]], iteration: int = 1) -> SessionTip:
    body = encode_messages(history)
    return SessionTip(
        iteration, len(history), digest(body), 0, new_state(body), copy_messages(history)
    )


def test_a_tip_sees_an_in_place_edit_at_any_depth() -> None:
    history: list[dict[str, Any]] = [{"content": [{"text": "a"}]}, {"content": "b"}]
    tip = tip_of(history)
    assert tip.prefix_matches([*history, {"content": "c"}])
    history[0]["content"][0]["text"] = "edited"
    assert not tip.prefix_matches([*history, {"content": "c"}])
    history[0]["content"][0]["text"] = "a"
    history[1]["extra"] = 1
    assert not tip.prefix_matches(history)
    assert not tip.prefix_matches(history[:1])


def test_a_tip_extended_twice_from_the_same_parent_keeps_both_right() -> None:
    base = [{"n": 0}]
    tip = tip_of(base)
    one = tip.extended(iteration=2, tail=[{"n": 1}], digest=b"1", depth=1, state=tip.state)
    two = tip.extended(iteration=2, tail=[{"n": 2}], digest=b"2", depth=1, state=tip.state)
    assert one.prefix_matches([{"n": 0}, {"n": 1}])
    assert two.prefix_matches([{"n": 0}, {"n": 2}])
    assert not two.prefix_matches([{"n": 0}, {"n": 1}])


def test_the_cache_is_a_bounded_lru() -> None:
    cache = HistoryCache(2)
    tips = {sid: tip_of([{"s": sid}]) for sid in "abc"}
    cache.put("a", tips["a"])
    cache.put("b", tips["b"])
    assert cache.get("a") is tips["a"]  # a is now the most recently used
    cache.put("c", tips["c"])
    assert cache.get("b") is None
    assert len(cache) == 2
    cache.discard("a")
    assert cache.get("a") is None
    off = HistoryCache(0)
    off.put("a", tips["a"])
    assert len(off) == 0
    with pytest.raises(ValueError, match="max_sessions"):
        HistoryCache(-1)


class Ambiguous:
    """Compares like a NumPy array: its truth value is an error."""

    def __eq__(self, other: object) -> bool:
        raise ValueError("the truth value is ambiguous")

    __hash__ = None  # type: ignore[assignment]


def test_a_value_with_an_odd_eq_put_into_a_saved_message_is_a_mismatch() -> None:
    history: list[dict[str, Any]] = [{"a": 1}]
    tip = tip_of(history)
    history[0]["a"] = Ambiguous()
    assert not tip.prefix_matches(history)
    with pytest.raises(CheckpointPayloadError):
        encode_history(history)


class Key(str):
    """A str subclass: it would load back as a plain str."""


@pytest.mark.parametrize(
    "key", [pytest.param(1, id="int"), pytest.param(Mode.FAST, id="str-enum"), Key("role")]
)
def test_a_flat_message_with_a_key_that_is_not_exactly_a_str_is_refused(key: Any) -> None:
    """Flat messages take the fast check, which leaves keys to the encoder: the error
    must still name the message and the key, on both paths."""
    history: list[Any] = [{"role": "user", "n": 1}, {key: "x", "n": 2}]

    def check_new_messages() -> None:
        copy_messages(history, 1)
        encode_messages(history, 1)

    with pytest.raises(CheckpointPayloadError) as whole:
        encode_history(history)
    with pytest.raises(CheckpointPayloadError) as new_only:
        check_new_messages()
    for info in (whole, new_only):
        assert info.value.index == 1
        assert info.value.path == (repr(key),)
