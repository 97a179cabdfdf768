"""The guard: refuse the open for writing that would crash a process mapping the file.

`cp new.so so.so` over a mapped library rewrites the pages a process runs (SIGSEGV);
`mv`/`install` replace the inode and are harmless.  The guard puts a fanotify permission mark
(FAN_OPEN_PERM) on each inode it is asked to guard and answers every open of it: an open for
writing is refused, any other open allowed.  fanotify does not say how a file is being
opened, so the answering thread reads the blocked opener's /proc/TID/syscall (and, for
openat2, the flags in its struct open_how through /proc/TID/mem).

Pure core: `parse_syscall`, `is_write`, `decide`, `guardable`.  Shell: `Guard`.

Why a thread of its own, not the daemon's poll loop: every open of a guarded file waits for
the answer, the daemon's own opens included (content identity, /proc/PID/map_files), and a
loop waiting on itself would never answer; a slow turn of the loop (1-2 s) would freeze every
opener of every guarded file.  The thread needs only the GIL, which CPython releases around
open(2) and poll(2).  It never logs and never blocks on anything but its own fds and /proc
reads of the blocked opener: each refusal (or opener whose flags could not be read) becomes
a `Refusal` in a bounded deque, and one byte on a self-pipe whose read end (`fileno()`) the
daemon polls; `drain()` hands them over.

Measured on Linux 6.18 (tests/test_guard.py, benchmarks/guard.py):
- A FAN_CLASS_PRE_CONTENT group may answer with the opener's errno: the writer gets ETXTBSY
  ("Text file busy", what a running executable's writer has always got); elsewhere EPERM.
- FAN_REPORT_TID: the event names the opening thread, so a multithreaded writer's
  /proc/TID/syscall is its own, not its main thread's.
- /proc/TID/syscall reads "running" when it is read before the opener is asleep: retried
  for up to ~20 ms, then the open is allowed (fail open: a caller is never hung) and
  recorded as "unknown".
- Not seen by an open, so not refused: truncate(2) by path (os.truncate, but not coreutils'
  `truncate`, which opens O_WRONLY), writes through an fd opened before the mark, writes
  through a shared writable mapping made before it, io_uring's IORING_OP_OPENAT (its opener
  is an io-wq worker or io_uring_enter: "unknown", allowed).
- A 32-bit (i386) writer on x86_64: its syscall numbers are not x86_64's, it reads as
  "unknown" and is allowed (openat2, 437 on every ABI, is read right).

Which files: `guardable` says no to the directories the dynamic loader searches (every
process start maps what is there: a listener that stalls would stall them all), yes to
plugin directories below them (/usr/lib/nginx/modules), and never to the loader and libc
whatever the operator widens.

Once per writer and file: a writer (a process, by pid and start time) refused (or unknown)
on one file is recorded once; its retries are counted (`GuardStats.repeats`), not recorded.
The thread dedupes, not the consumer, so that a writer retrying in a loop cannot fill the
bounded deque and push out the others.
"""

from __future__ import annotations

import errno
import os
import re
import select
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from typing import NamedTuple

from inodewatch import fanotify
from inodewatch.model import FileId
from inodewatch.procfs import CMDLINE_LIMIT, ProcError, parse_stat, read_cmdline

# --- which opens write ---------------------------------------------------------------------

# open(2) flags, the asm-generic values x86_64 and aarch64 share
O_ACCMODE = 0o3
O_RDONLY = 0o0
O_WRONLY = 0o1
O_CREAT = 0o100
O_TRUNC = 0o1000

ALLOWED = "allowed"
REFUSED = "refused"
UNKNOWN = "unknown"


def is_write(flags: int) -> bool:
    """Whether an open with `flags` may change the file's bytes: any access mode but
    O_RDONLY (O_WRONLY, O_RDWR, and 3, which Linux opens for ioctls only but checks for
    write permission), or O_TRUNC, which truncates even with O_RDONLY.  O_CREAT or O_APPEND
    with O_RDONLY cannot change an existing file."""
    return (flags & O_ACCMODE) != O_RDONLY or bool(flags & O_TRUNC)


