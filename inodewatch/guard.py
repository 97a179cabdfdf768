"""The guard: refuse the open for writing that would crash a process mapping the file.

`cp new.so so.so` over a mapped library rewrites the pages a process runs (SIGSEGV);
`mv`/`install` replace the inode and are harmless.  The guard puts a fanotify permission mark
(FAN_OPEN_PERM) on each inode it is asked to guard and answers every open of it: an open for
writing is refused, any other open allowed.  fanotify does not say how a file is being
opened, so the answer is made from the blocked opener's /proc/TID/syscall (and, for openat2,
the flags in its struct open_how, through /proc/TID/mem).

Pure core: `parse_syscall`, `is_write`, `decide`, `guardable`.  Shell: `Guard`, the daemon's
handle on a helper process (`_serve`, `_Responder`) that owns the fanotify group and answers.

Why not the daemon's poll loop: every open of a guarded file waits for the answer, the
daemon's own opens included (content identity, /proc/PID/map_files), and a loop waiting on
itself would never answer; a slow turn of the loop (1-2 s) would freeze every opener of every
guarded file.  Why not a thread of the daemon's either: it needs the GIL, and a busy main
thread that lets go of it only for short system calls keeps it from the waiting thread for
long (measured: 9.6 s, benchmarks/guard.py, and CPython's take_gil restarts its 5 ms wait
each time the holder lets go, so the holder is never asked to switch).  The helper does
nothing else.  It never logs and never waits for the daemon: each refusal (or opener whose
flags could not be read) is one datagram on a socket the daemon polls (`fileno()`), dropped
and counted when the daemon lets it fill up; `drain()` hands them over.

Measured on Linux 6.18 (tests/test_guard.py, benchmarks/guard.py):
- A FAN_CLASS_PRE_CONTENT group may answer with the opener's errno: the writer gets ETXTBSY
  ("Text file busy", what a running executable's writer has always got); elsewhere EPERM.
- FAN_REPORT_TID: the event names the opening thread, so a multithreaded writer's
  /proc/TID/syscall is its own, not its main thread's.
- /proc/TID/syscall reads "running" when it is read before the opener is asleep: retried
  for up to ~20 ms, then the open is allowed (fail open: a caller is never hung) and
  recorded as "unknown".
- Not seen by an open, so not refused: truncate(2) by path (os.truncate; coreutils'
  `truncate` opens O_WRONLY and is refused), writes through an fd opened before the mark.
  A FAN_PRE_ACCESS mark would see truncate(2) (the event comes with the opener in syscall
  76), but also every read(2) and mmap(2) of the file, and tmpfs refuses it (EOPNOTSUPP).
- A writer waiting for the answer sleeps in D state (fanotify's wait is killable).
- A guard in a pid namespace of its own gets pid 0 for writers outside it: "unknown".
Not measured, from the kernel's code: a write through a shared writable mapping made before
the mark is not seen either; io_uring's IORING_OP_OPENAT opens from an io-wq worker or in
io_uring_enter, whose /proc/TID/syscall tells no flags ("unknown", allowed); a 32-bit (i386)
writer on x86_64 has other syscall numbers ("unknown", allowed; openat2, 437 on every ABI,
is read right).

Which files: `guardable` says no to the directories the dynamic loader searches (every
process start maps what is there: a listener that stalls would stall them all), yes to
plugin directories below them (/usr/lib/nginx/modules), and never to the loader and libc
whatever the operator widens.

Once per writer and file: a writer (a process, by pid and start time) refused (or unknown)
on one file is recorded once; its retries are counted (`GuardStats.repeats`), not recorded.
The helper dedupes, not the daemon, so that a writer retrying in a loop cannot fill the
socket and push out the others.
"""

from __future__ import annotations

import ctypes
import errno
import marshal
import os
import queue
import re
import select
import signal
import socket
import subprocess
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


