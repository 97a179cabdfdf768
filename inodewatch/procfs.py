"""Read a process's files from /proc: its maps, its fd table, its identity.

Parsing (`parse_maps`, `parse_stat`, `group_mappings`, `strip_deleted`) is pure and works on
captured text; the `read_*` functions do the I/O and handle every race the kernel allows: a
process that exits, a mapping that goes away, an fd closed between listing and stat.

Facts this module relies on (fs/proc/task_mmu.c, fs/seq_file.c):
- maps escapes only the newline in a path, as ``\\012``; spaces and backslashes are raw, so
  the path is everything after the fifth field and its padding.
- " (deleted)" is appended by d_path() to an unlinked dentry and is only a hint: a file may
  really be named "x (deleted)".  The link count of the mapped inode, from
  /proc/PID/map_files/START-END, is the truth.
- Paths are resolved under /proc/PID/root when the target lives in another mount namespace,
  so it is judged against its own view of the file system (see root_of).
"""

from __future__ import annotations

import errno
import functools
import os
import re
import stat
import sys
from collections import namedtuple

from inodewatch import mounts
from inodewatch.model import (DELETED_SUFFIX, DEVICE_DIR, FileId, MappedFile, OpenFile, is_pseudo_path,
                              runs_code, same_file)

PROC = b"/proc"

# Bits of /proc/PID/stat's flags field (include/linux/sched.h): a process tearing itself
# down (set at the start of do_exit, before its memory goes), and a kernel thread.
PF_EXITING = 0x00000004
PF_KTHREAD = 0x00200000


class ProcError(Exception):
    """A process could not be read."""

    def __init__(self, pid: int, message: str) -> None:
        super().__init__(message)
        self.pid = pid


class ProcessGone(ProcError):
    """The process no longer exists (or never did)."""


class AccessDenied(ProcError):
    """We may not read the process: the message names the file and the error, and the
    capability that would allow it only when we lack it (inodewatch.caps.denial_advice).
    It is worded when it is shown, not when raised: `scan --all` meets many, shows none."""

    def __init__(self, pid: int, what: str, exc: OSError) -> None:
        super().__init__(pid, "")
        self.what = what  # the file under /proc/PID/: "maps", "fd", ...
        self.error = exc

    def __str__(self) -> str:
        from inodewatch.caps import denial_advice  # only an error shown pays for it

        code = errno.errorcode.get(self.error.errno or 0, str(self.error.errno))
        return (f"cannot read /proc/{self.pid}/{self.what}: {self.error.strerror} ({code}); "
                f"{denial_advice(self.what)}")


class StatParseError(ValueError):
    """/proc/PID/stat is not in the kernel's format."""


class MappingGroup(namedtuple("MappingGroup", "path file perms vma")):
    """All the VMAs of one mapped file (dev, inode), before the disk is consulted.

    path: bytes, unescaped, " (deleted)" still attached; file: FileId; perms: tuple[str,
    ...]; vma: bytes, one VMA's range as maps prints it, e.g. b"00400000-00401000".
    (Records here are namedtuples for the reason given in inodewatch.model.)
    """

    __slots__ = ()

    @property
    def range_name(self) -> bytes:
        """The VMA's name under /proc/PID/map_files/: the range without maps' zero padding."""
        return range_name(self.vma)


def range_name(vma: bytes) -> bytes:
    """A VMA's range as maps prints it -> its name under /proc/PID/map_files/."""
    start, end = vma.split(b"-")
    return b"%x-%x" % (int(start, 16), int(end, 16))


class ProcessId(namedtuple("ProcessId", "pid start_time")):
    """A process as a pid plus its start time, so a reused pid is never taken for it (pid:
    int; start_time: int, clock ticks after boot, field 22 of /proc/PID/stat)."""

    __slots__ = ()


class ProcStat(namedtuple("ProcStat", "comm state ppid flags start_time")):
    """What we use of /proc/PID/stat (comm: bytes, state: str, ppid, flags, start_time: int)."""

    __slots__ = ()

    @property
    def is_kernel_thread(self) -> bool:
        return bool(self.flags & PF_KTHREAD)

    @property
    def is_exiting(self) -> bool:
        """Dying or dead: its maps may already read empty."""
        return bool(self.flags & PF_EXITING) or self.state in ("Z", "X", "x")


# --- pure parsing -------------------------------------------------------------------------