def decide(guarded: frozenset[FileId] | set[FileId], file: FileId, flags: int | None) -> str:
    """ALLOWED, REFUSED or UNKNOWN for an open of `file` with `flags` (None: could not be
    read).  An unguarded file is allowed whatever the flags."""
    if file not in guarded:
        return ALLOWED
    if flags is None:
        return UNKNOWN
    return REFUSED if is_write(flags) else ALLOWED


# --- what a blocked thread is opening --------------------------------------------------------

class OpenHowAt(NamedTuple):
    """openat2(2)'s flags are in memory: the address of the opener's struct open_how, whose
    first field is the u64 flags (include/uapi/linux/openat2.h)."""

    address: int


# Per machine: syscall number -> where its open flags are.  An int is the argument holding
# them; the strings: "creat" (always O_CREAT|O_WRONLY|O_TRUNC), "exec" (the kernel opens the
# file for reading), "how" (openat2: argument 2 points at struct open_how).
_CREAT, _EXEC, _HOW = "creat", "exec", "how"
SYSCALLS: dict[str, dict[int, int | str]] = {
    # arch/x86/entry/syscalls/syscall_64.tbl
    "x86_64": {2: 1, 257: 2, 85: _CREAT, 437: _HOW, 304: 2, 59: _EXEC, 322: _EXEC, 134: _EXEC},
    # include/uapi/asm-generic/unistd.h (no open, creat nor uselib)
    "aarch64": {56: 2, 437: _HOW, 265: 2, 221: _EXEC, 281: _EXEC},
}
_X32_SYSCALL_BIT = 0x40000000  # x32 processes' numbers on x86_64: the same calls, this bit set
_CREAT_FLAGS = O_CREAT | O_WRONLY | O_TRUNC


RUNNING = b"running"  # what /proc/TID/syscall reads while the thread is not asleep


def syscall_number(text: bytes) -> int | None:
    """The number of the system call in /proc/TID/syscall text, -1 when the thread is not in
    one, None when the text is not in the kernel's format (RUNNING included)."""
    fields = text.split()
    # nr, six arguments, sp, pc; or -1, sp, pc (fs/proc/base.c, proc_pid_syscall)
    if len(fields) not in (3, 9):
        return None
    try:
        number = int(fields[0])
        for field in fields[1:]:
            if not field.startswith(b"0x"):
                return None
            int(field, 16)
    except ValueError:
        return None
    if (number < 0) != (len(fields) == 3) or number < -1:
        return None
    return number


def parse_syscall(text: bytes, machine: str) -> int | OpenHowAt | None:
    """The open flags of the call in /proc/TID/syscall text on `machine` (os.uname().machine),
    OpenHowAt for openat2, whose flags must be read from the opener's memory; None when it
    is not an open we know (or the text is no call at all)."""
    table = SYSCALLS.get(machine)
    number = syscall_number(text)
    if table is None or number is None or number < 0:
        return None
    if machine == "x86_64":
        number &= ~_X32_SYSCALL_BIT
    where = table.get(number)
    if where is None:
        return None
    if where == _CREAT:
        return _CREAT_FLAGS
    if where == _EXEC:
        return O_RDONLY
    args = [int(field, 16) for field in text.split()[1:7]]
    if where == _HOW:
        return OpenHowAt(args[2])
    assert isinstance(where, int)
    return args[where] & 0xFFFFFFFF  # an int argument: the upper half is not the caller's


# --- which files may be guarded --------------------------------------------------------------

# The directories the dynamic loader searches by default (glibc's system directories,
# Debian's ld.so.conf.d/libc.conf for /usr/local/lib): the libraries every program links.
LIBRARY_DIRS: tuple[bytes, ...] = (
    b"/lib", b"/lib32", b"/lib64", b"/libx32",
    b"/usr/lib", b"/usr/lib32", b"/usr/lib64", b"/usr/libx32",
    b"/usr/local/lib",
)
# Below a library directory, what is still the loader's: a multiarch triplet directory
# (x86_64-linux-gnu) and the hwcaps subdirectories it also searches.
_LOADER_SUBDIR = re.compile(rb"[a-z0-9_]+-linux-[a-z0-9_]+|glibc-hwcaps|tls|x86-64-v[0-9]|haswell|x86_64"
                            rb"|i686|sse2|avx512_1|power[0-9]+|z[0-9]+")