_FLAG_NAMES = ((0o100, "O_CREAT"), (0o200, "O_EXCL"), (0o1000, "O_TRUNC"), (0o2000, "O_APPEND"),
               (0o4000, "O_NONBLOCK"), (0o10000, "O_DSYNC"), (0o200000, "O_DIRECTORY"),
               (0o400000, "O_NOFOLLOW"), (0o2000000, "O_CLOEXEC"))
_ACCESS_NAMES = ("O_RDONLY", "O_WRONLY", "O_RDWR", "O_ACCMODE")


def flags_text(flags: int) -> str:
    """open(2) flags as the operator knows them: "O_WRONLY|O_CREAT|O_TRUNC" (the bits not
    named here as one octal number)."""
    names = [_ACCESS_NAMES[flags & O_ACCMODE]]
    rest = flags & ~O_ACCMODE
    for bit, name in _FLAG_NAMES:
        if rest & bit:
            names.append(name)
            rest &= ~bit
    if rest:
        names.append(f"0o{rest:o}")
    return "|".join(names)


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


# nr, six arguments, sp, pc; or -1, sp, pc (fs/proc/base.c, proc_pid_syscall: "%d 0x%lx ...")
_SYSCALL_TEXT = re.compile(rb"([0-9]+)((?: 0x[0-9a-f]+){8})\n?|-1(?: 0x[0-9a-f]+){2}\n?")


class Syscall(NamedTuple):
    """The call a thread is in, from /proc/TID/syscall: number -1 when it is in none."""

    number: int
    args: tuple[int, ...]  # the six arguments ((): none)


def read_syscall(text: bytes) -> Syscall | None:
    """/proc/TID/syscall text as a Syscall; None when the text is not in the kernel's format
    (RUNNING included: read before the thread was asleep)."""
    match = _SYSCALL_TEXT.fullmatch(text)
    if match is None:
        return None
    if match[1] is None:
        return Syscall(-1, ())
    return Syscall(int(match[1]), tuple(int(field, 16) for field in match[2].split()[:6]))


def open_flags(call: Syscall, machine: str) -> int | OpenHowAt | None:
    """The open flags of `call` on `machine` (os.uname().machine); OpenHowAt for openat2,
    whose flags must be read from the opener's memory; None when it is not an open we know."""
    table = SYSCALLS.get(machine)
    number = call.number
    if table is None or number < 0:
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
    if where == _HOW:
        return OpenHowAt(call.args[2])
    assert isinstance(where, int)
    return call.args[where] & 0xFFFFFFFF  # an int argument: the upper half is not the caller's


def parse_syscall(text: bytes, machine: str) -> int | OpenHowAt | None:
    """The open flags in /proc/TID/syscall text on `machine` (see open_flags); None when the
    text is no call, or not an open."""
    call = read_syscall(text)
    return None if call is None else open_flags(call, machine)


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


# --- the shell: a helper process answers, the daemon holds a Guard ---------------------------

class GuardUnavailable(Exception):
    """The guard cannot run (any more); str() is one line saying why (e.g. naming CAP_SYS_ADMIN)."""


class Refusal(NamedTuple):
    """An open of a guarded file the guard refused, or could not judge and allowed."""

    outcome: str  # REFUSED or UNKNOWN
    pid: int  # the writer process (its thread group); the tid when that could not be read
    tid: int  # the thread blocked in the open (0: outside the guard's pid namespace)
    comm: bytes | None  # the process's comm, e.g. b"cp"; None once it is gone
    exe: bytes | None  # readlink of /proc/PID/exe
    cmdline: list[bytes] | None  # at most procfs.CMDLINE_LIMIT bytes of it
    cmdline_truncated: bool
    file: FileId
    path: bytes  # the file's name now (readlink of the event's fd), " (deleted)" and all
    flags: int | None  # the open's flags; None for UNKNOWN
    syscall: int | None  # the call the thread was blocked in (-1: none), None when unreadable
    time: float  # time.time() when the open was answered