def unescape_path(raw: bytes) -> bytes:
    """Undo maps' only escape, the newline written as \\012."""
    return raw.replace(b"\\012", b"\n")


# One file-backed line of /proc/PID/maps (inode not 0), after its newline: start-end perms
# offset major:minor inode, padding, then the path to the end of the line.  Anonymous lines
# never match: on a big host most lines are anonymous, and the regex skips them without a
# Python-level loop.  The leading literal newline (the text gets one prepended) lets the
# regex engine jump from line to line instead of trying every position, as "^" would.  The
# quantifiers are possessive (++, *+): each run is followed by a character outside its class,
# so giving some back can never make a line match, and an anonymous line ("... 00:00 0")
# fails at once instead of backtracking through every run (the regex 15 % faster on 5,000
# processes' maps).
_FILE_LINE = re.compile(
    rb"\n([0-9a-f]++-[0-9a-f]++) (\S++) [0-9a-f]++ ([0-9a-f]++:[0-9a-f]++ [1-9][0-9]*+) ++(.*)")


# Maps is read in chunks of this size, each folded into the groups as soon as it holds
# complete lines: a process may map 65,000 VMAs from a 4 KB path (265 MB of maps), and its
# text must never be held whole.  One chunk is the whole maps of nearly every process.
MAPS_CHUNK = 1 << 17

# No line the kernel writes for a file we could stat is longer: the header (~100 bytes) and a
# path under PATH_MAX with every byte a newline escaped as \012.  A longer line (a path deeper
# than PATH_MAX, which seq_file prints in full) is skipped, its file counted as too long.
MAX_MAPS_LINE = 100 + 4 * 4096

# The start of a file-backed line, enough to tell which file an over-long line maps.  Left
# to re's own cache, compiled at the first over-long line: every scan pays a compile here.
_LINE_HEAD = rb"\n[0-9a-f]+-[0-9a-f]+ \S+ [0-9a-f]+ ([0-9a-f]+:[0-9a-f]+ [1-9][0-9]*) "


class MapsRead(namedtuple("MapsRead", "groups too_long size")):
    """What one read of /proc/PID/maps gave: groups: list[MappingGroup]; too_long:
    list[FileId], files whose lines were longer than MAX_MAPS_LINE; size: int, the bytes
    read (what the read cost: a caller may read a huge maps less often).  Not its lines:
    counting the newlines of every maps was 10 % of a full-host scan's parsing."""

    __slots__ = ()


class _MapsFold:
    """The groups of maps text fed to it in pieces of complete lines (the state of one read)."""

    def __init__(self) -> None:
        # per (dev, inode) as maps prints it: (raw path, perms seen, one VMA's range)
        self.seen: dict[bytes, tuple[bytes, set[bytes], bytes]] = {}
        self.too_long: set[bytes] = set()

    def add(self, lines: bytes) -> None:
        """Fold in `lines`: complete lines, each preceded (not followed) by its newline."""
        # The hot loop of a full-host scan (tens of thousands of lines): per line only a dict
        # look-up; the fields are decoded once per file, not once per VMA.
        seen = self.seen
        for range_text, perms, dev_inode, path in _FILE_LINE.findall(lines):
            group = seen.get(dev_inode)
            if group is None:
                seen[dev_inode] = (path, {perms}, range_text)
            else:
                group[1].add(perms)

    def skip_line(self, head: bytes) -> None:
        """An over-long line, of which `head` (its newline first) is the start."""
        if (match := re.match(_LINE_HEAD, head)) is not None:
            self.too_long.add(match.group(1))

    def result(self, size: int) -> MapsRead:
        found = []
        for dev_inode, (raw_path, perms, vma) in self.seen.items():
            file = _file_of(dev_inode, raw_path)
            if file is not None:
                names = _perm_names(frozenset(perms))
                if file[2] and not runs_code(names):
                    continue  # POSIX shm data, /dev/zero, device memory: not a file on disk
                found.append(MappingGroup(file[0], file[1], names, vma))
        too_long = [_file_id(dev_inode) for dev_inode in self.too_long if dev_inode not in self.seen]
        return MapsRead(found, too_long, size)


def fold_maps(data: bytes) -> MapsRead:
    """The files mapped in the whole text of /proc/PID/maps, one group per (dev, inode),
    pseudo files (memfd, SysV shm, /dev/... but code, see model.runs_code) left out.  Lines not in the kernel's format are
    skipped.  (read_maps does the same on the kernel's text in bounded memory.)"""
    fold = _MapsFold()
    fold.add(b"\n" + data)
    return fold.result(len(data))


