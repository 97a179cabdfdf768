"""The inotify watches all targets need together, kept in step with their snapshots, within a
budget.

Each target says, per path, which events it needs there (`sync`); the set watches the inode
now at that path with the union of every target's events, and the path's directory for new
entries of that name.  A watch follows the path: when another file appears there, it is
watched instead.

The budget (issue 13, item 6).  Watches come out of fs.inotify.max_user_watches, which the
daemon shares with every process of its user (as root: every root daemon): three user
processes mapping 65,000 files each, followed by `--name`, took all of them.  So:

* the set holds at most `budget` watches, files and directories counted (the daemon's
  default: half of max_user_watches), and one target at most `per_target` paths
  (`per_target_cap`), so one process cannot take the share of all the others;
* a target the operator named (`operator=True`: `--pid`, `--unit`, `--cgroup`) that finds
  the budget full takes the watches of targets anyone can match (`--name`, `--exe`): theirs
  are given up, the target holding most first;
* within a target, paths awaiting a reload come first, then mapped files, then files held
  only through an fd;
* a path refused for lack of room is *unwatched* (`unwatched`, `affected`): the target's
  periodic re-read still compares it, so a change there is found, only later.  ENOSPC from
  the kernel (other processes spent the limit) is a ceiling on what is held until `retry`.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from typing import Any

from inodewatch.model import FileId
from inodewatch.watch import OPEN_EVENTS, WRITE_EVENTS, FileWatcher, WatchLimitReached

# path -> (events wanted there, the inode now at the path or None)
Wanted = dict[bytes, tuple[int, FileId | None]]

# One target may hold 1/16 of the budget (6,000 paths with the default budget on a host whose
# max_user_watches is 192,000), but never fewer than 256 (a plugin host maps a few hundred
# files at most), nor more than the budget itself.
PER_TARGET_SHARE = 16
PER_TARGET_MIN = 256

# What adding a watch came to.
ADDED, FULL, GONE = "added", "full", "gone"


class _Users(dict[int, int]):
    """pid -> the events it needs on one path, with the union of them all kept up to date: a
    library every target maps has thousands of users, and each attach syncs it."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[int] = Counter()  # events -> how many users need exactly those

    def __setitem__(self, pid: int, mask: int) -> None:
        if (old := self.get(pid)) is not None:
            self._drop(old)
        super().__setitem__(pid, mask)
        self.counts[mask] += 1

    def __delitem__(self, pid: int) -> None:
        self._drop(self[pid])
        super().__delitem__(pid)

    def _drop(self, mask: int) -> None:
        self.counts[mask] -= 1
        if not self.counts[mask]:
            del self.counts[mask]

    def union(self) -> int:
        mask = 0
        for events in self.counts:
            mask |= events
        return mask


