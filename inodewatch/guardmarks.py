"""The guard in the daemon: which inodes it marks, for which targets, and what a refusal
means for each of them.

The guard (inodewatch.guard) refuses an open for writing of a file it marks.  The daemon
asks for the files its targets map, at each look (`wanted_marks`, pure), and this set keeps
one mark per inode however many targets map it, placed when the first target maps it and
removed when the last one stops (a reload maps another inode, the target exits).  A
refusal names the inode; `holders` says whose crash it prevented, and `refusal_events` what
each of them is told (pure).

Only what must be guarded (issue 15, item 3): a file the target maps now, still at the path
it maps it by (a deleted or replaced one cannot be written by name: nothing to guard),
on a mount the daemon trusts (the guard's helper looks the path up: a hung FUSE server
would hang it), and `guardable` (never what the loader finds in the system library
directories: every process start would wait on the guard).  `--watch` narrows it to those
files.
"""

from __future__ import annotations

import errno
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from inodewatch.diff import Event
from inodewatch.guard import REFUSED, Refusal, flags_text, guardable
from inodewatch.model import FileId, MappedFile, same_file

# Files recently unmarked, with the targets that held them: a refusal answered just before
# the unmark reaches the daemon after it, and still names whose crash it prevented.
RECENT = 1024


class Marker(Protocol):
    """What the set needs of inodewatch.guard.Guard."""

    def guard(self, path: bytes, dev: int, ino: int) -> bool: ...

    def unguard(self, dev: int, ino: int) -> None: ...


def wanted_marks(mapped: Iterable[MappedFile], root: bytes, at: Callable[[bytes], FileId | None],
                 trusts: Callable[[bytes], bool], widen: Iterable[bytes] = (),
                 only: set[bytes] | None = None) -> dict[FileId, bytes]:
    """inode (as stat tells it: the guard's refusals name it so) -> the path the guard
    should open it by (under `root`, the target's /proc/PID/root when it lives in another
    mount namespace), for the target's mapped files that may be guarded.  `at(path)`: the
    inode the path names now, as the target sees it; `only`: --watch's paths."""
    widen = tuple(widen)
    wanted: dict[FileId, bytes] = {}
    for m in mapped:
        path = m.path
        if m.deleted or (only is not None and path not in only) or not guardable(path, widen):
            continue
        if trusts(path) and (on_disk := at(path)) is not None and same_file(m.file, on_disk):
            wanted[on_disk] = root + path
    return wanted


class GuardMarks:
    def __init__(self, marker: Marker) -> None:
        self.marker = marker
        self.held: dict[int, set[FileId]] = {}  # pid -> inodes marked on its behalf
        self.holders_of: dict[FileId, set[int]] = {}  # inode -> pids (marked inodes only)
        self.recent: OrderedDict[FileId, frozenset[int]] = OrderedDict()

    def sync(self, pid: int, wanted: dict[FileId, bytes]) -> list[tuple[bytes, OSError]]:
        """Mark what `pid` wants that is not marked yet, unmark what it no longer wants and
        nobody else does.  Returns the marks the kernel refused (path, error), e.g. ENOSPC
        (fs.fanotify.max_user_marks): those files are not guarded, tried again next look.
        A path that names another file by now is skipped: the next look sees why."""
        old = self.held.get(pid, set())
        held = old & wanted.keys()
        refused = []
        for file in wanted.keys() - old:
            if file not in self.holders_of:
                try:
                    if not self.marker.guard(wanted[file], file.dev, file.ino):
                        continue
                except OSError as exc:
                    refused.append((wanted[file], exc))
                    continue
                self.holders_of[file] = set()
            self.holders_of[file].add(pid)
            held.add(file)
        for file in old - held:
            self._release(pid, file)
        if held:
            self.held[pid] = held
        else:
            self.held.pop(pid, None)
        return refused

    def drop(self, pid: int) -> None:
        """`pid` is gone: its marks go with it, unless another target maps the file."""
        for file in self.held.pop(pid, set()):
            self._release(pid, file)

    def holders(self, file: FileId) -> frozenset[int]:
        """The targets a refusal of `file` protected: those that hold its mark, or held it
        a moment ago."""
        if file in self.holders_of:
            return frozenset(self.holders_of[file])
        return self.recent.get(file, frozenset())

    def marked(self) -> int:
        return len(self.holders_of)

    def _release(self, pid: int, file: FileId) -> None:
        holders = self.holders_of[file]
        holders.discard(pid)
        if holders:
            return
        del self.holders_of[file]
        self.recent[file] = frozenset({pid})
        if len(self.recent) > RECENT:
            self.recent.popitem(last=False)
        self.marker.unguard(file.dev, file.ino)


HINT = ("an in-place write of a mapped file crashes the process mapping it; replace the file "
        "instead: install -m 644 NEW PATH, or cp NEW PATH.new && mv PATH.new PATH")


def writer_fields(refusal: Refusal) -> dict[str, Any]:
    fields: dict[str, Any] = {"writer_pid": refusal.pid, "writer_comm": refusal.comm,
                              "writer_exe": refusal.exe, "writer_cmdline": refusal.cmdline}
    if refusal.cmdline_truncated:
        fields["writer_cmdline_truncated"] = True
    return fields


def refusal_events(refusal: Refusal, held: Mapping[int, MappedFile | None],
                   deny_errno: int) -> list[tuple[int, Event]]:
    """(pid, event) for each target `held` (pid -> its mapping of the file, None when no
    longer known) of a refused open: mapping.write_refused, by the name the target maps it
    under.  An unjudged open (flags unreadable, allowed) is one guard.unjudged instead, pid
    0."""
    writer = writer_fields(refusal)
    path = refusal.path.removesuffix(b" (deleted)")
    if refusal.outcome != REFUSED:
        return [(0, Event("warning", "guard.unjudged", {
            "path": path, "pids": sorted(held), **writer,
            "detail": "its open flags could not be read: allowed (the guard never keeps an "
                      "opener waiting)"}))]
    events = []
    for pid, m in sorted(held.items()):
        file = m.file if m is not None else refusal.file
        events.append((pid, Event("critical", "mapping.write_refused", {
            "path": m.path if m is not None else path,
            "mapped_dev": file.dev_text, "mapped_ino": file.ino, **writer,
            "errno": errno.errorcode.get(deny_errno, str(deny_errno)),
            "flags": flags_text(refusal.flags or 0), "detail": HINT})))
    return events