class Drained(NamedTuple):
    records: list[Refusal]
    dropped: int  # records lost since the last drain (a full queue on the way)


class GuardStats(NamedTuple):
    """The helper's counters since the guard opened."""

    events: int  # permission events answered
    allowed: int  # opens of guarded files allowed (reads, execs)
    refused: int
    unknown: int  # flags unreadable: allowed
    retries: int  # reads of /proc/TID/syscall that found the opener not asleep yet
    repeats: int  # refusals and unknowns of a writer and file already recorded
    dropped: int  # records lost (the daemon did not drain, the queue was full)
    errors: int  # events whose handling failed: allowed
    stale_marks: int  # marks unguard could not remove (the path names another file now)


# /proc/TID/syscall reads "running" until the opener is asleep in fanotify's wait: retried
# after these pauses (seconds, ~20 ms in all), then the open is allowed.
RETRY_PAUSES = (0.0, 0.0, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01)
MAX_RECORDS = 1024  # records held for drain() in the daemon; beyond, the oldest go (dropped)
RECORDED_WRITERS = 4096  # (writer, file) pairs remembered for the once-per-writer rule
CMDLINE_WAIT = 0.05  # seconds a refused writer's cmdline is waited for (its mm lock)
START_TIMEOUT = 10.0  # seconds for the helper to start (an interpreter and ~70 ms of imports)
REPLY_TIMEOUT = 5.0  # seconds for it to answer a request; then it is taken for hung, and killed
_MESSAGE_MAX = 1 << 16  # a record: cmdline, exe and path of at most 4 KB each, and small fields
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


