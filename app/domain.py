"""Domain vocabulary: enums, the session state machine and the error hierarchy (no I/O)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum
from typing import Final


class Tier(StrEnum):
    """Subscription tier of a user; it fixes the model and the period allowance."""

    BOOTSTRAPPER = "bootstrapper"
    PARTNER = "partner"
    CTO_SCALE = "cto_scale"


class SessionStatus(StrEnum):
    """Lifecycle state of an agent session (DESIGN.md §5)."""

    WORKING = "working"
    SLEEPING = "sleeping"
    BUDGET_EXCEEDED = "budget_exceeded"
    COMPLETED = "completed"


class Decision(StrEnum):
    """What an agent should do after a charge, from the day's spend against its budget."""

    CONTINUE = "continue"
    WIND_DOWN = "wind_down"
    SLEEP = "sleep"
    STOP = "stop"


#: Allowed edges of the state machine: target -> the statuses it may be entered from.
ALLOWED_SOURCES: Final[dict[SessionStatus, frozenset[SessionStatus]]] = {
    SessionStatus.SLEEPING: frozenset({SessionStatus.WORKING}),
    SessionStatus.WORKING: frozenset({SessionStatus.SLEEPING, SessionStatus.BUDGET_EXCEEDED}),
    SessionStatus.BUDGET_EXCEEDED: frozenset({SessionStatus.WORKING}),
    SessionStatus.COMPLETED: frozenset(
        {SessionStatus.WORKING, SessionStatus.SLEEPING, SessionStatus.BUDGET_EXCEEDED}
    ),
}


# --------------------------------------------------------------------------- errors


class DomainError(Exception):
    """Base of every error this package raises on purpose."""


class InvalidInput(DomainError, ValueError):
    """An argument is malformed; nothing was written."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class CheckpointPayloadError(InvalidInput):
    """A checkpoint payload cannot be stored; ``index``/``path`` locate the offending value."""

    def __init__(
        self,
        message: str,
        *,
        field: str = "message_history",
        index: int | None = None,
        path: tuple[str | int, ...] = (),
    ) -> None:
        where = field
        if index is not None:
            where += f"[{index}]"
        where += "".join(f"[{p!r}]" for p in path)
        super().__init__(f"{where}: {message}", field=field)
        self.index = index
        self.path = path


class UnknownModel(InvalidInput):
    """A model name has no configured price."""

    def __init__(self, model: str) -> None:
        super().__init__(f"unknown model {model!r}: no price is configured for it", field="model")
        self.model = model


class SessionNotFound(DomainError, LookupError):
    """No agent session has the given id."""

    def __init__(self, session_id: str) -> None:
        super().__init__(f"agent session {session_id!r} does not exist")
        self.session_id = session_id


class SessionAlreadyExists(DomainError):
    """An agent session with this id was created before."""

    def __init__(self, session_id: str) -> None:
        super().__init__(f"agent session {session_id!r} already exists")
        self.session_id = session_id


class InvalidTransition(DomainError):
    """The session was not in a status the transition may start from."""

    def __init__(
        self,
        session_id: str,
        *,
        current: SessionStatus,
        target: SessionStatus,
        expected: Iterable[SessionStatus] = (),
    ) -> None:
        allowed = ", ".join(sorted(expected)) or "-"
        super().__init__(
            f"agent session {session_id!r} is {current!s}; cannot move to {target!s}"
            f" (expected one of: {allowed})"
        )
        self.session_id = session_id
        self.current = current
        self.target = target
        self.expected = frozenset(expected)


class CheckpointNotFound(DomainError, LookupError):
    """No restorable checkpoint exists for the session and iteration."""

    def __init__(self, session_id: str, iteration_number: int | None = None) -> None:
        which = "any iteration" if iteration_number is None else f"iteration {iteration_number}"
        super().__init__(f"no checkpoint of agent session {session_id!r} at {which}")
        self.session_id = session_id
        self.iteration_number = iteration_number


class StaleRunner(DomainError):
    """A runner acted with a resume token that is no longer the session's: the session
    was delivered again to another runner, which alone may save and heartbeat now."""

    def __init__(self, session_id: str, token: str | None = None) -> None:
        super().__init__(
            f"agent session {session_id!r} belongs to a newer runner: resume token"
            f" {token!r} is stale"
        )
        self.session_id = session_id
        self.token = token


class ResumeInProgress(DomainError):
    """A redelivery was asked for while a delivery of the session is held under an
    unexpired lease (a hook is running it): nothing changed. ``force=True`` redelivers
    anyway, with a new token that fences the running runner."""

    def __init__(self, session_id: str, *, until: datetime | None = None) -> None:
        held = "" if until is None else f" until {until.isoformat()}"
        super().__init__(
            f"agent session {session_id!r} is being resumed: its delivery is held{held};"
            " redeliver with force to fence the running runner"
        )
        self.session_id = session_id
        self.until = until


class SessionStoreUnavailable(DomainError):
    """Redis did not answer in time or answered with an error."""


class TransactionConflict(DomainError):
    """PostgreSQL aborted the transaction to keep concurrent ones consistent (a
    serialisation failure or a deadlock); nothing of it was written: run it again."""


class DatabaseError(DomainError):
    """PostgreSQL refused a statement for a reason none of the other errors names; the
    SQLSTATE is in the message. Nothing of the transaction was written."""


class DatabaseUnavailable(DomainError):
    """PostgreSQL could not be reached or dropped the connection mid-transaction."""


class EventType(StrEnum):
    """What an outbox event reports (DESIGN.md §8; delivered as signed webhooks)."""

    THRESHOLD = "budget.threshold"  # 90 / 100 / 110 % of a user's day, once each
    SLEPT = "session.slept"
    WOKEN = "session.woken"
    STOPPED = "session.stopped"
    TOPPED_UP = "budget.topped_up"
    RESUME_PARKED = "resume.parked"
    RUNNER_FENCED = "runner.fenced"
