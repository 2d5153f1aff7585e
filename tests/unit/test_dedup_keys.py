"""Outbox dedup keys: they fit their varchar(255) column for any accepted id, and two
different lists of ids never give one key (pure, no I/O)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from app.domain import EventType
from app.repositories.events import MAX_DEDUP_KEY_LENGTH, NewEvent, dedup_key

# Any accepted id (DESIGN.md §6c); ":" and "\\" often, as they are the separators.
ids = st.text(
    alphabet=st.one_of(st.sampled_from(":\\"), st.characters(exclude_categories=["Cc", "Cs"])),
    min_size=1,
    max_size=255,
).filter(lambda s: s.strip() != "")
parts = st.lists(st.one_of(ids, st.integers(0, 2**63 - 1)), min_size=1, max_size=4)


@given(type=st.sampled_from(EventType), a=parts, b=parts)
def test_dedup_keys_fit_and_never_collide(
    type: EventType, a: list[object], b: list[object]
) -> None:
    key_a, key_b = dedup_key(type, *a), dedup_key(type, *b)
    assert len(key_a) <= MAX_DEDUP_KEY_LENGTH
    assert key_a == dedup_key(type, *a)  # deterministic: a repeat is still a repeat
    assert (key_a == key_b) == ([str(p) for p in a] == [str(p) for p in b])


def test_separators_in_ids_are_escaped() -> None:
    assert dedup_key(EventType.TOPPED_UP, "a:b", "c") != dedup_key(EventType.TOPPED_UP, "a", "b:c")
    assert dedup_key(EventType.TOPPED_UP, "a\\", ":c") != dedup_key(
        EventType.TOPPED_UP, "a\\:", "c"
    )
    assert dedup_key(EventType.STOPPED, "s-1", 3) == "session.stopped:s-1:3"  # short: readable


def test_a_long_key_given_raw_is_hashed_to_fit() -> None:
    event = NewEvent(EventType.TOPPED_UP, "budget.topped_up:" + "u" * 255 + ":k")
    assert len(event.dedup_key) <= MAX_DEDUP_KEY_LENGTH
    assert event.dedup_key.startswith("budget.topped_up#sha256:")
    assert event == NewEvent(EventType.TOPPED_UP, "budget.topped_up:" + "u" * 255 + ":k")