class Guard:
    """The daemon's handle on the guard: a helper process (why: the module's docstring) that
    owns the fanotify group, places the marks and answers every open of a guarded file.

    The helper owns the group alone: when it dies, the kernel allows every open still
    waiting.  It dies with the daemon (PR_SET_PDEATHSIG, which follows the thread that
    started it: create the Guard from the daemon's main thread), when the daemon closes its
    socket, and when it does not answer a request within REPLY_TIMEOUT (killed).  Its stderr
    is /dev/null; a record the daemon does not take in time is dropped and counted.

    Raises GuardUnavailable when it cannot run (no CAP_SYS_ADMIN, no fanotify, a machine
    whose system calls it does not know), or no longer runs (`failure`).  For one thread.
    """

    def __init__(self, max_records: int = MAX_RECORDS) -> None:
        machine = os.uname().machine
        if machine not in SYSCALLS:
            raise GuardUnavailable(f"the guard reads the system calls of {', '.join(SYSCALLS)}, "
                                   f"not of {machine}")
        self._sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self._sock.setblocking(False)
        self._records: deque[Refusal] = deque(maxlen=max_records)
        self._replies: deque[object] = deque()
        self._dropped = 0  # here: the deque was full
        self._helper_dropped = self._dropped_told = 0
        self._failure: str | None = None
        self._guarded: set[FileId] = set()
        package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _HELPER, package, str(theirs.fileno()), str(os.getpid())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
        finally:
            theirs.close()
        hello = self._reply(START_TIMEOUT, "to start")
        assert isinstance(hello, tuple)
        if hello[0] == "unavailable":
            self.close()
            raise GuardUnavailable(hello[1])
        _, self.deny_errno, self.group_flags = hello
        self.deny_errno: int  # what a refused writer gets: ETXTBSY where the kernel lets us choose, else EPERM
        self.group_flags: int  # the fanotify_init flags the group was made with

    @property
    def failure(self) -> str | None:
        """Why the guard stopped guarding (its helper died or hung), None while it works."""
        return self._failure

    @property
    def helper_pid(self) -> int:
        return self._proc.pid

    @property
    def guarded(self) -> frozenset[FileId]:
        return frozenset(self._guarded)

    def fileno(self) -> int:
        """Readable when drain() has something to hand over, or the helper ended."""
        return self._sock.fileno()

    def guard(self, path: bytes, dev: int, ino: int) -> bool:
        """Guard the inode (dev, ino), which `path` names.  False when the path names another
        file now, or nothing: not guarded.  Raises OSError when the mark cannot be placed
        (ENOSPC: /proc/sys/fs/fanotify/max_user_marks), GuardUnavailable when the guard no
        longer runs.  The helper looks the path up: give it only paths on mounts the daemon
        trusts (a hung FUSE server would hang the helper, and so every open of a guarded
        file, until REPLY_TIMEOUT has the helper killed)."""
        reply = self._request(("guard", path, dev, ino))
        if isinstance(reply, tuple):  # (errno, message): the mark was refused
            raise OSError(reply[0], reply[1], path)
        if reply:
            self._guarded.add(FileId(dev, ino))
        return bool(reply)

    def unguard(self, dev: int, ino: int) -> None:
        """Stop guarding (dev, ino): its opens are allowed at once.  The mark is removed when
        the path it was guarded by still names the inode; else it stays on the inode, which
        that path no longer reaches, until the kernel frees it (counted in stale_marks; an
        open of it then costs the opener one round trip, allowed)."""
        self._guarded.discard(FileId(dev, ino))
        self._request(("unguard", dev, ino))

    def stats(self) -> GuardStats:
        counts = self._request(("stats",))
        assert isinstance(counts, dict)
        counts["dropped"] += self._dropped
        return GuardStats(**counts)

    def drain(self) -> Drained:
        """The records since the last drain, oldest first, and how many were lost."""
        self._receive()
        records = list(self._records)
        self._records.clear()
        dropped = self._dropped + self._helper_dropped
        lost, self._dropped_told = dropped - self._dropped_told, dropped
        return Drained(records, lost)

    def close(self) -> None:
        """End the helper: the kernel allows every open still waiting, and the marks go."""
        if self._sock.fileno() < 0:
            return
        self._sock.close()  # the helper reads the end of its socket and exits
        try:
            self._proc.wait(timeout=REPLY_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- talking to the helper --

    def _request(self, message: tuple) -> object:
        if self._failure is not None:
            raise GuardUnavailable(self._failure)
        try:
            self._sock.send(marshal.dumps(message))
        except BlockingIOError:
            self._fail("the guard's helper reads no requests")  # its queue is full: hung
        except OSError:
            self._receive()  # it ended: say why
            self._fail("the guard's helper is gone")
        return self._reply(REPLY_TIMEOUT, "to answer")

    def _reply(self, timeout: float, what: str) -> object:
        deadline = time.monotonic() + timeout
        while not self._replies:
            if self._failure is not None:
                raise GuardUnavailable(self._failure)
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._sock], [], [], left)[0]:
                self._fail(f"the guard's helper took more than {timeout:.0f} s {what}")
            else:
                self._receive()
        return self._replies.popleft()

    def _receive(self) -> None:
        """Take in every message waiting: records, replies, the helper's end."""
        while self._failure is None:
            try:
                data = self._sock.recv(_MESSAGE_MAX)
            except BlockingIOError:
                return
            except OSError as exc:
                data, error = b"", exc
            else:
                error = None
            if not data:
                self._fail(f"the guard's helper ended ({self._helper_status(error)})")
                return
            kind, *rest = marshal.loads(data)
            if kind == "record":
                fields, self._helper_dropped = rest
                if len(self._records) == self._records.maxlen:
                    self._dropped += 1
                fields[7] = FileId(*fields[7])
                self._records.append(Refusal(*fields))
            elif kind == "failure":
                self._fail(rest[0])
            else:
                self._replies.append(rest[0] if kind == "reply" else (kind, *rest))

    def _helper_status(self, error: OSError | None) -> str:
        try:
            code = self._proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return f"its socket: {error}" if error else "its socket closed"
        return f"killed by signal {-code}" if code < 0 else f"exit status {code}"

    def _fail(self, reason: str) -> None:
        """The helper is gone or useless: make sure it is gone (the kernel then allows every
        open waiting for it); every request from now on raises GuardUnavailable."""
        if self._failure is None:
            self._failure = reason
            if self._proc.poll() is None:
                self._proc.kill()


