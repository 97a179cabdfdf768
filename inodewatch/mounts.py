"""The mounts we must not touch: FUSE and network file systems in a process's mount namespace.

A stat (or open, or path walk) on such a mount is answered by a process or a server: a FUSE
daemon whose getattr never returns (any user may mount one with allow_other when
/etc/fuse.conf says user_allow_other) or a dead NFS server leaves the caller in D state,
for good.  So a held file on such a mount is never stat'ed, neither by its path nor through
/proc/PID/map_files or fd/N (a readlink there is d_path only and safe; a stat is not): it is
reported as not looked at.

`parse_mountinfo` is pure and works on captured /proc/PID/mountinfo text; `table_of` reads
it, once per mount namespace, and again only when the kernel says that namespace's mounts
changed (poll on an open mountinfo flags POLLPRI after a mount or unmount).
"""

from __future__ import annotations

import errno
import os
import re
import select
import stat
from collections import namedtuple

# fstypes whose every answer comes from a process or over the network (fuse.* covers sshfs,
# s3fs, rclone, gvfsd-fuse...; virtiofs is FUSE's protocol to the host).
UNTRUSTED_TYPES = frozenset({
    b"fuse", b"fuseblk", b"virtiofs", b"nfs", b"nfs4", b"cifs", b"smb3", b"smbfs", b"9p",
    b"ceph", b"glusterfs", b"afs", b"ncpfs", b"lustre", b"coda", b"orangefs", b"pvfs2",
    b"gpfs", b"beegfs", b"ocfs2", b"gfs2", b"davfs",
})

# mountinfo escapes space, tab, newline and backslash (and nothing else) as \ooo.  This and
# _MNT_ID are left to re's own cache, compiled at first use: every scan would pay a compile.
_OCTAL = rb"\\([0-7]{3})"

# Mount tables kept open at once (one fd each): a host has few mount namespaces, a container
# host maybe hundreds; beyond this the oldest is closed and read again when needed.
MAX_TABLES = 64


class Mount(namedtuple("Mount", "mount_id dev point fstype")):
    """One line of mountinfo: mount_id: int; dev: int (os.makedev of its major:minor, as
    st_dev and maps' field show it); point: bytes, unescaped, relative to the process's
    root; fstype: bytes, e.g. b"fuse.sshfs"."""

    __slots__ = ()

    def describe(self) -> bytes:
        """The mount as an operator reads it: "/mnt/x (fuse.sshfs)" (still bytes: data)."""
        return self.point + b" (" + self.fstype + b")"


class MountTable(namedtuple("MountTable", "by_dev by_id points")):
    """A namespace's untrusted mounts: by_dev: dict[int, Mount]; by_id: dict[int, Mount];
    points: tuple[Mount, ...], longest mount point first.  Empty on the common host, and
    then every check is one falsy test."""

    __slots__ = ()

    def covering(self, path: bytes) -> Mount | None:
        """The untrusted mount `path` lies on or walks through, if any.  Not only the longest
        prefix: a path walk through a FUSE directory asks its server too, even on its way to
        a trusted mount below it."""
        for mount in self.points:
            point = mount.point
            if path == point or path.startswith(point if point.endswith(b"/") else point + b"/"):
                return mount
        return None


NO_MOUNTS = MountTable({}, {}, ())


def unescape(field: bytes) -> bytes:
    if b"\\" not in field:
        return field  # nearly every field: no regex at all
    return re.sub(_OCTAL, lambda m: bytes([int(m.group(1), 8) & 0xFF]), field)


def is_untrusted(fstype: bytes) -> bool:
    return fstype in UNTRUSTED_TYPES or fstype.startswith(b"fuse.")


def parse_mountinfo(data: bytes) -> list[Mount]:
    """Every mount of /proc/PID/mountinfo text (proc(5)): "36 35 98:0 /root /mnt/point
    rw,noatime master:1 - ext3 /dev/root rw"; lines not in that format are skipped."""
    mounts = []
    for line in data.split(b"\n"):
        fields = line.split(b" ")
        try:
            dash = fields.index(b"-", 6)
            major, minor = fields[2].split(b":")
            mounts.append(Mount(int(fields[0]), os.makedev(int(major), int(minor)),
                                unescape(fields[4]), unescape(fields[dash + 1])))
        except (ValueError, IndexError):
            continue
    return mounts


def untrusted_table(mounts: list[Mount]) -> MountTable:
    bad = [m for m in mounts if is_untrusted(m.fstype)]
    if not bad:
        return NO_MOUNTS
    return MountTable({m.dev: m for m in bad}, {m.mount_id: m for m in bad},
                      tuple(sorted(bad, key=lambda m: len(m.point), reverse=True)))


