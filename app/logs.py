"""Log records that cannot lie: one record is one line, whatever its values hold, and no
secret of the settings reaches it (DESIGN.md §6c)."""

from __future__ import annotations

import logging
import sys
import unicodedata
from collections.abc import Iterable
from typing import Final

from app.settings import Settings, mask_secrets

FORMAT: Final = "%(asctime)s %(levelname)s %(name)s %(message)s"
#: Libraries that log a request's URL (query tokens included) at INFO.
CHATTY: Final = ("httpx", "httpcore")
_ESCAPES: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_installed: logging.Handler | None = None


def escape(text: str) -> str:
    """``text`` with every control character and line or paragraph separator written as
    an escape (``\\n``, ``\\x1b``, ``\\u2028``): a value can no longer end its line and
    forge the next record, nor drive the terminal that shows it."""
    if text.isprintable():
        return text
    return "".join(
        _ESCAPES.get(ch)
        or (
            (f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
            if unicodedata.category(ch) in ("Cc", "Zl", "Zp", "Cs")
            else ch
        )
        for ch in text
    )


class SafeFormatter(logging.Formatter):
    """The message escaped, tracebacks indented (so no line of theirs can pass for a new
    record), and every secret masked."""

    def __init__(self, fmt: str = FORMAT, *, secrets: Iterable[str] = ()) -> None:
        super().__init__(fmt)
        self.secrets = frozenset(secrets)

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape(super().formatMessage(record))

    def formatException(self, ei: logging._SysExcInfoType) -> str:
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))

    def format(self, record: logging.LogRecord) -> str:
        return mask_secrets(super().format(record), self.secrets)


def _indented(block: str) -> str:
    return "\n".join("    " + escape(line) for line in block.splitlines())


def configure_logging(settings: Settings) -> None:
    """Standard error, at ``LOG_LEVEL``, through :class:`SafeFormatter`; httpx and
    httpcore only from WARNING on (they log every request's URL at INFO)."""
    global _installed
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter(secrets=settings.secrets()))
    root = logging.getLogger()
    root.setLevel(settings.log_level)
    if _installed is not None:  # called again in one process (tests): replace, not add
        root.removeHandler(_installed)
    root.addHandler(handler)
    _installed = handler
    for name in CHATTY:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
