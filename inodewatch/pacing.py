"""Pacing: how often the loop may do something a user can make it do (issue 13, item 11).

Anyone can make the daemon look at a target again: open a file it watches for opens, create
names next to a plugin, or run a process matching `--name` that maps 65,000 files, whose one
look costs a second.  A `Bucket` lets such work run at once in a burst, then at a share of
the clock only: an action is allowed while the balance is not negative, and its cost, known
only afterwards (a look's time), is then taken however large it is; the balance refills at
`rate` per second up to `capacity`.  So a cheap target reacts to a normal burst of events at
once, a flooded one is looked at a few times a second at most, and a huge one rarely.

Pure: the caller passes the clock, and the rate (which may depend on how many targets share
it) at each call.
"""

from __future__ import annotations


class Bucket:
    """A token bucket that may run into debt (see the module docstring)."""

    __slots__ = ("capacity", "balance", "at")

    def __init__(self, capacity: float, now: float) -> None:
        self.capacity = capacity
        self.balance = capacity
        self.at = now

    def _refill(self, now: float, rate: float) -> None:
        if now > self.at:
            self.balance = min(self.capacity, self.balance + (now - self.at) * rate)
            self.at = now

    def allows(self, now: float, rate: float) -> bool:
        self._refill(now, rate)
        return self.balance >= 0

    def ready_at(self, now: float, rate: float) -> float:
        """When the balance will be back at zero (`now` if it is already)."""
        self._refill(now, rate)
        return now if self.balance >= 0 else now - self.balance / rate

    def take(self, cost: float, now: float, rate: float) -> None:
        self._refill(now, rate)
        self.balance -= cost