# The helper's program: the package's directory on a path of its own (-I -S: no site, no
# PYTHON* variables, nothing but the standard library and this package), then _serve, and
# os._exit: an exit that waited for a thread stuck on a writer (_Cmdlines) would keep the
# group, and every opener waiting on it, alive.
_HELPER = ("import os, sys; sys.path.insert(0, sys.argv[1]); from inodewatch.guard import _serve; "
           "os._exit(_serve(sys.argv[2:]))")

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15


def _serve(argv: list[str]) -> int:
    """The helper: make the group, then answer requests and events until the daemon is gone."""
    sock_fd, parent = int(argv[0]), int(argv[1])
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        return 0  # the daemon died before the line above
    libc.prctl(PR_SET_NAME, b"inodewatch-grd", 0, 0, 0)
    sock = socket.socket(fileno=sock_fd)
    try:
        fd, flags, errno_allowed = _open_group()
    except GuardUnavailable as exc:
        sock.send(marshal.dumps(("unavailable", str(exc))))
        return 2
    responder = _Responder(fd, errno_allowed, os.uname().machine, sock)
    sock.send(marshal.dumps(("hello", responder.deny_errno, flags)))
    sock.setblocking(False)
    try:
        return responder.serve()
    except BaseException as exc:  # noqa: BLE001 -- said to the daemon, then the group closes
        responder.tell(("failure", f"the guard's helper failed: {type(exc).__name__}: {exc}"))
        return 1