# Never guarded, whatever is widened: the dynamic loader and libc, in every process.
_NEVER = re.compile(rb"ld-linux[^/]*|ld64\.so[^/]*|ld-musl[^/]*|ld-[0-9.]+\.so|libc\.so[^/]*|libc-[0-9.]+\.so"
                    rb"|libc\.musl[^/]*")


def _under(path: bytes, prefix: bytes) -> bool:
    prefix = prefix.rstrip(b"/")
    return path == prefix or path.startswith(prefix + b"/")


def guardable(path: bytes, widen: Iterable[bytes] = (),
              library_dirs: Iterable[bytes] = LIBRARY_DIRS) -> bool:
    """Whether the file at `path` (absolute, as the kernel names a mapping) may be guarded.

    No for a file the loader finds by name: directly in one of `library_dirs` (the caller
    may add those of /etc/ld.so.conf), or in a triplet or hwcaps directory below one; yes
    for anything else, plugin directories below a library directory included
    (/usr/lib/nginx/modules/, /usr/lib/x86_64-linux-gnu/gconv/).  `widen`: files, or
    directories whose files, are guardable even so -- but never the dynamic loader or libc.
    """
    directory, _, name = path.rpartition(b"/")
    if _NEVER.fullmatch(name):
        return False
    if any(_under(path, allowed) for allowed in widen):
        return True
    for libdir in library_dirs:
        libdir = libdir.rstrip(b"/")
        if directory == libdir:
            return False
        if directory.startswith(libdir + b"/"):
            below = directory[len(libdir) + 1:].split(b"/")
            if all(_LOADER_SUBDIR.fullmatch(part) for part in below):
                return False
    return True


# --- the shell ---------------------------------------------------------------------------------

class GuardUnavailable(Exception):
    """The guard cannot run here; str() is one line saying why (e.g. naming CAP_SYS_ADMIN)."""


class Refusal(NamedTuple):
    """An open of a guarded file the guard refused, or could not judge and allowed."""

    outcome: str  # REFUSED or UNKNOWN
    pid: int  # the writer process (its thread group); the tid when it could not be read
    tid: int  # the thread blocked in the open
    comm: bytes | None  # the process's comm, e.g. b"cp"; None once it is gone
    exe: bytes | None  # readlink of /proc/PID/exe
    cmdline: list[bytes] | None  # at most procfs.CMDLINE_LIMIT bytes of it
    cmdline_truncated: bool
    file: FileId
    path: bytes  # the file's name now (readlink of the event's fd), " (deleted)" and all
    flags: int | None  # the open's flags; None for UNKNOWN
    syscall: int | None  # the call the thread was blocked in, None when unreadable
    time: float  # time.time() when the open was answered


class Drained(NamedTuple):
    records: list[Refusal]
    dropped: int  # records lost since the last drain: the deque was full


class GuardStats(NamedTuple):
    """Counters since the guard opened (the thread's, read without a lock: a snapshot)."""

    events: int  # permission events answered
    allowed: int  # of guarded files (the opens of other inodes on a shared mark are not counted)
    refused: int
    unknown: int  # flags unreadable: allowed
    retries: int  # reads of /proc/TID/syscall that found the opener not asleep yet
    repeats: int  # refusals and unknowns of a writer and file already recorded
    dropped: int  # records lost to a full deque
    errors: int  # events whose handling failed: allowed
    stale_marks: int  # marks unguard could not remove (the path names another file now)


# /proc/TID/syscall reads "running" until the opener is asleep in fanotify's wait: retried
# after these pauses (seconds, ~20 ms in all), then the open is allowed.
RETRY_PAUSES = (0.0, 0.0, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01)
MAX_RECORDS = 1024  # records kept for drain(); beyond, the oldest go (counted in dropped)
RECORDED_WRITERS = 4096  # (writer, file) pairs remembered for the once-per-writer rule
_INIT_LADDER = (
    # (flags, whether the group may choose the errno): the first this kernel accepts
    (fanotify.FAN_CLASS_PRE_CONTENT | fanotify.FAN_REPORT_TID, True),
    (fanotify.FAN_CLASS_CONTENT | fanotify.FAN_REPORT_TID, False),
    (fanotify.FAN_CLASS_CONTENT, False),  # before Linux 4.20: the pid is the thread group's
)
_COMMON_FLAGS = fanotify.FAN_CLOEXEC | fanotify.FAN_NONBLOCK | fanotify.FAN_UNLIMITED_QUEUE


