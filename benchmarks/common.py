"""What every benchmark case shares: agent-like messages, timing, and markdown tables."""

from __future__ import annotations

import functools
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]

# A coding agent's call on Claude, as the provider reports it: a little new input, a cache
# write (a third of it with the 1-hour TTL), a long cached prefix read, some output.
AGENT_CALL: dict[str, Any] = {
    "input_tokens": 1_200,
    "output_tokens": 600,
    "cache_creation_input_tokens": 3_000,
    "cache_creation_1h_input_tokens": 1_000,
    "cache_read_input_tokens": 60_000,
}


def dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


_WORDS = (
    "the a to of and in is it for on with as that this test file function error fix run "
    "import return value class def self pytest assert module path line call failed passed "
    "update config build check diff patch commit branch merge review tool result output"
).split()


@functools.cache
def _text(i: int, size: int) -> str:
    rng = random.Random(i)
    words: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(_WORDS) if rng.random() < 0.7 else f"{rng.getrandbits(40):x}"
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[:size]


def message(i: int, size: int = 400) -> dict[str, Any]:
    """About ``size`` characters of agent-like text: compressible like prose, not like a
    repeated string, so TOAST compression does not flatter any contender."""
    return {"role": "assistant" if i % 2 else "user", "content": _text(i, size), "n": i}


@dataclass
class Stats:
    name: str
    ops: int
    median_ms: float
    spread_pct: float
    p99_ms: float
    cpu_us_per_op: float
    extra: dict[str, Any] = field(default_factory=dict)


class Recorder:
    """Per-op wall times and per-round CPU, for one case."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.times: list[float] = []
        self.round_medians: list[float] = []
        self.cpu = 0.0
        self.ops = 0
        self.extra: dict[str, Any] = {}

    async def round(self, op: Callable[[int], Awaitable[Any]], n: int) -> None:
        times = []
        cpu = time.process_time()
        for i in range(n):
            t = time.perf_counter()
            await op(i)
            times.append(time.perf_counter() - t)
        self.cpu += time.process_time() - cpu
        self.ops += n
        self.times += times
        self.round_medians.append(statistics.median(times))

    def stats(self) -> Stats:
        med = statistics.median(self.times)
        spread = (max(self.round_medians) - min(self.round_medians)) / med * 100 if med else 0
        p99 = sorted(self.times)[max(0, int(len(self.times) * 0.99) - 1)]
        return Stats(
            self.name, self.ops, med * 1e3, spread, p99 * 1e3, self.cpu / self.ops * 1e6, self.extra
        )


def table(title: str, rows: list[Stats], reference: str | None = None) -> str:
    ref = next((r for r in rows if r.name == reference), None)
    out = [f"\n### {title}\n", "| case | ops | median ms | spread | p99 ms | CPU µs/op | vs ref |",
           "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        ratio = f"{r.median_ms / ref.median_ms:.2f}x" if ref and r is not ref else "ref"
        out.append(
            f"| {r.name} | {r.ops} | {r.median_ms:.3f} | ±{r.spread_pct / 2:.0f}% |"
            f" {r.p99_ms:.3f} | {r.cpu_us_per_op:.0f} | {ratio} |"
        )
    return "\n".join(out)


def time_day() -> date:
    """Today's budget day, for the baselines that write a day's row themselves."""
    return datetime.now(UTC).date()
