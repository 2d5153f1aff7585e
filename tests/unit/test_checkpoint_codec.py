"""The checkpoint codec: validation with index and path, digests, and rebuilding (no I/O)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain import CheckpointPayloadError
from app.repositories.checkpoint_codec import (
    check_retry_counts,
    digest,
    encode_history,
    rebuild,
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00")),
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(
                alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
                max_size=8,
            ),
            children,
            max_size=4,
        )
    ),
    max_leaves=6,
)
messages = st.dictionaries(
    st.sampled_from(["role", "content", "tool", "meta"]), json_values, min_size=1
)
histories = st.lists(messages, max_size=6)
fast = settings(max_examples=30)


@fast
@given(histories)
def test_valid_histories_encode_and_decode_exactly(history: list[dict[str, Any]]) -> None:
    encoded = encode_history(history)
    assert orjson.loads(encoded.body) == history
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
