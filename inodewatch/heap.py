"""The cyclic garbage collector's pauses, kept short in a daemon that holds thousands of
targets.  Standard library only.

CPython's collector stops the loop while it walks every object of the generation it
collects.  A daemon watching 5,000 plugin hosts holds 173,000-185,000 tracked objects
(snapshots, watches, pidfds, buckets: measured); a full collection walks all of them in
90-115 ms, and the oldest generation is collected on its own whenever the objects that
survived since the last time exceed a quarter of the rest -- every few minutes with the
periodic re-read alone, sooner under events (pauses of 50-66 ms seen in the fleet sweep).
An overwrite that lands in such a pause is told that much later.

So at each tick, what is alive is frozen (`gc.freeze`: moved to a generation no automatic
collection walks, in O(1)); the collections that still run walk only what was made since
the last tick.  Refcounting frees frozen objects as before; only garbage held in a cycle
among them waits, until the full collection every FULL_COLLECT_PERIOD s (unfreeze, collect,
freeze again: one ~100 ms pause an hour at 5,000 targets).  The daemon makes few cycles: 9
objects reclaimed by a full collection after an attach of 5,000, 30 s of 1,000 execs a
second and 200 rm+cp (measured), so what waits is small.
"""

from __future__ import annotations

import gc

FULL_COLLECT_PERIOD = 3600.0


class Heap:
    """`tick(now)` at each of the daemon's ticks; the clock is an argument, so tests drive it."""

    def __init__(self, now: float, period: float = FULL_COLLECT_PERIOD) -> None:
        self.period = period
        self.next_full = now + period

    def tick(self, now: float) -> bool:
        """Freeze what is alive; every `period` s first collect everything.  Whether this
        tick made the full collection."""
        full = now >= self.next_full
        if full:
            self.next_full = now + self.period
            gc.unfreeze()
            gc.collect()
        gc.freeze()
        return full
