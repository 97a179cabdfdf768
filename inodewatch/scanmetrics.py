"""`scan --metrics-file PATH`: what one scan found, as a node_exporter textfile.

Written as the daemon's metrics are (inodewatch.metrics): a private prometheus_client
registry, `write_to_textfile` (a temporary file beside PATH renamed over it: a reader sees
the old file or the new one).  Series, from the groups of inodewatch.restart:

  inodewatch_scan_stale_processes{unit,user_unit,container}  processes that need a restart
  inodewatch_scan_stale_file_processes{path,package}         per stale file, its processes
  node_processes_linking_deleted_libraries{library_path,library_name}
      the community textfile script's (deleted_libraries.py): processes mapping a file whose
      inode has no link left, the path split in directory and name; as there, whatever the
      content (it counts a fact, not a need)
  inodewatch_scan_identical_processes                        replaced, identical content only
  inodewatch_scan_processes_scanned, inodewatch_scan_processes_skipped
  inodewatch_scan_timestamp_seconds                          when the scan ran

Labels hold untrusted names (a user's own processes and files): at most MAX_SERIES series
per family, the processes of the rest counted in one series whose labels are "(other)", so
the file stays small whatever a user maps.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

from inodewatch.restart import Group
from inodewatch.text import safe_text

MAX_SERIES = 500
OTHER = "(other)"


def _capped(counts: Counter[tuple[str, ...]], width: int) -> list[tuple[tuple[str, ...], int]]:
    top = counts.most_common(MAX_SERIES)
    rest = sum(counts.values()) - sum(n for _, n in top)
    return top + ([((OTHER,) * width, rest)] if rest else [])


def _container(group: Group) -> str:
    p = group.placement
    if p is None or p.container_runtime is None:
        return ""
    return f"{p.container_runtime}:{safe_text(p.container_id or b'')}"


def registry_for(groups: Sequence[Group], scanned: int, skipped: int,
                 now: float | None = None) -> CollectorRegistry:
    registry = CollectorRegistry()
    per_unit: Counter[tuple[str, ...]] = Counter()
    seen: set[tuple[tuple[str, ...], int]] = set()
    per_file: Counter[tuple[str, ...]] = Counter()
    deleted: Counter[tuple[str, ...]] = Counter()
    stale_pids: set[int] = set()
    identical_pids: set[int] = set()
    for g in groups:
        p = g.placement
        where = (safe_text(p.unit or b"") if p else "", safe_text(p.user_unit or b"") if p else "",
                 _container(g))
        pids = [m.pid for m in g.members]
        if g.file.needs_restart:
            stale_pids.update(pids)
            for pid in pids:
                if (where, pid) not in seen:
                    seen.add((where, pid))
                    per_unit[where] += 1
            per_file[(safe_text(g.file.path), str(g.file.package) if g.file.package else "")] += len(pids)
        else:
            identical_pids.update(pids)
        if g.file.subject == "mapping" and "deleted" in g.file.kinds:
            directory, name = os.path.split(safe_text(g.file.path))
            deleted[(directory, name)] += len(pids)
    families = (
        ("inodewatch_scan_stale_processes", "Processes running code no longer on disk (a "
         "restart needed), by systemd unit, user unit and container.",
         ["unit", "user_unit", "container"], per_unit),
        ("inodewatch_scan_stale_file_processes", "Processes holding each stale file (a restart "
         "needed), with the package owning it.", ["path", "package"], per_file),
        ("node_processes_linking_deleted_libraries", "Count of running processes that link a "
         "deleted library (as the textfile collector script deleted_libraries.py).",
         ["library_path", "library_name"], deleted),
    )
    for name, doc, labels, counts in families:
        gauge = Gauge(name, doc, labels, registry=registry)
        for values, n in _capped(counts, len(labels)):
            gauge.labels(*values).set(n)
    for name, doc, value in (
            ("inodewatch_scan_identical_processes",
             "Processes whose replaced files are all of identical content (no restart needed).",
             len(identical_pids - stale_pids)),
            ("inodewatch_scan_processes_scanned", "Processes the scan read.", scanned),
            ("inodewatch_scan_processes_skipped",
             "Processes skipped: kernel threads, unreadable, exited meanwhile.", skipped),
            ("inodewatch_scan_timestamp_seconds", "When the scan ran.",
             time.time() if now is None else now)):
        Gauge(name, doc, registry=registry).set(value)
    return registry


def write(path: str, groups: Sequence[Group], scanned: int, skipped: int) -> str | None:
    """Replace the file at `path`; None, or a one-line error."""
    try:
        write_to_textfile(path, registry_for(groups, scanned, skipped))
    except OSError as exc:
        return f"cannot write metrics file {path}: {exc.strerror or exc}"
    return None
