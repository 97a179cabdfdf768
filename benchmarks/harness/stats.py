"""Statistics and units of the benchmarks' tables: nearest-rank percentiles, a latency
summary, milliseconds, and the alternating order of peers."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import NamedTuple, TypeVar

T = TypeVar("T")


def percentile(values: Iterable[float], p: float) -> float:
    """Nearest-rank: p99 of 200 samples is the 198th smallest; nan when there are none."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


class Summary(NamedTuple):
    """A latency sample, in seconds; events that never came count as inf ("missing")."""

    n: int
    min: float
    p50: float
    p99: float
    max: float
    missing: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> Summary:
        """The summary of at least one sample."""
        return cls(len(samples), min(samples), percentile(samples, 50),
                   percentile(samples, 99), max(samples), sum(map(math.isinf, samples)))


def fmt_ms(seconds: float, digits: int = 2, width: int = 0) -> str:
    """Seconds shown as milliseconds ("inf" for an event that never came)."""
    if math.isinf(seconds):
        return "inf".rjust(width)
    return f"{seconds * 1000:{width}.{digits}f}"


def in_turn(items: Sequence[T], round_: int) -> list[T]:
    """A B in even rounds, B A in odd ones: slow drift of the machine hits every peer."""
    return list(items) if round_ % 2 == 0 else list(reversed(items))