class MapsStream:
    """fold_maps over maps text arriving in chunks, in bounded memory: the text is folded
    into groups whenever more than `limit` bytes are pending, up to their last complete
    line; a line longer than `max_line` is dropped as it streams past, its file counted in
    `too_long`.  At most about limit + max_line + one chunk is held at any time."""

    def __init__(self, limit: int = MAPS_CHUNK, max_line: int = MAX_MAPS_LINE) -> None:
        self.limit, self.max_line = limit, max_line
        self.fold = _MapsFold()
        self.pending = b"\n"  # the text not folded yet, its newline first
        self.size = 0
        self.dropping = False  # inside an over-long line: discard up to its end

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.dropping:
            end = chunk.find(b"\n")
            if end < 0:
                return
            self.dropping, self.pending, chunk = False, b"", chunk[end:]
        self.pending += chunk
        if len(self.pending) > self.limit:  # a small maps is folded once, at the end
            cut = self.pending.rfind(b"\n")
            if cut > 0:
                self.fold.add(self.pending[:cut])
                self.pending = self.pending[cut:]
            if len(self.pending) > self.max_line:
                self.fold.skip_line(self.pending[:200])
                self.dropping, self.pending = True, b"\n"

    def result(self) -> MapsRead:
        self.fold.add(self.pending)
        self.pending = b""
        return self.fold.result(self.size)