def default_budget(max_user_watches: int) -> int:
    """Half of fs.inotify.max_user_watches: the rest is left to the other processes of the
    same user (as root, every root daemon)."""
    return max(1, max_user_watches // 2)


def per_target_cap(budget: int) -> int:
    return min(budget, max(PER_TARGET_MIN, budget // PER_TARGET_SHARE))


def _importance(mask: int) -> tuple[bool, bool]:
    """Sort key: a path awaiting a reload (its open is the reload), then a mapped file
    (an in-place write crashes the target), then a file held through an fd."""
    return (not mask & OPEN_EVENTS, not mask & WRITE_EVENTS)


class WatchSet:
    def __init__(self, watcher: FileWatcher, budget: int, per_target: int | None = None) -> None:
        self.watcher = watcher
        self.budget = budget
        self.per_target = per_target_cap(budget) if per_target is None else per_target
        self.ceiling: int | None = None  # the kernel said ENOSPC with this much held
        self.granted: dict[int, dict[bytes, int]] = {}  # pid -> path -> events, watched for it
        self.operator: dict[int, bool] = {}  # pid -> named by the operator
        self.denied: dict[int, int] = {}  # pid -> paths it wants that got no room
        self.refused: set[bytes] = set()  # granted paths whose new watch the kernel refused
        self.users: dict[bytes, _Users] = {}  # path -> pid -> events (granted only)
        self.dir_refs: Counter[bytes] = Counter()  # directory -> granted paths in it
        # directory -> the entry names granted there: the watcher reads the directory's
        # events about these names only (a flood of other names costs a set look-up each)
        self.names: dict[bytes, set[bytes]] = {}
        self.state: dict[bytes, tuple[FileId, int]] = {}  # path -> (inode, mask) watched
        self.muted: dict[bytes, int] = {}  # path -> events left out of its watch for now (mute)
        # Watches that followed their path to a new file, counted; and per path the inode the
        # last one left, its mask and that count (`covered_since`)
        self.moves = 0
        self.left: dict[bytes, tuple[FileId, int, int]] = {}
        self._unwatched = 0  # sum of self.denied

    # --- the budget ---------------------------------------------------------------------

    def used(self) -> int:
        """Watches held or reserved: one per granted path (its file, when there is one), one
        per directory of granted paths."""
        return len(self.users) + len(self.dir_refs)

    def room(self) -> int:
        limit = self.budget if self.ceiling is None else min(self.budget, self.ceiling)
        return limit - self.used()

    def unwatched(self) -> int:
        """Paths some target wants that are not watched for lack of room."""
        return self._unwatched + len(self.refused)

    def affected(self) -> list[int]:
        """The targets with unwatched paths."""
        pids = {pid for pid, n in self.denied.items() if n}
        for path in self.refused:
            pids.update(self.users.get(path, ()))
        return sorted(pids)

    def retry(self) -> None:
        """Try the kernel again: others may have given watches back since it said ENOSPC."""
        self.ceiling = None

    # --- keeping in step ----------------------------------------------------------------

    def sync(self, pid: int, wanted: Wanted, operator: bool = True) -> bool:
        """Make the watches match what `pid` needs now, as far as the budget goes.  True if a
        file whose open matters (OPEN_EVENTS) has just been watched: it may have been opened
        before the watch was there, so the caller should look again shortly."""
        old = self.granted.pop(pid, {})
        for path in old.keys() - wanted.keys():
            self._release(pid, path)
        self._unwatched -= self.denied.pop(pid, 0)
        if not wanted:
            self.operator.pop(pid, None)
            return False
        self.operator[pid] = operator
        granted: dict[bytes, int] = {}
        self.granted[pid] = granted
        fresh = []
        for path, (mask, _) in wanted.items():
            if path in old:
                granted[path] = self.users[path][pid] = mask
            else:
                fresh.append(path)
        unmuted = self.muted.keys() & wanted.keys()  # a look at a target puts its opens back
        for path in unmuted:
            del self.muted[path]
        denied = 0
        newly_open = False
        if len(fresh) > min(self.per_target - len(granted), self.room()):
            fresh.sort(key=lambda p: _importance(wanted[p][0]))  # not all fit: the first ones
        for i, path in enumerate(fresh):
            if len(granted) >= self.per_target:
                denied += len(fresh) - i
                break
            mask, on_disk = wanted[path]
            if not self._grant(pid, path, mask, operator):
                denied += 1
                continue
            granted[path] = mask
            done = self._apply(path, on_disk)
            if done == FULL:  # the kernel refused it: not granted after all
                self._release(pid, path)
                del granted[path]
                denied += 1
                self.ceiling = self.used()
            elif done == ADDED and mask & OPEN_EVENTS:
                newly_open = True
        for path in old.keys() & granted.keys():
            mask, on_disk = wanted[path]
            current = self.state.get(path)
            if (old[path] == mask and current is not None and current[0] == on_disk
                    and path not in unmuted):
                continue  # nothing changed for this target here: no O(targets) union again
            if self._apply(path, on_disk) == ADDED and mask & OPEN_EVENTS:
                newly_open = True
        self.denied[pid] = denied
        self._unwatched += denied
        return newly_open

    def mute(self, path: bytes, events: int) -> None:
        """Leave `events` out of the watch on `path` until one of its targets is synced again:
        they flood (anyone may open a plugin 300,000 times a second, and a user write or
        chmod her own mapped files), every one a record to read, and every read a look.  A
        burst of them means "look again" once; the look that follows puts them back."""
        if path not in self.state or not self.state[path][1] & events:
            return
        self.muted[path] = self.muted.get(path, 0) | events
        self._apply(path, self.state[path][0])

    def covers(self, path: bytes, inode: FileId, events: int) -> bool:
        """Whether `inode`, at `path`, is watched for any of `events`."""
        current = self.state.get(path)
        return current is not None and current[0] == inode and bool(current[1] & events)

    def covered_since(self, path: bytes, inode: FileId, events: int, moves: int) -> bool:
        """Whether `inode`, at `path`, has been watched for any of `events` since the set
        had made `moves` moves: watched now, or until a move made after that.  Targets that
        share a file are looked at one after the other: the first look after an upgrade
        moves the watch to the new file, and the old inode was watched all along for the
        others too (an mtime a touch moved meanwhile is not an unwatched write)."""
        if self.covers(path, inode, events):
            return True
        left = self.left.get(path)
        return left is not None and left[0] == inode and bool(left[1] & events) and left[2] > moves

    def holders(self, path: bytes) -> list[int]:
        """The targets `path` is watched for."""
        return list(self.users.get(path, ()))

    def watched_inode(self, path: bytes) -> FileId | None:
        return self.state[path][0] if path in self.state else None

    def forget(self, path: bytes) -> None:
        """The kernel dropped this watch (IN_IGNORED): add it again at the next sync."""
        self.state.pop(path, None)
        self.muted.pop(path, None)

    # --- the pieces ---------------------------------------------------------------------

    def _grant(self, pid: int, path: bytes, mask: int, operator: bool) -> bool:
        """Reserve room for `path` on behalf of `pid` (its directory watched, the file's
        watch left to _apply); False if there is none."""
        directory, name = os.path.split(path)
        cost = (path not in self.users) + (directory not in self.dir_refs)
        if cost > self.room() and operator:
            self._evict(cost - self.room())
        if cost > self.room():
            return False
        if path not in self.users:  # the first target to want it: its directory too
            if directory not in self.dir_refs:
                names = self.names[directory] = set()
                if self._add(self.watcher.watch_directory, directory, names) == FULL:
                    del self.names[directory]
                    return False
            self.dir_refs[directory] += 1
            self.names[directory].add(name)
            self.users[path] = _Users()
        self.users[path][pid] = mask
        return True

    def _release(self, pid: int, path: bytes) -> None:
        """`pid` gives `path` up; the watch goes when nobody holds the path any more."""
        users = self.users[path]
        del users[pid]
        if users:
            if path in self.state:  # others still need it: their events only
                self._apply(path, self.state[path][0])
            return
        del self.users[path]
        self.state.pop(path, None)
        self.left.pop(path, None)
        self.muted.pop(path, None)
        self.refused.discard(path)
        self.watcher.unwatch(path)
        directory, name = os.path.split(path)
        self.names[directory].discard(name)
        self.dir_refs[directory] -= 1
        if self.dir_refs[directory] <= 0:
            del self.dir_refs[directory]
            del self.names[directory]
            self.watcher.unwatch(directory)

    def _evict(self, needed: int) -> None:
        """Free `needed` watches from targets anyone can match, the one holding most first;
        a path an operator's target holds too is kept."""
        victims = sorted((p for p, op in self.operator.items() if not op and self.granted.get(p)),
                         key=lambda p: len(self.granted[p]), reverse=True)
        freed = 0
        for victim in victims:
            for path in list(reversed(self.granted[victim])):
                if freed >= needed:
                    return
                users = self.users[path]
                if any(self.operator.get(u) for u in users):
                    continue
                before = self.used()
                for user in list(users):
                    del self.granted[user][path]
                    self.denied[user] = self.denied.get(user, 0) + 1
                    self._unwatched += 1
                    self._release(user, path)
                freed += before - self.used()

    def _apply(self, path: bytes, on_disk: FileId | None) -> str | None:
        """Watch the inode now at `path` with every target's events (without the opens while
        muted); ADDED if the watch changed, None if it did not need to."""
        if on_disk is None:
            return None  # nothing there now: the directory watch says when something appears
        mask = self.users[path].union() & ~self.muted.get(path, 0)
        current = self.state.get(path)
        if current == (on_disk, mask):
            return None
        if current is None and self.ceiling is not None:
            self.refused.add(path)  # the kernel is full: do not ask again until retry()
            return FULL
        if current is not None and current[0] != on_disk:
            self.moves += 1
            self.left[path] = (*current, self.moves)
            self.state.pop(path)
            self.watcher.unwatch(path)  # a new file at the path: watch it instead
        done = self._add(self.watcher.watch_file, path, mask, on_disk.ino)
        if done == ADDED:
            self.state[path] = (on_disk, mask)
            self.refused.discard(path)
        elif done == FULL:
            self.refused.add(path)
        return done

    def _add(self, add: Callable[..., Any], *args: Any) -> str:
        try:
            add(*args)
            return ADDED
        except WatchLimitReached:
            self.ceiling = self.used()
            return FULL
        except OSError:
            return GONE  # gone meanwhile, or another file there now; the next re-read sees why
