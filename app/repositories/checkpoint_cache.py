"""A per-process LRU of each session's last saved history, so that a save which extends
it costs O(new messages) on the client.

An entry is a hint, never the truth: a save that uses it is written with a guarded
statement that checks, in the same snapshot as the write, that the entry's checkpoint is
still the session's newest with the same digest and message count. Any other writer,
a rollback or another database with the same session id makes the guard fail, and the
save falls back to the full path. A save that lands below the session's newest
iteration drops the tip: the process's last save is then not the tip, and an append that
vouches for that save must not be planned on it.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Final

DEFAULT_SESSIONS: Final = 1024


@dataclass(frozen=True, slots=True)
class SessionTip:
    """The newest checkpoint this process saved for a session.

    ``copies[:count]`` are private copies of its messages (containers copied, leaves
    shared: strings and numbers are immutable), so an in-place edit of a caller's
    message is seen when the next history is compared with them. ``state`` is the
    SHA-256 state over the canonical JSON without its closing bracket.
    """

    iteration: int
    count: int
    digest: bytes
    depth: int
    state: Any
    copies: list[dict[str, Any]]

    def prefix_matches(self, history: list[Any]) -> bool:
        """Whether ``history`` starts with this tip's messages (equal by value)."""
        n = self.count
        if len(history) < n:
            return False
        copies = self.copies if len(self.copies) == n else self.copies[:n]
        try:
            # list == compares item by item in C; unchanged leaves are the same objects.
            return bool(copies == (history if len(history) == n else history[:n]))
        except Exception:  # a foreign value with an odd __eq__: the full path refuses it
            return False

    def extended(
        self,
        *,
        iteration: int,
        tail: list[dict[str, Any]],
        digest: bytes,
        depth: int,
        state: Any,
    ) -> SessionTip:
        """The tip after appending ``tail``. The copies list is extended in place when
        nobody else extended it since (O(new)); otherwise it is copied."""
        if len(self.copies) == self.count:
            copies = self.copies
            copies.extend(tail)
        else:
            copies = [*self.copies[: self.count], *tail]
        return SessionTip(iteration, self.count + len(tail), digest, depth, state, copies)


class HistoryCache:
    """At most ``max_sessions`` tips, least recently used evicted first (0 disables)."""

    def __init__(self, max_sessions: int = DEFAULT_SESSIONS) -> None:
        if type(max_sessions) is not int or max_sessions < 0:
            raise ValueError(f"max_sessions must be a non-negative int, got {max_sessions!r}")
        self.max_sessions = max_sessions
        self._tips: OrderedDict[str, SessionTip] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tips)

    def get(self, session_id: str) -> SessionTip | None:
        """The session's tip, marked as recently used; None if absent."""
        tip = self._tips.get(session_id)
        if tip is not None:
            # Another thread's loop may have evicted it in between: harmless.
            with suppress(KeyError):
                self._tips.move_to_end(session_id)
        return tip

    def put(self, session_id: str, tip: SessionTip) -> None:
        """Remember ``tip`` as the session's newest saved checkpoint."""
        if self.max_sessions == 0:
            return
        self._tips[session_id] = tip
        self._tips.move_to_end(session_id)
        while len(self._tips) > self.max_sessions:
            with suppress(KeyError):
                self._tips.popitem(last=False)

    def discard(self, session_id: str) -> None:
        """Forget the session (its tip turned out stale)."""
        self._tips.pop(session_id, None)

    def clear(self) -> None:
        """Forget every session."""
        self._tips.clear()


#: The cache that repositories share unless they are given one (``Runtime`` passes one
#: sized by ``CHECKPOINT_CACHE_SESSIONS``).
SHARED: Final = HistoryCache()