# --- I/O ----------------------------------------------------------------------------------


class _Open(namedtuple("_Open", "fd poller table")):
    """A namespace's mountinfo kept open (fd), the poll registered on it, its table."""

    __slots__ = ()


_tables: dict[bytes, _Open] = {}


def table_of(pid: int, namespace: bytes) -> MountTable:
    """The untrusted mounts of `pid`'s mount namespace (`namespace`: the readlink of
    /proc/PID/ns/mnt, the cache key).  NO_MOUNTS when its mountinfo cannot be read (the
    process is gone: its caller finds out)."""
    cached = _tables.get(namespace)
    if cached is not None:
        if not cached.poller.poll(0):  # one syscall: has a mount or unmount happened?
            return cached.table
        del _tables[namespace]  # mounted or unmounted since: read it again, below
        os.close(cached.fd)
    try:
        fd = os.open(f"/proc/{pid}/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return NO_MOUNTS
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    except OSError:
        os.close(fd)
        return NO_MOUNTS
    table = untrusted_table(parse_mountinfo(b"".join(chunks)))
    if len(_tables) >= MAX_TABLES:
        os.close(_tables.pop(next(iter(_tables))).fd)
    poller = select.poll()
    poller.register(fd, select.POLLPRI)
    _tables[namespace] = _Open(fd, poller, table)
    return table


# Symlinks followed in one walk at most, as the kernel's own limit (ELOOP beyond).
MAX_LINKS = 40

_MNT_ID = rb"(?m)^mnt_id:\s*(\d+)"


def mount_id_of(fdinfo: str | bytes) -> int | None:
    """The mnt_id line of an fdinfo file: the mount the descriptor's file is on."""
    with open(fdinfo, "rb", buffering=0) as info:
        match = re.search(_MNT_ID, info.read(4096))
    return int(match.group(1)) if match is not None else None


class Untrusted(Exception):
    """The walk reached a FUSE or network mount (args[0]: the Mount)."""


def stat_beside(root: bytes, path: bytes, table: MountTable) -> os.stat_result:
    """os.stat(root + path), in a namespace that has untrusted mounts, without ever touching
    one: the path is walked one component at a time (openat with O_PATH | O_NOFOLLOW, each
    from the descriptor of the directory before it, so no swapped component can redirect
    it), every step's mount read from its fdinfo before anything asks its file system, and
    symlinks resolved here.  A plain stat would follow a symlink an attacker planted on her
    own path into her FUSE mount.  Raises Untrusted, or OSError as os.stat does."""
    fd = open_beside(root, path, table)
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


def open_beside(root: bytes, path: bytes, table: MountTable, follow_last: bool = True) -> int:
    """An O_PATH descriptor of root + path, walked as stat_beside walks it (the caller
    closes it); with follow_last False, a symlink as the last component is not followed
    (the descriptor is the symlink's, as O_PATH | O_NOFOLLOW gives it).  Its file system
    has been asked nothing but lookups on trusted mounts: reopen it for reading through
    /proc/self/fd/N.  Raises Untrusted, or OSError."""
    fds = [os.open(root or b"/", os.O_PATH | os.O_CLOEXEC)]  # the directories walked, root first
    try:
        _check(fds[-1], table)
        todo = path.split(b"/")[::-1]  # components still to walk, the next one last
        links = 0
        while todo:
            name = todo.pop()
            if name in (b"", b"."):
                continue
            if name == b"..":
                if len(fds) > 1:
                    os.close(fds.pop())
                continue
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fds[-1])
            try:
                _check(fd, table)
                st = os.fstat(fd)  # on a trusted mount: answered by the kernel's own file system
            except BaseException:
                os.close(fd)
                raise
            if not stat.S_ISLNK(st.st_mode) or (not todo and not follow_last):
                fds.append(fd)
                if todo and not stat.S_ISDIR(st.st_mode):
                    raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
                continue
            try:
                target = os.readlink(b"", dir_fd=fd)
            finally:
                os.close(fd)
            links += 1
            if links > MAX_LINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
            if target.startswith(b"/"):
                while len(fds) > 1:
                    os.close(fds.pop())
            todo.extend(target.split(b"/")[::-1])
        return fds.pop()
    finally:
        for fd in fds:
            os.close(fd)


def check_fd(fd: int, table: MountTable) -> None:
    """Raise Untrusted if the file open as `fd` (O_PATH is enough) is on an untrusted mount."""
    if table.by_id:
        _check(fd, table)


def _check(fd: int, table: MountTable) -> None:
    mount = table.by_id.get(mount_id_of(f"/proc/self/fdinfo/{fd}") or -1)
    if mount is not None:
        raise Untrusted(mount)