class _Responder:
    """The helper's state and loop: the group, the guarded inodes, the writers recorded."""

    def __init__(self, fd: int, errno_allowed: bool, machine: str, sock: socket.socket) -> None:
        self.fd, self.machine, self.sock = fd, machine, sock
        # what a refused writer gets; plain FAN_DENY for good once the kernel refuses the choice
        self.deny = fanotify.deny(errno.ETXTBSY) if errno_allowed else fanotify.deny()
        self.guarded: dict[FileId, bytes] = {}  # the path each was guarded by
        self.recorded: OrderedDict[tuple[int, int, FileId, str], None] = OrderedDict()
        self.counts = dict.fromkeys(GuardStats._fields, 0)
        self.cmdlines = _Cmdlines()

    @property
    def deny_errno(self) -> int:
        return (self.deny >> 24) or errno.EPERM

    def serve(self) -> int:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        poller.register(self.sock.fileno(), select.POLLIN)
        while True:
            for fd, _ in poller.poll():
                if fd == self.fd:
                    self.answer_all()
                elif not self.requests():
                    return 0  # the daemon closed its end, or died

    def answer_all(self) -> None:
        try:
            events = fanotify.read_events(self.fd)
        except OSError:
            # EMFILE: the kernel could not open the file for us, and denied that open
            # itself.  Nothing else is expected of a read.
            self.counts["errors"] += 1
            return
        for event in events:
            self.answer(event)

    # -- requests --

    def requests(self) -> bool:
        """Serve the daemon's requests waiting; False once it is gone."""
        while True:
            try:
                data = self.sock.recv(_MESSAGE_MAX)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not data:
                return False
            kind, *args = marshal.loads(data)
            if kind == "guard":
                try:
                    reply: object = self.guard(*args)
                except OSError as exc:
                    reply = (exc.errno, exc.strerror)
            elif kind == "unguard":
                reply = self.unguard(*args)
            else:
                reply = dict(self.counts)
            self.reply(reply)

    def guard(self, path: bytes, dev: int, ino: int) -> bool:
        file = FileId(dev, ino)
        fd = _open_path(path)
        if fd is None:
            return False
        try:
            st = os.fstat(fd)
            if FileId(st.st_dev, st.st_ino) != file:
                return False
            self.guarded[file] = path  # before the mark: its first open is judged
            try:
                # Through the O_PATH fd's /proc link: the inode marked is the one checked,
                # even if the path is replaced meanwhile.
                fanotify.mark(self.fd, fanotify.FAN_MARK_ADD, fanotify.FAN_OPEN_PERM, _fd_link(fd))
            except OSError:
                del self.guarded[file]
                raise
        finally:
            os.close(fd)
        return True

    def unguard(self, dev: int, ino: int) -> bool:
        """Whether the mark was removed."""
        file = FileId(dev, ino)
        path = self.guarded.pop(file, None)
        if path is None:
            return False
        fd = _open_path(path)
        if fd is not None:
            try:
                st = os.fstat(fd)
                if FileId(st.st_dev, st.st_ino) == file:
                    fanotify.mark(self.fd, fanotify.FAN_MARK_REMOVE, fanotify.FAN_OPEN_PERM, _fd_link(fd))
                    return True
            except OSError:
                pass
            finally:
                os.close(fd)
        self.counts["stale_marks"] += 1
        return False

    def reply(self, value: object) -> None:
        """A reply, which the daemon waits for (and reads meanwhile): sent even if its queue
        is full of records for a moment, but not waited for longer than REPLY_TIMEOUT."""
        data = marshal.dumps(("reply", value))
        deadline = time.monotonic() + REPLY_TIMEOUT
        while True:
            try:
                self.sock.send(data)
                return
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                select.select([], [self.sock], [], left)

    def tell(self, message: tuple) -> bool:
        """Send without waiting; False when it could not be sent."""
        try:
            self.sock.send(marshal.dumps(message))
            return True
        except OSError:
            return False

    # -- events: never raises, answers every one, fails open --

    def answer(self, event: fanotify.Event) -> None:
        if event.fd < 0:
            return  # an overflow: no file, nothing waits (and the queue is unlimited)
        try:
            if event.is_permission:
                self.counts["events"] += 1
                self.judge(event)
        finally:
            os.close(event.fd)

    def judge(self, event: fanotify.Event) -> None:
        answered = False
        try:
            st = os.fstat(event.fd)
            file = FileId(st.st_dev, st.st_ino)
            if file not in self.guarded:
                answered = self.respond(event.fd, fanotify.FAN_ALLOW)
                return
            flags, syscall = self.opener_flags(event.pid)
            verdict = decide(self.guarded.keys(), file, flags)
            self.counts[verdict] += 1
            if verdict == ALLOWED:
                answered = self.respond(event.fd, fanotify.FAN_ALLOW)
                return
            writer = _writer(event.pid)
            first = self.first_time(writer, file, verdict)
            # Who it is, read before the answer: a refused cp prints its error and exits
            cmdline = self.cmdlines.read(writer.pid) if first else (None, False)
            answered = self.respond(event.fd, self.deny if verdict == REFUSED else fanotify.FAN_ALLOW)
            if first:
                self.record(verdict, event, writer, cmdline, file, flags, syscall)
        except Exception:  # noqa: BLE001 -- whatever failed, the opener gets its answer
            self.counts["errors"] += 1
            if not answered:
                self.respond(event.fd, fanotify.FAN_ALLOW)

    def respond(self, event_fd: int, answer: int) -> bool:
        """Write the answer; True once the event is answered (or no longer waits)."""
        try:
            fanotify.respond(self.fd, event_fd, answer)
            return True
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return True  # the opener was killed while it waited
            if answer == self.deny and answer != fanotify.FAN_DENY:
                self.deny = fanotify.deny()  # a kernel before FAN_DENY_ERRNO (Linux 6.14)
                return self.respond(event_fd, self.deny)
            if answer != fanotify.FAN_ALLOW:
                return self.respond(event_fd, fanotify.FAN_ALLOW)
            raise

    def opener_flags(self, tid: int) -> tuple[int | None, int | None]:
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
                self.counts["retries"] += 1
                continue  # not asleep yet
            call = read_syscall(text)
            if call is None:
                return None, None
            flags = open_flags(call, self.machine)
            if isinstance(flags, OpenHowAt):
                flags = _open_how_flags(tid, flags.address)
            return flags, call.number
        return None, None

    def first_time(self, writer: _Writer, file: FileId, verdict: str) -> bool:
        """Whether this writer (process) meets this verdict on this file for the first time."""
        key = (writer.pid, writer.start_time, file, verdict)
        if key in self.recorded:
            self.counts["repeats"] += 1
            return False
        self.recorded[key] = None
        if len(self.recorded) > RECORDED_WRITERS:
            self.recorded.popitem(last=False)
        return True

    def record(self, verdict: str, event: fanotify.Event, writer: _Writer,
               cmdline: tuple[list[bytes] | None, bool], file: FileId, flags: int | None,
               syscall: int | None) -> None:
        try:
            path = os.readlink(_fd_link(event.fd))
        except OSError:
            path = b""
        fields = [verdict, writer.pid, event.pid, writer.comm, writer.exe, *cmdline, tuple(file),
                  path, flags, syscall, time.time()]
        if not self.tell(("record", fields, self.counts["dropped"])):
            self.counts["dropped"] += 1


