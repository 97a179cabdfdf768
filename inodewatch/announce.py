"""target.attached lines held back a moment for processes met at their birth.

The proc connector tells of a fork before the child runs: a worker attached then still has
its master's command line (nginx's workers rename themselves, "nginx: worker process", just
after).  So a target found through a fork or exec event is watched at once (its watches, its
first look), but its target.attached line, and the events that look found, wait until it is
ANNOUNCE_DELAY old, or until something else is to be said about it; the label is read then.
"""

from __future__ import annotations

from typing import Any

# Long enough for a forked worker to set its title (nginx: well under a millisecond), short
# enough that nobody waits for the line.
ANNOUNCE_DELAY = 0.1


class Announcements:
    """The held lines: pid -> (when due, the attach fields, the events found meanwhile)."""

    def __init__(self) -> None:
        self.held: dict[int, tuple[float, dict[str, Any], list[Any]]] = {}

    def hold(self, pid: int, due: float, info: dict[str, Any], events: list[Any]) -> None:
        self.held[pid] = (due, info, events)

    def holds(self, pid: int) -> bool:
        return pid in self.held

    def take(self, pid: int) -> tuple[dict[str, Any], list[Any]] | None:
        """What was held for `pid`, no longer held; None if nothing is."""
        entry = self.held.pop(pid, None)
        return None if entry is None else (entry[1], entry[2])

    def due(self, now: float) -> list[int]:
        return [pid for pid, (due, _, _) in self.held.items() if due <= now]

    def next_due(self) -> float | None:
        return min((due for due, _, _ in self.held.values()), default=None)
