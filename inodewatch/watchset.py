"""The inotify watches all targets need together, kept in step with their snapshots.

Each target says, per path, which events it needs there (`sync`); the set watches the inode
now at that path with the union of every target's events, and the path's directory for new
entries.  A watch follows the path: when another file appears there, it is watched instead.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from typing import Any

from inodewatch.model import FileId
from inodewatch.watch import OPEN_EVENTS, FileWatcher, WatchLimitReached

# path -> (events wanted there, the inode now at the path or None)
Wanted = dict[bytes, tuple[int, FileId | None]]


class WatchSet:
    def __init__(self, watcher: FileWatcher, on_limit: Callable[[str], None]) -> None:
        self.watcher = watcher
        self.on_limit = on_limit  # told once, when the watch limit is first hit
        self.limited = False
        self.by_pid: dict[int, dict[bytes, int]] = {}  # pid -> path -> events it needs
        self.users: dict[bytes, dict[int, int]] = {}  # path -> pid -> events it needs
        self.dir_refs: Counter[bytes] = Counter()
        self.state: dict[bytes, tuple[FileId, int]] = {}  # path -> (inode, mask) watched

    def sync(self, pid: int, wanted: Wanted) -> bool:
        """Make the watches match what `pid` needs now.  True if a file whose open matters
        (OPEN_EVENTS) has just been watched: it may have been opened before the watch was
        there, so the caller should look again shortly."""
        old = self.by_pid.pop(pid, {})
        for path in old.keys() - wanted.keys():
            del self.users[path][pid]
            if self.users[path]:
                if path in self.state:  # others still need it: their events only
                    self._apply(path, self.state[path][0])
                continue
            del self.users[path]
            self.state.pop(path, None)
            self.watcher.unwatch(path)
            self._release_directory(os.path.dirname(path))
        for path, (mask, _) in wanted.items():
            users = self.users.setdefault(path, {})
            if not users:
                directory = os.path.dirname(path)
                self.dir_refs[directory] += 1
                if self.dir_refs[directory] == 1:
                    self._add(self.watcher.watch_directory, directory)
            users[pid] = mask
        if wanted:
            self.by_pid[pid] = {path: mask for path, (mask, _) in wanted.items()}
        newly_open = False
        for path, (mask, on_disk) in wanted.items():
            current = self.state.get(path)
            if old.get(path) == mask and current is not None and current[0] == on_disk:
                continue  # nothing changed for this target here: no O(targets) union again
            if self._apply(path, on_disk) and mask & OPEN_EVENTS:
                newly_open = True
        return newly_open

    def covers(self, path: bytes, inode: FileId, events: int) -> bool:
        """Whether `inode`, at `path`, is watched for any of `events`."""
        current = self.state.get(path)
        return current is not None and current[0] == inode and bool(current[1] & events)

    def watched_inode(self, path: bytes) -> FileId | None:
        return self.state[path][0] if path in self.state else None

    def forget(self, path: bytes) -> None:
        """The kernel dropped this watch (IN_IGNORED): add it again at the next sync."""
        self.state.pop(path, None)

    def _apply(self, path: bytes, on_disk: FileId | None) -> bool:
        """Watch the inode now at `path` with every target's events; True if it changed."""
        if on_disk is None:
            return False  # nothing there now: the directory watch says when something appears
        mask = 0
        for m in self.users[path].values():
            mask |= m
        current = self.state.get(path)
        if current == (on_disk, mask):
            return False
        if current is not None and current[0] != on_disk:
            self.watcher.unwatch(path)  # a new file at the path: watch it instead
        if self._add(self.watcher.watch_file, path, mask):
            self.state[path] = (on_disk, mask)
            return True
        return False

    def _release_directory(self, directory: bytes) -> None:
        self.dir_refs[directory] -= 1
        if self.dir_refs[directory] <= 0:
            del self.dir_refs[directory]
            self.watcher.unwatch(directory)

    def _add(self, add: Callable[..., Any], *args: Any) -> bool:
        try:
            add(*args)
            return True
        except WatchLimitReached as exc:
            if not self.limited:
                self.limited = True
                self.on_limit(str(exc))
        except OSError:
            pass  # gone meanwhile; the next re-read sees why
        return False