class _Cmdlines:
    """Writers' command lines, read by a thread of the helper's and waited for CMDLINE_WAIT
    at most.  Reading /proc/PID/cmdline takes the writer's mm lock, which a writer can keep
    taken (a thread faulting on a hung FUSE mapping, another waiting to mmap): the helper
    must not wait on that with every guarded open behind it.  While the thread is stuck on
    one writer, the others' command lines are not read (None)."""

    def __init__(self) -> None:
        self.requests: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.results: queue.SimpleQueue[tuple[list[bytes] | None, bool]] = queue.SimpleQueue()
        self.busy = False
        threading.Thread(target=self._run, name="cmdlines", daemon=True).start()

    def _run(self) -> None:
        while True:
            pid = self.requests.get()
            try:
                self.results.put(read_cmdline(pid, CMDLINE_LIMIT))
            except ProcError:
                self.results.put((None, False))

    def read(self, pid: int) -> tuple[list[bytes] | None, bool]:
        """(arguments, whether some were cut off); (None, False) when unread."""
        if self.busy:  # still on a writer it gave up waiting for
            try:
                self.results.get_nowait()
            except queue.Empty:
                return None, False
            self.busy = False
        self.requests.put(pid)
        self.busy = True
        try:
            result = self.results.get(timeout=CMDLINE_WAIT)
        except queue.Empty:
            return None, False
        self.busy = False
        return result


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


def _fd_link(fd: int) -> bytes:
    return b"/proc/self/fd/%d" % fd


_NOT_THERE = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.ELOOP, errno.ENAMETOOLONG,
                        errno.ESTALE})


def _open_path(path: bytes) -> int | None:
    """An O_PATH fd of what `path` names now; None when it names nothing we may reach (a
    NUL in it included: no file has one)."""
    try:
        return os.open(path, os.O_PATH | os.O_CLOEXEC)
    except ValueError:
        return None
    except OSError as exc:
        if exc.errno in _NOT_THERE:
            return None
        raise


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
    """Who the blocked thread's process is.  None of these reads takes the writer's mm lock
    (its cmdline does: _Cmdlines)."""
    pid, start, comm, exe = tid, 0, None, None
    try:
        pid = _tgid(_read_small(b"/proc/%d/status" % tid)) or tid
        stat = parse_stat(_read_small(b"/proc/%d/stat" % pid))
        start, comm = stat.start_time, stat.comm
        exe = os.readlink(b"/proc/%d/exe" % pid)
    except (OSError, ValueError):
        pass  # gone, or a kernel thread without exe: what was read is kept
    return _Writer(pid, start, comm, exe)