def _open_group() -> tuple[int, int, bool]:
    """(group fd, the flags it was made with, whether it may answer with an errno)."""
    for flags, errno_allowed in _INIT_LADDER:
        try:
            return fanotify.init(flags | _COMMON_FLAGS), flags, errno_allowed
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                continue
            if exc.errno == errno.EPERM:
                raise GuardUnavailable("fanotify permission events need CAP_SYS_ADMIN "
                                       "(fanotify_init: Operation not permitted)") from None
            if exc.errno == errno.ENOSYS:
                raise GuardUnavailable("this kernel has no fanotify (CONFIG_FANOTIFY)") from None
            raise GuardUnavailable(f"fanotify_init: {os.strerror(exc.errno or 0)}") from None
    raise GuardUnavailable("this kernel has no fanotify permission events "
                           "(CONFIG_FANOTIFY_ACCESS_PERMISSIONS)")


def _read_small(path: bytes, size: int = 4096) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


def _tgid(status: bytes) -> int | None:
    for line in status.splitlines():
        if line.startswith(b"Tgid:"):
            return int(line.split()[1])
    return None


class Guard:
    """fanotify permission marks on the guarded inodes and the thread that answers them.

    Raises GuardUnavailable when it cannot run (no CAP_SYS_ADMIN, no fanotify, a machine
    whose system calls it does not know).  guard/unguard/drain/stats/close are for one
    thread (the daemon's loop); the answering thread is the guard's own.
    """

    def __init__(self, max_records: int = MAX_RECORDS) -> None:
        self.machine = os.uname().machine
        if self.machine not in SYSCALLS:
            raise GuardUnavailable(f"the guard reads the system calls of {', '.join(SYSCALLS)}, "
                                   f"not of {self.machine}")
        self._fd, self.group_flags, errno_allowed = _open_group()
        # what a refused writer gets; plain FAN_DENY for good once the kernel refuses the choice
        self._deny = fanotify.deny(errno.ETXTBSY) if errno_allowed else fanotify.deny()
        self._guarded: frozenset[FileId] = frozenset()  # replaced whole: the thread reads it
        self._paths: dict[FileId, bytes] = {}
        self._records: deque[Refusal] = deque(maxlen=max_records)
        self._recorded: OrderedDict[tuple[int, int, FileId, str], None] = OrderedDict()
        self._counts = dict.fromkeys(GuardStats._fields, 0)
        self._dropped_seen = 0
        self._failure: str | None = None
        self._lock = threading.Lock()  # the group fd's life: marks vs the thread's emergency close
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stop_r, self._stop_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name="inodewatch-guard", daemon=True)
        self._thread.start()

    # -- the daemon's side --

    @property
    def deny_errno(self) -> int:
        """The errno a refused writer gets: ETXTBSY where the kernel lets us choose, else EPERM."""
        return (self._deny >> 24) or errno.EPERM

    @property
    def failure(self) -> str | None:
        """Why the guard stopped guarding (its thread failed), None while it works."""
        return self._failure

    def fileno(self) -> int:
        """Readable when drain() has something to hand over (or the guard failed)."""
        return self._wake_r

    @property
    def guarded(self) -> frozenset[FileId]:
        return self._guarded

    def guard(self, path: bytes, dev: int, ino: int) -> bool:
        """Guard the inode (dev, ino), which `path` names.  False when the path names another
        file now, or nothing: not guarded.  Raises OSError when the mark cannot be placed
        (ENOSPC: fanotify's limit, /proc/sys/fs/fanotify/max_user_marks), GuardUnavailable
        once the guard failed.  It looks the path up: give it only paths on mounts the
        daemon trusts (a hung FUSE server would hang the caller here, and the answering
        thread at every open of the file)."""
        file = FileId(dev, ino)
        fd = _open_path(path)
        if fd is None:
            return False
        try:
            st = os.fstat(fd)
            if FileId(st.st_dev, st.st_ino) != file:
                return False
            with self._lock:
                if self._failure is not None:
                    raise GuardUnavailable(self._failure)
                # Through the O_PATH fd's /proc link: the inode marked is the one checked,
                # even if the path is replaced meanwhile.
                fanotify.mark(self._fd, fanotify.FAN_MARK_ADD, fanotify.FAN_OPEN_PERM, _fd_link(fd))
        finally:
            os.close(fd)
        self._paths[file] = path
        self._guarded = self._guarded | {file}
        return True

    def unguard(self, dev: int, ino: int) -> None:
        """Stop guarding (dev, ino): its opens are allowed at once.  The mark is removed when
        the path it was guarded by still names the inode; else it stays on the inode, which
        that path no longer reaches, until the kernel frees it (counted in stale_marks; an
        open of it then costs the opener one allowed round trip)."""
        file = FileId(dev, ino)
        path = self._paths.pop(file, None)
        if path is None:
            return
        self._guarded = self._guarded - {file}
        fd = _open_path(path)
        removed = False
        if fd is not None:
            try:
                st = os.fstat(fd)
                with self._lock:
                    if FileId(st.st_dev, st.st_ino) == file and self._failure is None:
                        fanotify.mark(self._fd, fanotify.FAN_MARK_REMOVE, fanotify.FAN_OPEN_PERM,
                                      _fd_link(fd))
                        removed = True
            except OSError:
                pass
            finally:
                os.close(fd)
        if not removed:
            self._counts["stale_marks"] += 1

    def drain(self) -> Drained:
        """The records since the last drain, oldest first, and how many were lost."""
        try:
            while os.read(self._wake_r, 4096):  # the wake-ups first, then the records: none missed
                pass
        except BlockingIOError:
            pass
        records = []
        while self._records:
            records.append(self._records.popleft())
        dropped = self._counts["dropped"]
        lost, self._dropped_seen = dropped - self._dropped_seen, dropped
        return Drained(records, lost)

    def stats(self) -> GuardStats:
        return GuardStats(**self._counts)

    def close(self) -> None:
        """Stop the thread and close the group: the kernel allows every open still waiting,
        and the marks go with the group."""
        if self._stop_w < 0:
            return
        os.write(self._stop_w, b"x")
        self._thread.join()
        self._close_group()
        for fd in (self._stop_r, self._stop_w, self._wake_r, self._wake_w):
            os.close(fd)
        self._stop_w = -1

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _close_group(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    # -- the answering thread: never logs, answers every event, fails open --

    def _run(self) -> None:
        try:
            poller = select.poll()
            poller.register(self._fd, select.POLLIN)
            poller.register(self._stop_r, select.POLLIN)
            while True:
                ready = {fd for fd, _ in poller.poll()}
                if self._stop_r in ready:
                    return
                try:
                    events = fanotify.read_events(self._fd)
                except OSError:
                    # EMFILE: the kernel could not open the file for us, and denied that
                    # open itself.  Nothing else is expected of a read.
                    self._counts["errors"] += 1
                    continue
                for event in events:
                    self._answer(event)
        except BaseException as exc:  # noqa: BLE001 -- e.g. a format we cannot read
            # Nothing can be answered any more: closing the group allows every open waiting
            # now and stops the marks, rather than leave openers hung until the daemon exits.
            self._failure = f"the guard stopped: {type(exc).__name__}: {exc}"
            self._close_group()
            self._wake()

    def _answer(self, event: fanotify.Event) -> None:
        if event.fd < 0:
            return  # an overflow: no file, nothing waits (and the queue is unlimited)
        try:
            if event.is_permission:
                self._counts["events"] += 1
                self._judge(event)
        finally:
            os.close(event.fd)

    def _judge(self, event: fanotify.Event) -> None:
        answered = False
        try:
            st = os.fstat(event.fd)
            file = FileId(st.st_dev, st.st_ino)
            guarded = self._guarded
            if file not in guarded:
                answered = self._respond(event.fd, fanotify.FAN_ALLOW)
                return
            flags, syscall = self._opener_flags(event.pid)
            verdict = decide(guarded, file, flags)
            self._counts[verdict] += 1
            if verdict == ALLOWED:
                answered = self._respond(event.fd, fanotify.FAN_ALLOW)
                return
            writer = _writer(event.pid)
            answered = self._respond(event.fd, self._deny if verdict == REFUSED else fanotify.FAN_ALLOW)
            self._record(verdict, event, writer, file, flags, syscall)
        except Exception:  # noqa: BLE001 -- whatever failed, the opener gets its answer
            self._counts["errors"] += 1
            if not answered:
                self._respond(event.fd, fanotify.FAN_ALLOW)

    def _respond(self, event_fd: int, answer: int) -> bool:
        """Write the answer; True once the event is answered (or no longer waits)."""
        try:
            fanotify.respond(self._fd, event_fd, answer)
            return True
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return True  # the opener was killed while it waited
            if answer == self._deny and answer != fanotify.FAN_DENY:
                self._deny = fanotify.deny()  # a kernel before FAN_DENY_ERRNO (Linux 6.14)
                return self._respond(event_fd, self._deny)
            if answer != fanotify.FAN_ALLOW:
                return self._respond(event_fd, fanotify.FAN_ALLOW)
            raise

    def _opener_flags(self, tid: int) -> tuple[int | None, int | None]:
        """(open flags, syscall number) of the thread blocked in the open; None when unknown."""
        if tid <= 0:
            return None, None  # outside our pid namespace
        path = b"/proc/%d/syscall" % tid
        for pause in RETRY_PAUSES:
            if pause:
                time.sleep(pause)
            try:
                text = _read_small(path)
            except OSError:
                return None, None  # gone (killed while waiting), or not ours to read
            if text.startswith(RUNNING):
                self._counts["retries"] += 1
                continue  # not asleep yet
            number = syscall_number(text)
            flags = parse_syscall(text, self.machine)
            if isinstance(flags, OpenHowAt):
                flags = _open_how_flags(tid, flags.address)
            return flags, number
        return None, None

    def _record(self, verdict: str, event: fanotify.Event, writer: _Writer, file: FileId,
                flags: int | None, syscall: int | None) -> None:
        key = (writer.pid, writer.start_time, file, verdict)
        if key in self._recorded:
            self._counts["repeats"] += 1
            return
        self._recorded[key] = None
        if len(self._recorded) > RECORDED_WRITERS:
            self._recorded.popitem(last=False)
        try:
            path = os.readlink(_fd_link(event.fd))
        except OSError:
            path = b""
        cmdline: list[bytes] | None
        try:
            cmdline, truncated = read_cmdline(writer.pid, CMDLINE_LIMIT)
        except ProcError:
            cmdline, truncated = None, False
        if len(self._records) == self._records.maxlen:
            self._counts["dropped"] += 1
        self._records.append(Refusal(verdict, writer.pid, event.pid, writer.comm, writer.exe, cmdline,
                                     truncated, file, path, flags, syscall, time.time()))
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"!")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already


