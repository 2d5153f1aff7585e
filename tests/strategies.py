"""Hypothesis strategies for JSON-exact message histories, shared by unit and integration tests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

# Text JSONB can store: no NUL, no lone surrogates.
texts = st.text(alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"))
# Floats that come back from JSONB as the same float: finite, below 1e16 in magnitude,
# and not -0.0 (JSONB has no negative zero).
exact_floats = st.floats(
    min_value=-1e16, max_value=1e16, exclude_min=True, exclude_max=True, allow_nan=False
).filter(lambda f: not (f == 0.0 and str(f).startswith("-")))
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    exact_floats,
    texts,
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(texts.filter(lambda t: len(t) <= 8), children, max_size=4)
    ),
    max_leaves=8,
)
messages = st.dictionaries(
    st.sampled_from(["role", "content", "tool", "meta"]) | texts.filter(lambda t: len(t) <= 6),
    json_values,
    min_size=1,
    max_size=5,
)
histories = st.lists(messages, max_size=6)


def same_types(a: Any, b: Any) -> bool:
    """Equal, and of the same type at every depth (True is not 1, 1.0 is not 1)."""
    if type(a) is not type(b):
        return False
    if type(a) is dict:
        return a.keys() == b.keys() and all(same_types(a[k], b[k]) for k in a)
    if type(a) is list:
        return len(a) == len(b) and all(same_types(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is float:
        return repr(a) == repr(b)
    return bool(a == b)


# Ids the rule accepts (DESIGN.md §6c): 1 to 255 characters, not blank, no Cc character,
# no lone surrogate; printable Unicode of every plane, astral included.
_id_chars = st.characters(exclude_categories=["Cc", "Cs"])
_astral = st.characters(min_codepoint=0x10000, exclude_categories=["Cs"])
#: Names the system uses for itself, the separators of its keys, Redis hash tags.
SYSTEM_NAMES = [
    "~reconciled-through",
    "|reconciled-through",
    "reconciled-through",
    ":",
    "*",
    "\\",
    "{tag}",
    "session.stopped:s-1:1",
    "budget.threshold#sha256:" + "0" * 64,
]
accepted_ids = st.one_of(
    st.text(_id_chars, min_size=1, max_size=255),
    st.text(_astral, min_size=200, max_size=255),
    st.text(st.sampled_from(":{}|~\\#* \u00a0\u200b\U0001f600"), min_size=1, max_size=255),
    st.sampled_from(SYSTEM_NAMES),
    st.sampled_from(SYSTEM_NAMES).map(lambda name: (name * 40)[:255]),
).filter(lambda s: s.strip() != "")
