"""Inotify adapter: watch files and directories by their raw bytes paths.

The daemon owns the event loop: it polls ``fileno()`` and calls ``read()``,
which never blocks.  pyinotify 0.9.6 owns the inotify fd and adds and removes
the watches, but only its ``WatchManager`` is used, because the rest is unsafe
in a root monitor that anyone can feed file names:

* ``Notifier.read_events`` decodes entry names as strict UTF-8, so one file
  named ``b"\\xff"`` in a watched directory raises and loses the whole batch;
  on an empty queue it blocks in ``os.read``; and a ``Notifier`` without a
  ``default_proc_fun`` prints every event to stdout.  So the raw
  ``struct inotify_event`` records are read and parsed here instead, and no
  ``Notifier`` is ever created.
* ``WatchManager.add_watch`` takes only ``str`` (it silently returns wd -3
  for ``bytes``) and encodes it strictly, so a non-UTF-8 path cannot be
  passed at all.  Each path is therefore opened here with ``O_PATH`` and
  pyinotify is handed the ASCII magic link ``/proc/self/fd/N``, which the
  kernel resolves to exactly the inode opened: any bytes path works, and the
  watch lands on the inode checked rather than on whatever the path names a
  moment later.
* ``add_watch`` reports failure as wd -1 plus a log line on stderr; its
  logger is silenced below and every failure is raised instead.

Floods: anyone may create, rename and unlink files at 30,000 a second in a
mode-1777 directory that also holds a mapped plugin, and every one of those is
an IN_CREATE / IN_MOVED_* record on the directory's watch.  pyinotify's reader
would build a Python event object per record (and the daemon a look-up per
event); ``read`` instead takes the whole queue in one ``os.read`` and drops a
record whose name is not one the caller asked for (``watch_directory``'s
``names``: a set look-up on the raw bytes) before anything else is done with
it, and merges what is left per (watch, name), so a burst of records about one
file is one event per kind.
"""

import ctypes
import errno
import fcntl
import functools
import logging
import os
import stat
import struct
import termios
import warnings
from collections import Counter
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import NoReturn

with warnings.catch_warnings():
    # pyinotify imports asyncore, deprecated in 3.11 (pyasyncore replaces it
    # from 3.12 on): the warning is about pyinotify, not something to act on.
    warnings.simplefilter("ignore", DeprecationWarning)
    import pyinotify

# pyinotify installs its own stderr handler at import time; a daemon's output
# must come from the daemon's own logging only.
_pyinotify_log = logging.getLogger("pyinotify")
for _handler in list(_pyinotify_log.handlers):
    _pyinotify_log.removeHandler(_handler)
_pyinotify_log.addHandler(logging.NullHandler())
_pyinotify_log.propagate = False

# Event groups a caller combines per file: a file held only through an fd (a busy log) needs
# NAME_EVENTS alone; a mapped file adds WRITE_EVENTS (the in-place overwrite); a new file
# waiting to be loaded adds OPEN_EVENTS (its open and close are the dlopen).
NAME_EVENTS = pyinotify.IN_ATTRIB | pyinotify.IN_DELETE_SELF | pyinotify.IN_MOVE_SELF
WRITE_EVENTS = pyinotify.IN_MODIFY | pyinotify.IN_CLOSE_WRITE
OPEN_EVENTS = pyinotify.IN_OPEN | pyinotify.IN_CLOSE_NOWRITE
FILE_MASK = NAME_EVENTS | WRITE_EVENTS | OPEN_EVENTS
# Only entries appearing or leaving: IN_OPEN or IN_MODIFY on a busy /usr/lib
# would flood the queue.
DIRECTORY_MASK = (
    pyinotify.IN_CREATE
    | pyinotify.IN_MOVED_TO
    | pyinotify.IN_MOVED_FROM
    | pyinotify.IN_ONLYDIR
)

# The events behind each kind a watched file can flood with (see WatchSet.mute).
KIND_EVENTS = {
    "modified": pyinotify.IN_MODIFY,
    "written": pyinotify.IN_CLOSE_WRITE,
    "attrib": pyinotify.IN_ATTRIB,
    "opened": pyinotify.IN_OPEN,
    "closed": pyinotify.IN_CLOSE_NOWRITE,
}

_KINDS = (
    (pyinotify.IN_MODIFY, "modified"),
    (pyinotify.IN_CLOSE_WRITE, "written"),
    (pyinotify.IN_ATTRIB, "attrib"),
    (pyinotify.IN_OPEN, "opened"),
    (pyinotify.IN_CLOSE_NOWRITE, "closed"),
    (pyinotify.IN_CREATE, "created"),
    (pyinotify.IN_MOVED_TO, "created"),
    (pyinotify.IN_MOVED_FROM, "moved_from"),
    (pyinotify.IN_DELETE_SELF, "deleted_self"),
    (pyinotify.IN_MOVE_SELF, "moved_self"),
    (pyinotify.IN_IGNORED, "ignored"),
)



