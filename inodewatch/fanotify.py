"""fanotify(7) through ctypes: a group, inode marks, its event records and the answers.

Only what the guard (inodewatch.guard) uses: permission events on inode marks, the event's fd
and pid, and the response.  `parse_events` and `response` are pure (bytes in, records out);
`init`, `mark`, `read_events` and `respond` are the system calls, raising OSError with the
kernel's errno.  The standard library has no fanotify: libc's wrappers are called through
ctypes (glibc has had both since 2.13).

Facts measured on Linux 6.18 (x86_64) and relied on here:

- A listener may choose the opener's errno (`deny(errno)`, FAN_DENY_ERRNO, Linux 6.14) only in
  a FAN_CLASS_PRE_CONTENT group; a FAN_CLASS_CONTENT group's write of such an answer fails
  with EINVAL (and the event stays pending until a valid answer is written).  FAN_OPEN_PERM
  marks work in either class.
- FAN_REPORT_TID (Linux 4.20) makes `pid` the opener's thread, whose /proc/TID/syscall tells
  what it is blocked in.
- Reading the group's fd opens one new fd per event (the file the event is about); a read
  that cannot (EMFILE) fails, and the kernel then denies that permission event itself.
"""

from __future__ import annotations

import ctypes
import os
import struct
from typing import NamedTuple

# fanotify_init(2) flags (include/uapi/linux/fanotify.h)
FAN_CLOEXEC = 0x00000001
FAN_NONBLOCK = 0x00000002
FAN_CLASS_CONTENT = 0x00000004
FAN_CLASS_PRE_CONTENT = 0x00000008
FAN_UNLIMITED_QUEUE = 0x00000010
FAN_REPORT_TID = 0x00000100

# fanotify_mark(2) flags; an inode mark is FAN_MARK_INODE, i.e. no object flag
FAN_MARK_ADD = 0x00000001
FAN_MARK_REMOVE = 0x00000002
FAN_MARK_DONT_FOLLOW = 0x00000004
FAN_MARK_FLUSH = 0x00000080

# event mask bits
FAN_Q_OVERFLOW = 0x00004000
FAN_OPEN_PERM = 0x00010000
FAN_ACCESS_PERM = 0x00020000
FAN_OPEN_EXEC_PERM = 0x00040000
FAN_PRE_ACCESS = 0x00100000
PERMISSION_EVENTS = FAN_OPEN_PERM | FAN_ACCESS_PERM | FAN_OPEN_EXEC_PERM | FAN_PRE_ACCESS

# answers
FAN_ALLOW = 0x01
FAN_DENY = 0x02
_ERRNO_SHIFT = 24  # FAN_DENY_ERRNO(err) = FAN_DENY | err << 24
_ERRNO_MASK = 0xFF

FAN_NOFD = -1
AT_FDCWD = -100
METADATA_VERSION = 3

# struct fanotify_event_metadata: event_len u32, vers u8, reserved u8, metadata_len u16,
# mask u64 (8-aligned), fd s32, pid s32 -- 24 bytes, native byte order
_METADATA = struct.Struct("=IBBHQii")
METADATA_LEN = _METADATA.size
# struct fanotify_response: fd s32, response u32
_RESPONSE = struct.Struct("=iI")

# A read fills at most this many records: each costs the reader an fd until it is answered
# and closed, so a burst of opens must not take a daemon near its fd limit.
READ_EVENTS = 64


class Event(NamedTuple):
    """One event record."""

    mask: int
    fd: int  # an fd of the file, opened for the reader; FAN_NOFD for an overflow
    pid: int  # the opener's pid, its thread id under FAN_REPORT_TID; 0 outside our pid namespace

    @property
    def is_permission(self) -> bool:
        return bool(self.mask & PERMISSION_EVENTS)


class FormatError(ValueError):
    """Event records not in the layout this module knows."""


def parse_events(data: bytes) -> list[Event]:
    """The event records in what one read of the group's fd returned.  Records of another
    metadata version, or lengths that do not add up, raise FormatError: then nothing in the
    buffer can be trusted (records after a bad length could be read anywhere)."""
    events = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < METADATA_LEN:
            raise FormatError(f"{len(data) - offset} bytes left, less than one record")
        event_len, version, _, metadata_len, mask, fd, pid = _METADATA.unpack_from(data, offset)
        if version != METADATA_VERSION:
            raise FormatError(f"metadata version {version}, not {METADATA_VERSION}")
        if metadata_len < METADATA_LEN or event_len < metadata_len or offset + event_len > len(data):
            raise FormatError(f"record of {event_len} bytes (metadata {metadata_len}) at {offset}")
        events.append(Event(mask, fd, pid))
        offset += event_len  # info records (fid, pidfd) follow the metadata: skipped
    return events


def deny(error: int | None = None) -> int:
    """The answer that refuses: plain FAN_DENY (the opener gets EPERM), or with `error` as
    the opener's errno (FAN_DENY_ERRNO; only a pre-content group may send it)."""
    if error is None:
        return FAN_DENY
    if not 0 < error <= _ERRNO_MASK:
        raise ValueError(f"errno {error} does not fit an answer")
    return FAN_DENY | error << _ERRNO_SHIFT


def response(fd: int, answer: int) -> bytes:
    """struct fanotify_response for the event whose fd is `fd`."""
    return _RESPONSE.pack(fd, answer)


# --- the system calls -----------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_fanotify_init = _libc.fanotify_init
_fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
_fanotify_init.restype = ctypes.c_int
_fanotify_mark = _libc.fanotify_mark
_fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
_fanotify_mark.restype = ctypes.c_int


def _raise(what: str, path: bytes | None = None) -> None:
    code = ctypes.get_errno()
    if path is None:
        raise OSError(code, f"{what}: {os.strerror(code)}")
    raise OSError(code, f"{what}: {os.strerror(code)}", path)


def init(flags: int, event_f_flags: int = os.O_RDONLY | os.O_CLOEXEC | os.O_LARGEFILE) -> int:
    """fanotify_init(2): a new group's fd.  Raises OSError (EPERM without CAP_SYS_ADMIN,
    EINVAL for flags this kernel does not know, ENOSYS without fanotify)."""
    fd = _fanotify_init(flags, event_f_flags)
    if fd < 0:
        _raise("fanotify_init")
    return fd


def mark(fd: int, flags: int, mask: int, path: bytes | None, dirfd: int = AT_FDCWD) -> None:
    """fanotify_mark(2) on the inode at `path` (None with FAN_MARK_FLUSH).  Raises OSError:
    ENOENT when nothing is at the path, ENOENT too when removing a mark there is none of."""
    if _fanotify_mark(fd, flags, mask, dirfd, path) < 0:
        _raise("fanotify_mark", path)


def read_events(fd: int, count: int = READ_EVENTS) -> list[Event]:
    """The records pending on a non-blocking group fd, at most `count` ([] when none)."""
    try:
        data = os.read(fd, count * METADATA_LEN)
    except BlockingIOError:
        return []
    return parse_events(data)


def respond(fd: int, event_fd: int, answer: int) -> None:
    """Answer the permission event whose fd is `event_fd`.  Raises OSError: EINVAL for an
    answer the group may not send, ENOENT when the event is no longer pending (the opener
    was killed meanwhile)."""
    os.write(fd, response(event_fd, answer))
