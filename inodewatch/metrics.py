"""`--metrics-file PATH`: Prometheus gauges and counters for node_exporter's textfile collector.

The file is rewritten whole at each `write()`: prometheus_client's `write_to_textfile` writes
``PATH.<pid>.<thread>`` in the same directory, then renames it over PATH, so a reader sees the
old file or the new one, never half of one.  The collector reads only ``*.prom`` files, so it
never picks up the temporary file either; name PATH ``something.prom``.

Importing prometheus_client costs about 80 ms, so only the daemon imports this module, and
only when --metrics-file is given.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics, write_to_textfile

from inodewatch.events import LIVE, NAMES

# The text format would carry every counter's creation time as one more gauge series
# (inodewatch_events_created{event=...}), which the textfile collector exports as data.
disable_created_metrics()


class Metrics:
    """The daemon's metrics, written to `path` on demand."""

    def __init__(self, path: str) -> None:
        self.path = path
        # A registry of our own: the global one also carries this Python process's own
        # metrics (memory, GC, platform), which do not belong in the host's textfile.
        self.registry = CollectorRegistry()
        self.targets = Gauge("inodewatch_targets_watched", "Processes being watched.",
                             registry=self.registry)
        self.live = Gauge("inodewatch_divergences_live",
                          "Divergences live now, by what diverges (mapping or fd) and how.",
                          ["subject", "kind"], registry=self.registry)
        self.events = Counter("inodewatch_events_total", "Events logged, by event name.",
                              ["event"], registry=self.registry)
        self.updated = Gauge("inodewatch_last_update_timestamp_seconds",
                             "When the daemon last wrote this file (a stale value means it stopped).",
                             registry=self.registry)
        # (subject, kind) of every divergence the daemon can hold live, ordered: a stable
        # file, diff-able
        self._live_keys = dict.fromkeys(LIVE)
        self.set_live({})
        # Every event of the contract starts at 0: a series that is born at 1 is invisible to
        # increase() and rate(), so an alert on the first mapping.overwritten would never fire.
        for name in NAMES:
            self.events.labels(event=name)

    def count_event(self, name: str) -> None:
        self.events.labels(event=name).inc()

    def set_targets(self, n: int) -> None:
        self.targets.set(n)

    def set_live(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Set the live divergences, (subject, kind) -> count.  Every series not in `counts`
        (known or set before) goes to 0, so a resolved divergence stops showing."""
        self._live_keys.update(dict.fromkeys(counts))
        for subject, kind in self._live_keys:
            self.live.labels(subject=subject, kind=kind).set(counts.get((subject, kind), 0))

    def write(self) -> str | None:
        """Replace the metrics file atomically.  Return None, or a one-line error message
        (never raise: a full disk must not stop the watching; the caller logs it once)."""
        self.updated.set(time.time())
        try:
            write_to_textfile(self.path, self.registry)
        except OSError as exc:
            return f"cannot write metrics file {self.path}: {exc.strerror or exc}"
        return None
