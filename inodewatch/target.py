"""One watched process as a state machine: snapshots, file events and the clock in; the events
of the contract, the watches it needs and the follow-up looks it wants out.

The daemon (the composition root) does every read: /proc, stat, inotify, the exit; it feeds
the answers in -- a snapshot of the files the target maps and holds, what a path names now,
the content judge, whether a file has been watched since the last look, `now` -- and acts on
what comes back.  No I/O here, and no clock but the one passed in, so the whole reaction to
an upgrade, a cp over a mapped file or a flood of opens runs in a unit test.

Its parts: `TargetHistory` (inodewatch.diff), what the daemon has seen of the target, kept
across restarts by the state file; and what only a live target needs: its last snapshot, the
files it mapped a moment ago, the pace of its looks (inodewatch.pacing).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from inodewatch.diff import Event, TargetHistory
from inodewatch.model import FileId, MappedFile, OpenFile, find_divergence
from inodewatch.pacing import Bucket
from inodewatch.watch import NAME_EVENTS, OPEN_EVENTS, WRITE_EVENTS

if TYPE_CHECKING:
    import os

    from inodewatch.exits import ExitStatus
    from inodewatch.model import Finding
    from inodewatch.procfs import OnDisk, ProcessId

# After a watched file is opened (dlopen in progress) the mapping appears a moment later:
# look again at these delays so a reload is seen in milliseconds, not at the next tick.
RELOAD_FOLLOW_UP = (0.002, 0.010, 0.030, 0.100)

# How long a file the target stopped mapping stays watched (a plugin host reloading it maps
# nothing between its dlclose and its dlopen).
LINGER = 10.0

# A new file at a diverged path being opened, then closed once mapped: the dlopen.
RELOAD_KINDS = {"opened", "closed"}

# Each target may spend LOOK_BURST s on looks at once, then its share of a core (the daemon's
# LOOK_SHARE, split among the targets of its kind: the rate passed in).
LOOK_BURST = 0.05


class Look(NamedTuple):
    """What one look at the target came to: the events to log, and the watches it needs now
    (path as the target sees it -> inotify events there)."""

    events: list[Event]
    watches: dict[bytes, int]


class FileReaction(NamedTuple):
    """What an inotify event on one of the target's watches asks for.  `look_first`: look at
    the target now, whatever its pace, then ask `write_began` (a write of a file it maps may
    have begun); `reload`: its follow-up looks (`follow_ups`), a dlopen may be under way.
    Every event also asks for a paced look (the daemon's want_look)."""

    events: list[Event]
    look_first: bool
    reload: bool


@dataclass
class Target:
    """One target's state; the daemon holds its fds and timers apart."""

    ident: ProcessId
    pace: Bucket  # its looks (see LOOK_BURST); `new` starts it full
    # --watch: only these files get attention (None: every file)
    watch_paths: set[bytes] | None = None
    history: TargetHistory = field(default_factory=TargetHistory)
    mapped: dict[FileId, MappedFile] = field(default_factory=dict)
    open_files: list[OpenFile] = field(default_factory=list)
    term: tuple[str, bytes] | None = None  # the selector term it matched, if any
    recently_mapped: dict[bytes, float] = field(default_factory=dict)  # path -> last seen mapped
    # uid and mount namespace, on every event about it: a user's own namespace can put her
    # file at a path that means another file on the host (report tells them apart); and its
    # unit and container, the operator's name for it
    owner: dict[str, Any] = field(default_factory=dict)
    # Named by the operator (--pid, --unit, --cgroup; matchers.operator_named), not matched
    # by a selector anyone can match: first for watches, and paced apart.
    operator: bool = True

    @classmethod
    def new(cls, ident: ProcessId, now: float, watch_paths: set[bytes] | None = None) -> Target:
        return cls(ident, Bucket(LOOK_BURST, now), watch_paths)

    @property
    def pid(self) -> int:
        return self.ident.pid

    # --- looks ------------------------------------------------------------------------

    def look(self, mapped: list[MappedFile], open_files: list[OpenFile], now: float,
             at: Callable[[bytes], OnDisk | None], judge: Callable[[Finding], Finding],
             write_watched: Callable[[bytes, FileId], bool]) -> Look:
        """A snapshot of the target (the files it maps and holds, read just now): its events,
        given what was seen before, and the watches it needs from now on.

        `at(path)`: what the path names now, as the target sees it (OnDisk, or None);
        `judge`: a new divergence's content (inodewatch.contentpass); `write_watched(path,
        file)`: whether `file` at `path` has been watched for writes since the last look
        (then a changed stamp is no overwrite: its IN_MODIFY would have told)."""
        history = self.history
        if self.watch_paths is not None:
            keep = self.watch_paths
            mapped = [m for m in mapped if history.first_path(m) in keep]
            open_files = [f for f in open_files if history.first_path(f) in keep]
        history.learn(mapped, [(f.file, f.path) for f in open_files])
        findings = find_divergence(mapped, open_files, lambda path: _file(at(path)),
                                   history.first_paths)

        def stamp_at(path: bytes) -> tuple[int, int, int] | None:
            found = at(path)  # stat'ed already by find_divergence: a cache hit
            return None if found is None else (found.stat.st_ino, found.stat.st_size,
                                               found.stat.st_mtime_ns)

        events = history.update(mapped, findings,
                                lambda m: write_watched(history.first_path(m), m.file),
                                judge, stamp_at)
        self.mapped = {m.file: m for m in mapped}
        self.open_files = open_files
        # A plugin host between its dlclose and its dlopen maps nothing: keep watching what
        # it mapped a moment ago, or the next replacement goes unseen until the re-read.
        self.recently_mapped = {p: t for p, t in self.recently_mapped.items() if now - t < LINGER}
        self.recently_mapped.update((history.first_path(m), now) for m in mapped)
        return Look(events, self.wanted_watches())

    def wanted_watches(self) -> dict[bytes, int]:
        """Path (as the target sees it) -> the inotify events this target needs there."""
        history = self.history
        masks: dict[bytes, int] = {}
        for f in self.open_files:
            masks[history.first_path(f)] = NAME_EVENTS
        for m in self.mapped.values():
            masks[history.first_path(m)] = NAME_EVENTS | WRITE_EVENTS
        for path in history.awaiting_reload:  # its next open is the reload
            masks[path] = masks.get(path, NAME_EVENTS) | OPEN_EVENTS
        for path in self.recently_mapped:  # unloaded a moment ago: its reopen is the reload
            masks.setdefault(path, NAME_EVENTS | OPEN_EVENTS)
        if self.watch_paths is not None:  # (a history restored may await other paths)
            masks = {p: m for p, m in masks.items() if p in self.watch_paths}
        return masks

    @staticmethod
    def follow_ups(now: float) -> list[float]:
        """When to look again after a reload may have begun (a watched file opened, or a
        file whose open matters watched only now: it may have been opened before)."""
        return [now + delay for delay in RELOAD_FOLLOW_UP]

    # --- inotify's events -------------------------------------------------------------

    def on_file_event(self, kind: str, watched: FileId | None, now: float, rate: float,
                      stat: Callable[[], os.stat_result | None]) -> FileReaction:
        """An inotify event of `kind` (inodewatch.watch.FileEvent) on a watch this target
        holds; `watched`: the inode that watch is on; `rate`: its looks' share of a core;
        `stat()`: what the watch's path names now (asked only when a size is needed)."""
        look_first = False
        events: list[Event] = []
        if kind == "modified":  # a write or truncation of the data itself
            look_first = self._write_may_begin(watched, now, rate)
        elif kind == "written":  # a close after writing: a touch, or the end of one
            events = self._write_closed(watched, stat)
        return FileReaction(events, look_first, kind in RELOAD_KINDS)

    def _write_may_begin(self, watched: FileId | None, now: float, rate: float) -> bool:
        """IN_MODIFY: True if it may be the in-place overwrite of a file the target maps,
        the one that crashes it; to tell at once (before the crash can come) after a look,
        since the map we hold may be older than a reload."""
        if watched is None or watched not in self.mapped or watched in self.history.overwritten:
            return False  # not its file, or told already: the paced look follows
        if not self.pace.allows(now, rate):
            # Flooded (a user writing her own mapped files): its paced look compares every
            # file's size and mtime, so the write is told then, not lost.
            self.history.unseen_writes = True
            return False
        return True

    def write_began(self, watched: FileId, stat: Callable[[], os.stat_result | None]) -> list[Event]:
        """After the look `look_first` asked for: mapping.overwritten if the target still
        maps the written inode."""
        m = self.mapped.get(watched)
        if m is None or m.deleted:
            return []
        event = self.history.write_began(m, _size(watched, stat))
        return [] if event is None else [event]

    def _write_closed(self, watched: FileId | None,
                      stat: Callable[[], os.stat_result | None]) -> list[Event]:
        """The size an overwrite left, if one began on the closed file."""
        if watched is None or watched not in self.history.writing:
            return []
        event = self.history.write_closed(watched, _size(watched, stat))
        return [] if event is None else [event]

    # --- events missed ------------------------------------------------------------------

    def checks_now(self, now: float, rate: float) -> bool:
        """Inotify may have missed events (its queue overflowed, or the loop did not run):
        True if the target is to be checked now (`missed_writes`, then a look whatever its
        pace); False for one anyone can match whose pace does not allow it: its next paced
        look compares every file's stamp."""
        if not self.operator and not self.pace.allows(now, rate):
            self.history.unseen_writes = True
            return False
        return True

    def missed_writes(self, at: Callable[[bytes], OnDisk | None]) -> list[Event]:
        """In-place writes inotify did not tell: a file still at its first path, the same
        inode, with another size or mtime (`at`: as in `look`; the target may be dead)."""
        return self.history.stamp_check(self.mapped.values(), at)

    # --- what it holds ------------------------------------------------------------------

    def holding(self, ino: int) -> MappedFile | None:
        """The mapping of inode number `ino`, under its first name (the guard's refusals)."""
        m = next((m for m in self.mapped.values() if m.file.ino == ino), None)
        return None if m is None else m._replace(path=self.history.first_path(m))

    def live_count(self) -> int:
        """How many divergences are live (the status line's count: no Counter built, since
        the line is written for every target each tick)."""
        return len(self.history.live) + len(self.history.overwritten)

    def live_divergences(self) -> Counter[tuple[str, str]]:
        live: Counter[tuple[str, str]] = Counter((f.subject, f.kind)
                                                 for f in self.history.live.values())
        live[("mapping", "overwritten")] += len(self.history.overwritten)
        return live

    # --- the end ------------------------------------------------------------------------

    def exited(self, status: ExitStatus) -> Event:
        """target.exited, with what was stale when it ended."""
        return with_status(Event("info", "target.exited", {"stale": self.history.stale()}), status)

    def asks_systemd(self, status: ExitStatus) -> bool:
        """Whether systemd may know more of how it ended than the kernel told (a --unit
        target's exit seen through its pidfd alone: inodewatch.unitstatus)."""
        return status.source == "pidfd" and self.term is not None and self.term[0] == "unit"


def with_status(event: Event, status: ExitStatus) -> Event:
    """target.exited with `status` (the kernel's, or systemd's later)."""
    fields = {"exit_code": status.exit_code, "signal": status.signal,
              "core_dumped": status.core_dumped, "status_source": status.source,
              **{k: v for k, v in event.fields.items()
                 if k not in ("exit_code", "signal", "core_dumped", "status_source")}}
    return Event("warning" if status.signal else "info", event.name, fields)


def _file(found: OnDisk | None) -> FileId | None:
    return None if found is None else found.file


def _size(file: FileId, stat: Callable[[], os.stat_result | None]) -> int | None:
    """The size of `file` if the path still names it (`stat()`: what it names now)."""
    st = stat()
    return st.st_size if st is not None and st.st_ino == file.ino else None