def _fd_link(fd: int) -> bytes:
    return b"/proc/self/fd/%d" % fd


def _open_path(path: bytes) -> int | None:
    """An O_PATH fd of what `path` names now; None when it names nothing we may reach."""
    try:
        return os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in _NOT_THERE:
            return None
        raise


_NOT_THERE = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.ELOOP, errno.ENAMETOOLONG,
                        errno.ESTALE})


def _open_how_flags(tid: int, address: int) -> int | None:
    """The u64 flags at the start of the struct open_how at `address` in `tid`'s memory."""
    try:
        fd = os.open(b"/proc/%d/mem" % tid, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.pread(fd, 8, address)
    except OSError:
        return None
    finally:
        os.close(fd)
    return int.from_bytes(data, sys.byteorder) if len(data) == 8 else None


class _Writer(NamedTuple):
    pid: int
    start_time: int
    comm: bytes | None
    exe: bytes | None


def _writer(tid: int) -> _Writer:
    """Who the blocked thread's process is, read before the answer (a refused writer may exit
    at once after it).  None of these reads takes the writer's mm lock; its cmdline, which
    does, is read after the answer."""
    pid, start, comm, exe = tid, 0, None, None
    try:
        pid = _tgid(_read_small(b"/proc/%d/status" % tid)) or tid
        stat = parse_stat(_read_small(b"/proc/%d/stat" % pid))
        start, comm = stat.start_time, stat.comm
        exe = os.readlink(b"/proc/%d/exe" % pid)
    except (OSError, ValueError):
        pass  # gone, or a kernel thread without exe: what was read is kept
    return _Writer(pid, start, comm, exe)