@functools.lru_cache(maxsize=256)
def _kinds(mask: int) -> tuple[str, ...]:
    """The kinds a (merged) record mask says, each once, in _KINDS order."""
    return tuple(dict.fromkeys(kind for bit, kind in _KINDS if mask & bit))


# struct inotify_event: int wd; uint32_t mask, cookie, len; char name[len].
_HEADER = struct.Struct("iIII")


# A name's bytes in a record end at the first NUL (they are NUL-padded to alignment).
_NUL = b"\0"


class _Every:
    """The names wanted in a directory watched without a list of names: all of them."""

    def __contains__(self, name: object) -> bool:
        return True


class _AnyOf:
    """The names wanted by any of several paths naming one directory (/lib, /usr/lib)."""

    def __init__(self, sets: list[AbstractSet[bytes]]) -> None:
        self.sets = sets

    def __contains__(self, name: object) -> bool:
        return any(name in names for names in self.sets)


_EVERY = _Every()


@dataclass(frozen=True, slots=True)
class FileEvent:
    """One thing that happened to a watched path."""

    path: bytes
    kind: str
    name: bytes | None = None
    records: int = field(default=1, compare=False)  # kernel records merged into it (one read)


def max_user_watches() -> int:
    """fs.inotify.max_user_watches: the watches one user may hold, all its processes together
    (8192 if it cannot be read)."""
    try:
        with open("/proc/sys/fs/inotify/max_user_watches", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 8192


class WatchLimitReached(Exception):
    """The user's inotify watch budget is spent.

    Deliberately not an OSError: a caller skipping unwatchable paths with
    ``except OSError`` must not silently stop watching everything else.
    """


class FileWatcher:
    """Inotify watches on bytes paths, read without blocking."""

    def __init__(self) -> None:
        self._wm = pyinotify.WatchManager()
        self._fd = self._wm.get_fd()
        # pyinotify uses inotify_init(), not inotify_init1(IN_CLOEXEC |
        # IN_NONBLOCK): without this every child we spawn inherits the fd,
        # and a read on an empty queue would block the daemon's loop.
        os.set_inheritable(self._fd, False)
        os.set_blocking(self._fd, False)
        self._wd_of: dict[bytes, int] = {}
        self._mask_of: dict[bytes, int] = {}
        # Several paths can name one inode (/lib -> usr/lib): the kernel then
        # returns the same wd, so a wd maps to every path registered for it.
        self._paths_of: dict[int, tuple[bytes, ...]] = {}
        # directory path -> the entry names wanted there (None: every name); the caller's
        # own set, read at every record, so it can change without a call
        self._names_of: dict[bytes, AbstractSet[bytes] | None] = {}
        # wd of a directory -> the names any of its paths wants: one look-up per record
        self._wanted: dict[int, AbstractSet[bytes] | _Every | _AnyOf] = {}
        self._closed = False
        self.overflowed = False

    def fileno(self) -> int:
        return self._fd

    def watch_file(self, path: bytes, mask: int = FILE_MASK, ino: int | None = None) -> bool:
        """Watch a file for the events in `mask` (the *_EVENTS groups); False if it was
        already watched with that mask.  A new mask replaces the old one.  With `ino`, only
        if the path still names that inode (else OSError ESTALE, nothing changed)."""
        return self._watch(path, mask, ino)

    def watch_directory(self, path: bytes, names: AbstractSet[bytes] | None = None) -> bool:
        """Watch a directory for entries created or moved; False if already watched.  With
        `names`, only events about those entry names are read (the set may change later)."""
        changed = self._watch(path, DIRECTORY_MASK)
        self._names_of[path] = names
        self._refilter(self._wd_of[path])
        return changed

    def unwatch(self, path: bytes) -> None:
        self._mask_of.pop(path, None)
        self._detach(path)

    def _detach(self, path: bytes) -> None:
        """Take `path` off its watch; remove the kernel's watch if no other path uses it."""
        wd = self._wd_of.pop(path, None)
        self._names_of.pop(path, None)
        if wd is None:
            return
        others = tuple(p for p in self._paths_of.pop(wd) if p != path)
        if others:
            self._paths_of[wd] = others
        self._refilter(wd)
        if others:
            return
        try:
            self._wm.rm_watch(wd, quiet=False)
        except pyinotify.WatchManagerError:
            # The kernel already dropped it (file gone, fs unmounted); its
            # IN_IGNORED may still be queued and is skipped as an unknown wd.
            self._wm.del_watch(wd)

    def watched(self) -> set[bytes]:
        return set(self._wd_of)

    def read(self) -> list[FileEvent]:
        """Decode whatever events are queued right now; [] if none.  Records about names
        nobody asked for are dropped unread; the rest are merged per (watch, name)."""
        self.overflowed = False
        pending = struct.unpack("i", fcntl.ioctl(self._fd, termios.FIONREAD, b"\0" * 4))[0]
        if not pending:
            return []
        buf = os.read(self._fd, pending)
        # The hot loop of a flood: per record one unpack, and for a named record one dict
        # look-up, one slice and one set look-up before it is dropped.  Nothing else is
        # built for it.
        merged: dict[tuple[int, bytes], int] = {}
        records: Counter[tuple[int, bytes]] = Counter()
        ignored: list[int] = []
        wanted_in = self._wanted
        find = buf.find
        unpack = _HEADER.unpack_from
        size = _HEADER.size
        end = len(buf) - size
        offset = 0
        while offset <= end:
            wd, mask, _cookie, length = unpack(buf, offset)
            start = offset + size
            offset = start + length
            if length:
                wanted = wanted_in.get(wd)
                if wanted is None:
                    continue  # a directory no longer watched
                name = buf[start:find(_NUL, start, offset)]  # the kernel NUL-terminates it
                if name not in wanted:
                    continue
            else:
                name = b""
                if mask & pyinotify.IN_Q_OVERFLOW:
                    self.overflowed = True
                    continue
                if mask & pyinotify.IN_IGNORED:
                    ignored.append(wd)
            key = (wd, name)
            merged[key] = merged.get(key, 0) | mask
            records[key] += 1
        events: list[FileEvent] = []
        names_of = self._names_of
        paths_of = self._paths_of
        for (wd, name), mask in merged.items():
            count = records[wd, name]
            for p in paths_of.get(wd, ()):
                if name:
                    wanted = names_of.get(p)
                    if wanted is not None and name not in wanted:
                        continue
                    path, entry = p + b"/" + name, name
                else:
                    path, entry = p, None
                events.extend(FileEvent(path, kind, entry, count) for kind in _kinds(mask))
        for wd in ignored:
            if wd in paths_of:
                self._forget(wd)
        return events

    def close(self) -> None:
        # Idempotent: closing the fd number twice could close someone else's.
        if self._closed:
            return
        self._closed = True
        self._wm.close()
        self._wd_of.clear()
        self._mask_of.clear()
        self._paths_of.clear()
        self._names_of.clear()
        self._wanted.clear()

    def _watch(self, path: bytes, mask: int, ino: int | None = None) -> bool:
        if self._mask_of.get(path) == mask:
            return False
        directory = mask == DIRECTORY_MASK
        # O_PATH opens nothing for I/O: no FIFO blocks, no device is touched.
        # Errors (FileNotFoundError, NotADirectoryError...) carry the real path.
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC | (os.O_DIRECTORY if directory else 0))
        try:
            st = os.fstat(fd)
            if not directory and stat.S_ISDIR(st.st_mode):
                # The file mask on a directory would report every open in it.
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
            if ino is not None and st.st_ino != ino:
                raise OSError(errno.ESTALE, "the path names another file now", path)
            magic = f"/proc/self/fd/{fd}"
            try:
                wd = self._wm.add_watch(magic, mask, quiet=False)[magic]
            except pyinotify.WatchManagerError:
                # pyinotify calls libc through ctypes.CDLL(use_errno=True), so
                # the failed call's errno is in ctypes' thread-local copy.
                self._raise_add_error(path, ctypes.get_errno())
        finally:
            os.close(fd)
        self._mask_of[path] = mask
        if self._wd_of.get(path) != wd:
            # Another file is at the path now (replaced between the caller's look and our
            # open): the old inode's watch no longer belongs to this path.
            self._detach(path)
            self._wd_of[path] = wd
            self._paths_of[wd] = self._paths_of.get(wd, ()) + (path,)
        return True

    def _refilter(self, wd: int) -> None:
        """Recompute which names the directory watch `wd` reads (its paths' own sets)."""
        sets = [_EVERY if (names := self._names_of[p]) is None else names
                for p in self._paths_of.get(wd, ()) if p in self._names_of]
        if not sets:
            self._wanted.pop(wd, None)
        else:
            self._wanted[wd] = sets[0] if len(sets) == 1 else _AnyOf(sets)

    @staticmethod
    def _raise_add_error(path: bytes, err: int) -> NoReturn:
        if err == errno.ENOSPC:  # inotify's code for "max_user_watches spent"
            raise WatchLimitReached(
                f"cannot watch {path!r}: inotify watch limit reached; "
                "raise the fs.inotify.max_user_watches sysctl"
            )
        raise OSError(err, os.strerror(err), path)

    def _forget(self, wd: int) -> None:
        self._wanted.pop(wd, None)
        for path in self._paths_of.pop(wd):
            if self._wd_of.get(path) == wd:  # not if the path has moved on to another watch
                del self._wd_of[path]
                self._mask_of.pop(path, None)
                self._names_of.pop(path, None)
        if self._wm.get_watch(wd) is not None:
            self._wm.del_watch(wd)