class MapsReading:
    """One read of /proc/PID/maps that may be spread over many turns of a loop: a 265 MB
    maps costs the kernel ~3 s to print, and a daemon must not stop for that.  Holds its fd
    until done or closed.  Raises ProcError (ProcessGone, AccessDenied)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.stream = MapsStream()
        try:
            self.fd: int | None = os.open(proc_path(pid, b"maps"), os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise _error(pid, exc, "maps") from None

    def advance(self, chunks: int) -> MapsRead | None:
        """Read at most `chunks` chunks more: the whole maps once the end is reached (the fd
        is then closed), else None."""
        assert self.fd is not None, "advance after the end"
        try:
            for _ in range(chunks):
                chunk = os.read(self.fd, MAPS_CHUNK)
                if not chunk:
                    self.close()
                    return self.stream.result()
                self.stream.feed(chunk)
        except OSError as exc:
            self.close()
            raise _error(self.pid, exc, "maps") from None
        return None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def read_maps(pid: int) -> MapsRead:
    """/proc/PID/maps folded, in one go (MapsReading to the end)."""
    maps = MapsReading(pid).advance(sys.maxsize)
    assert maps is not None  # read to the end
    return maps


# Both caches hold what every process repeats (libc, ld.so, the same few perms strings):
# a full-host scan decodes each once, not once per process.  Bounded, because the daemon
# meets a new inode at every plugin replacement: 1024 files, ~0.5 MB at most.
@functools.lru_cache(maxsize=1024)
def _file_of(dev_inode: bytes, raw_path: bytes) -> tuple[bytes, FileId, bool] | None:
    """(path, FileId, whether it is under /dev/: a file only if it runs code) from maps'
    "major:minor inode" and raw path; None for a pseudo file."""
    path = unescape_path(raw_path)
    under_dev = path.startswith(DEVICE_DIR)
    if is_pseudo_path(path) and not under_dev:
        return None
    return path, _file_id(dev_inode), under_dev


def _file_id(dev_inode: bytes) -> FileId:
    dev, inode = dev_inode.split(b" ")
    major, minor = dev.split(b":")
    return FileId(os.makedev(int(major, 16), int(minor, 16)), int(inode))


@functools.lru_cache(maxsize=256)
def _perm_names(perms: frozenset[bytes]) -> tuple[str, ...]:
    return tuple(sorted(p.decode() for p in perms))


def strip_deleted(name: bytes, nlink: int | None, name_is_this_file: bool) -> tuple[bytes, bool]:
    """Tell a " (deleted)" added by the kernel from one that is part of the file's name.

    Returns (path, deleted).  `nlink` is the held inode's link count (None when unknown) and
    `name_is_this_file` whether the full name, suffix included, resolves to that inode.
    """
    if nlink == 0:
        return (name.removesuffix(DELETED_SUFFIX), True)
    if not name.endswith(DELETED_SUFFIX) or name_is_this_file:
        return (name, False)
    # The kernel unhashed the name: with links left the inode lives on elsewhere (a hard
    # link); with the link count unknown, the kernel's hint is all we have.
    return (name.removesuffix(DELETED_SUFFIX), nlink is None)


def parse_stat(data: bytes) -> ProcStat:
    """Parse /proc/PID/stat; comm may hold spaces and parentheses, so split at the last ')'."""
    left = data.find(b"(")
    right = data.rfind(b")")
    rest = data[right + 2:].split()
    if left < 0 or right < left or len(rest) < 20:
        raise StatParseError(f"malformed /proc/PID/stat: {data[:80]!r}")
    try:
        # rest[0] is field 3 (state); field N is rest[N - 3].
        return ProcStat(
            comm=data[left + 1:right],
            state=rest[0].decode("ascii", "replace"),
            ppid=int(rest[1]),
            flags=int(rest[6]),
            start_time=int(rest[19]),
        )
    except ValueError as exc:
        raise StatParseError(f"malformed /proc/PID/stat: {data[:80]!r}") from exc


# --- I/O ----------------------------------------------------------------------------------


def proc_path(pid: int, *parts: bytes) -> bytes:
    return b"/".join((PROC, str(pid).encode(), *parts))


def _error(pid: int, exc: OSError, what: str) -> ProcError:
    if exc.errno in (errno.ENOENT, errno.ESRCH):
        return ProcessGone(pid, f"no such process: {pid}")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return AccessDenied(pid, what, exc)
    return ProcError(pid, f"cannot read /proc/{pid}/{what}: {exc.strerror}")


def check_readable(pid: int, name: bytes) -> None:
    """Whether /proc/PID/`name` may be read, without reading it: for maps (and mem, environ)
    the kernel checks ptrace access at open(), so an open says what a read would (a maps of
    thousands of lines is not printed for nothing)."""
    try:
        os.close(os.open(proc_path(pid, name), os.O_RDONLY | os.O_CLOEXEC))
    except OSError as exc:
        raise _error(pid, exc, name.decode()) from None


def read_proc_file(pid: int, name: bytes) -> bytes:
    """Read a whole /proc/PID file, mapping errors to ProcessGone / AccessDenied."""
    try:
        fd = os.open(proc_path(pid, name), os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise _error(pid, exc, name.decode()) from None
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 17):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise _error(pid, exc, name.decode()) from None
    finally:
        os.close(fd)


def read_stat(pid: int) -> ProcStat:
    return parse_stat(read_proc_file(pid, b"stat"))


def read_identity(pid: int) -> ProcessId:
    return ProcessId(pid, read_stat(pid).start_time)


@functools.cache
def _own_mount_namespace() -> bytes:
    # readlink ("mnt:[4026531841]"), not stat: half the cost, paid once per process scanned
    return os.readlink(b"/proc/self/ns/mnt")


def mount_namespace(pid: int) -> bytes | None:
    """The readlink of /proc/PID/ns/mnt ("mnt:[4026531841]"), None if it cannot be read."""
    try:
        return os.readlink(proc_path(pid, b"ns", b"mnt"))
    except OSError:
        return None  # gone (the caller finds out), or no ns access


def root_of(pid: int, namespace: bytes | None = None) -> bytes:
    """The prefix that makes a path from the process's maps resolve as the process sees it.

    maps prints a path in the terms of the mount namespace the file lives in, so a target in
    another namespace (a container, `unshare -m`) is read through /proc/PID/root.  A target
    in our own namespace gets no prefix: for a chrooted one, maps already prints the path
    from our root.  `namespace`: mount_namespace(pid), when the caller has it already.
    """
    if (namespace or mount_namespace(pid)) == _own_mount_namespace():
        return b""
    return proc_path(pid, b"root")  # unreadable namespace: the root link is the safe bet


def stat_at(root: bytes, path: bytes) -> os.stat_result | None:
    """stat `path` under `root` (see root_of), None if nothing is there."""
    try:
        return os.stat(root + path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENAMETOOLONG, errno.ESRCH):
            return None
        raise


class OnDisk(namedtuple("OnDisk", "stat file")):
    """What a path names now: its os.stat_result and FileId.of(stat), made once a pass."""

    __slots__ = ()


# Why a held file was not looked at (Unknown.reason).
TOO_LONG = "too_long"            # its name is PATH_MAX or longer: readlink and stat refuse it
UNREADABLE = "unreadable"        # an error about this one file (Unknown.where: the error)
UNTRUSTED_MOUNT = "untrusted_mount"  # on a FUSE or network mount (Unknown.where: the mount)

# stat(2) takes a path shorter than this (PATH_MAX, its terminating NUL included).
PATH_MAX = 4096


class Unknown(namedtuple("Unknown", "subject path reason where", defaults=(b"",))):
    """A held file that was not looked at, so neither reported nor cleared: subject: str,
    "mapping" or "fd"; path: bytes, its name as far as known (b"" when even that could not be
    read); reason: str, TOO_LONG, UNREADABLE or UNTRUSTED_MOUNT; where: bytes, the error's
    text, or the mount as Mount.describe() gives it."""

    __slots__ = ()


class DiskView:
    """What paths name on disk for one process, each path stat'ed once per pass (a library
    is mapped by several VMAs and often held by several processes).  A vanished process
    looks like an absent file: the caller learns of the exit on its own.

    It never stats a path on or through a FUSE or network mount of the process's namespace
    (`mounts`, see inodewatch.mounts): such a path reads as unknown to `trusts`.

    It also keeps the account of one pass over the process: `unknown`, the held files that
    were not looked at (list[Unknown]).
    """

    def __init__(self, pid: int, shared: dict[bytes, OnDisk | None] | None = None,
                 namespace: bytes | None = None) -> None:
        # namespace: mount_namespace(pid) when the caller knows it (the process may be dead)
        self.pid = pid
        namespace = namespace or mount_namespace(pid)
        self.root = root_of(pid, namespace)
        # A dead process's mountinfo is gone; one in our namespace has our mounts
        reader = os.getpid() if namespace == _own_mount_namespace() else pid
        self.mounts = mounts.table_of(reader, namespace) if namespace is not None else mounts.NO_MOUNTS
        # Processes in our own mount namespace see the same files: one pass over many of
        # them may share one cache (`shared`), and libc is stat'ed once, not once per process.
        self.seen: dict[bytes, OnDisk | None] = shared if shared is not None and not self.root else {}
        self.unknown: list[Unknown] = []

    def look(self, path: bytes) -> OnDisk | None:
        """What is at `path` now (None: nothing, or it cannot be stat'ed)."""
        if path in self.seen:
            return self.seen[path]
        try:
            if not self.mounts.points:
                st = stat_at(self.root, path)  # the common host: one plain stat
            elif (mount := self.mounts.covering(path)) is not None:
                raise mounts.Untrusted(mount)  # never asked of a server that may not answer
            else:
                st = mounts.stat_beside(self.root, path, self.mounts)
        except mounts.Untrusted as exc:
            # kept in the same (maybe shared) cache, under a key no path can be: a NUL first
            self.seen[b"\0" + path] = exc.args[0]
            st = None
        except OSError:
            st = None
        found = self.seen[path] = OnDisk(st, FileId.of(st)) if st is not None else None
        return found

    def untrusted_mount(self, path: bytes) -> mounts.Mount | None:
        """The FUSE or network mount `path` is on or leads onto (a symlink on the way), if
        any: then nothing may stat, open or watch it."""
        if not self.mounts.points:
            return None
        self.look(path)
        return self.seen.get(b"\0" + path)  # type: ignore[return-value]

    def trusts(self, path: bytes) -> bool:
        """Whether `path` may be stat'ed, opened or watched (see untrusted_mount)."""
        return self.untrusted_mount(path) is None

    def __call__(self, path: bytes) -> FileId | None:
        found = self.look(path)
        return found.file if found is not None else None

    def too_long(self, path: bytes) -> bool:
        """Whether `path`, under this view's root, is too long to stat at all."""
        return len(self.root) + len(path) >= PATH_MAX

    def skip(self, subject: str, path: bytes, exc: OSError | None = None,
             mount: mounts.Mount | None = None) -> None:
        """Account for a held file not looked at: on `mount`, its name too long, or `exc`
        about it."""
        if mount is not None:
            self.unknown.append(Unknown(subject, path, UNTRUSTED_MOUNT, mount.describe()))
        elif exc is None or exc.errno == errno.ENAMETOOLONG:
            self.unknown.append(Unknown(subject, path, TOO_LONG))
        else:
            self.unknown.append(Unknown(subject, path, UNREADABLE, os.fsencode(exc.strerror or str(exc))))


def _held_stat(link: bytes) -> os.stat_result | None:
    """stat through a map_files / fd magic link; None if it vanished meanwhile."""
    try:
        return os.stat(link)
    except (FileNotFoundError, ProcessLookupError):
        return None


def _resolve_name(disk: DiskView, name: bytes, held: FileId, nlink: int | None) -> tuple[bytes, bool]:
    """(path, deleted) for a held file; looks at the disk only when the name is ambiguous."""
    name_is_this_file = False
    if name.endswith(DELETED_SUFFIX) and nlink != 0:
        on_disk = disk(name)
        name_is_this_file = on_disk is not None and on_disk.ino == held.ino
    return strip_deleted(name, nlink, name_is_this_file)


def read_mapped_files(pid: int, disk: DiskView | None = None,
                      maps: MapsRead | None = None) -> list[MappedFile]:
    """Every file `pid` maps, one entry per inode, pseudo files left out, from `maps` (a
    read the caller made, maybe over many turns of its loop) or read now.  Raises ProcError
    about the process; a file that cannot be looked at (a name too long, any error about
    that file alone) is left out and accounted in `disk.unknown`."""
    disk = disk or DiskView(pid)
    maps = read_maps(pid) if maps is None else maps
    disk.unknown += [Unknown("mapping", b"", TOO_LONG) for _ in maps.too_long]
    files: list[MappedFile] = []
    can_read_map_files = True
    untrusted = disk.mounts.by_dev  # both empty on the common host
    untrusted_paths = disk.mounts.points
    for g in maps.groups:
        if untrusted and (mount := untrusted.get(g.file.dev)) is not None:
            disk.skip("mapping", g.path, mount=mount)
            continue
        if disk.too_long(g.path):
            disk.skip("mapping", g.path)
            continue
        on_disk = None if g.path.endswith(DELETED_SUFFIX) else disk.look(g.path)
        if on_disk is None and untrusted_paths and (mount := disk.untrusted_mount(g.path)) is not None:
            disk.skip("mapping", g.path, mount=mount)  # its path leads there now (a symlink)
            continue
        if on_disk is not None and same_file(g.file, on_disk.file):
            # The path still names the mapped inode: intact, no need to ask map_files (the
            # common case, and one stat fewer per library per process).
            if not stat.S_ISREG(on_disk.stat.st_mode):
                continue  # a device mapped private and executable: no file on disk
            files.append(MappedFile(g.path, g.file, g.perms, False, on_disk.stat.st_size,
                                    on_disk.stat.st_mtime_ns, g.vma))
            continue
        st = None
        name = g.path
        if can_read_map_files:
            link = proc_path(pid, b"map_files", g.range_name)
            try:
                # The name now, exact (no \012 ambiguity), and as new as the link count: a
                # rename since maps was read must not read as "nothing at the path".
                name = os.readlink(link)
                if untrusted_paths and (mount := disk.untrusted_mount(name)) is not None:
                    # remapped from such a mount since maps was read: its stat could hang
                    disk.skip("mapping", name, mount=mount)
                    continue
                st = _held_stat(link)
                if st is not None and st.st_ino != g.file.ino:
                    # The range was unmapped and another file mapped there since maps was
                    # read (a plugin host's dlclose + dlopen): that stat is not this inode's.
                    st = None
            except PermissionError:
                # needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN; fall back to the maps fields
                can_read_map_files = False
            except (FileNotFoundError, ProcessLookupError):
                st = None  # unmapped, or the process exited, since maps was read
            except OSError as exc:  # ENAMETOOLONG: the name and " (deleted)" pass PATH_MAX
                disk.skip("mapping", g.path, exc)
                continue
            if can_read_map_files and (st is None or not stat.S_ISREG(st.st_mode)):
                continue  # unmapped between the two reads, or a device: no file on disk
        path, deleted = _resolve_name(disk, name, g.file, st.st_nlink if st is not None else None)
        files.append(MappedFile(path, g.file, g.perms, deleted,
                                st.st_size if st is not None else None,
                                st.st_mtime_ns if st is not None else None, g.vma))
    return files


def read_open_files(pid: int, disk: DiskView | None = None) -> list[OpenFile]:
    """Every regular file `pid` holds open (sockets, pipes, devices and memfds left out).
    Raises ProcError about the process; a file that cannot be looked at is left out and
    accounted in `disk.unknown` (as read_mapped_files)."""
    disk = disk or DiskView(pid)
    fd_dir = proc_path(pid, b"fd")
    try:
        names = os.listdir(fd_dir)
    except OSError as exc:
        raise _error(pid, exc, "fd") from None
    files: list[OpenFile] = []
    untrusted = disk.mounts.by_id  # empty on the common host: no fdinfo read
    for name in names:
        link = fd_dir + b"/" + name
        target = b""
        try:
            target = os.readlink(link)
            # sockets, pipes, anon inodes, devices: no file on disk, no stat needed
            if is_pseudo_path(target):
                continue
            if disk.too_long(target):
                disk.skip("fd", target)
                continue
            if untrusted and (mount := _untrusted_fd(pid, name, target, disk)) is not None:
                disk.skip("fd", target, mount=mount)
                continue
            st = _held_stat(link)
            if st is not None and os.readlink(link) != target:
                continue  # closed and the number reused between the two reads
        except (FileNotFoundError, ProcessLookupError):
            continue  # closed meanwhile, or the process is exiting
        except PermissionError as exc:
            raise _error(pid, exc, "fd") from None
        except OSError as exc:  # ENAMETOOLONG: a name of PATH_MAX or more, which lsof shows
            disk.skip("fd", target, exc)  # as "(readlink: File name too long)"
            continue
        if st is None or not stat.S_ISREG(st.st_mode):
            continue
        held = FileId.of(st)
        path, deleted = _resolve_name(disk, target, held, st.st_nlink)
        files.append(OpenFile(int(name), path, held, deleted, st.st_size))
    files.sort(key=lambda f: f.fd)
    return files


def _untrusted_fd(pid: int, fd: bytes, target: bytes, disk: DiskView) -> mounts.Mount | None:
    """The untrusted mount an fd's file lives on, by its fdinfo's mnt_id (exact, whatever
    its name says), else by where its name leads.  Raises FileNotFoundError when the fd was
    closed."""
    mount = disk.mounts.by_id.get(mounts.mount_id_of(proc_path(pid, b"fdinfo", fd)) or -1)
    return mount or disk.untrusted_mount(target)


def list_pids() -> list[int]:
    return sorted(int(n) for n in os.listdir(PROC) if n.isdigit())


# --- who a process is ---------------------------------------------------------------------

# What one event may carry of a command line: a process may give itself megabytes of
# arguments, and every target.attached of its children would copy them into the log.
CMDLINE_LIMIT = 4096


def parse_cmdline(data: bytes, limit: int = CMDLINE_LIMIT) -> tuple[list[bytes], bool]:
    """The arguments in /proc/PID/cmdline text (NUL-separated), at most `limit` bytes of it;
    (arguments, whether some were cut off).  Trailing empty arguments are dropped: a process
    that rewrites its argv (nginx's "nginx: worker process", setproctitle) pads the rest of
    the old arguments' space with NULs, which would read as a run of empty strings."""
    truncated = len(data) > limit
    data = data[:limit].rstrip(b"\0")
    return (data.split(b"\0") if data else []), truncated


def read_cmdline(pid: int, limit: int = CMDLINE_LIMIT) -> tuple[list[bytes], bool]:
    """The process's arguments, reading no more than `limit` bytes (see parse_cmdline)."""
    try:
        fd = os.open(proc_path(pid, b"cmdline"), os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise _error(pid, exc, "cmdline") from None
    try:
        chunks: list[bytes] = []
        size = 0
        while size <= limit and (chunk := os.read(fd, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise _error(pid, exc, "cmdline") from None
    finally:
        os.close(fd)
    return parse_cmdline(b"".join(chunks), limit)


def parse_uid(status: bytes) -> int:
    """The real uid from /proc/PID/status ("Uid:\\treal\\teffective\\tsaved\\tfs")."""
    for line in status.splitlines():
        if line.startswith(b"Uid:"):
            return int(line.split()[1])
    raise StatParseError("no Uid line in /proc/PID/status")


def read_uid(pid: int) -> int:
    return parse_uid(read_proc_file(pid, b"status"))


def read_mount_namespace(pid: int) -> int:
    """The inode number of the process's mount namespace (as in "mnt:[4026531841]")."""
    try:
        return os.stat(proc_path(pid, b"ns", b"mnt")).st_ino
    except OSError as exc:
        raise _error(pid, exc, "ns/mnt") from None
