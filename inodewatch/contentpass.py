"""Content identity of findings: does the process run what is on disk?

A `deleted` or `replaced` finding (mapping or fd) says the inode changed.  `ContentPass.judge`
adds whether the content changed too (`model.Content`): the held inode's GNU build-id (read
through /proc/PID/map_files/RANGE, which reaches a deleted file too, or /proc/PID/fd/N)
against the build-id of the file now at the path; where neither has one, their sizes, and
if those agree a BLAKE2b-256 of both (`inodewatch.content`).  "identical" means the process
runs exactly what is on disk (a reinstall of the same bytes): no restart needed.  "unknown":
nothing at the path, unreadable, one file with a build-id and the other without, or a hash
over budget.

Cost.  Only findings are ever read, each inode at most once per pass (one ContentPass: a
scan, or one look of the daemon at a target), a pair of inodes judged once: a library an
upgrade replaced under 300 processes is read once, not 300 times.  A build-id costs a few
small preads (at most content.ELF_READ_CAP bytes); a hash reads the whole file, so no file
larger than `file_budget` is hashed, nor more than `pass_budget` bytes in all (then
"unknown"): a user's process holding big deleted files can cost a pass that much, no more.

Safety.  Nothing is opened by a name a user could redirect into a FUSE or network mount, or
onto a device: both files are opened O_PATH first (a /proc magic link jumps to the inode
itself; the path is opened O_NOFOLLOW, and in a namespace with untrusted mounts walked one
component at a time, `mounts.open_beside`), the mount checked and the inode fstat'ed (a
regular file, the inode expected), and only then reopened for reading through
/proc/self/fd/N, O_NONBLOCK, with pread alone.
"""

from __future__ import annotations

import os
import stat
from collections import namedtuple
from collections.abc import Callable

from inodewatch import content, mounts
from inodewatch.model import Content, FileId, Finding
from inodewatch.procfs import proc_path, range_name

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing for the checkers only: every scan would pay its import (~6 ms)
    from typing import Any

# The findings whose content is compared: the others name no second file (renamed: the
# inode is intact under a new name; missing: nothing at the path).
JUDGED_KINDS = frozenset({"deleted", "replaced"})

# Bytes hashed in one pass at most, all files together (each at most content.HASH_BUDGET).
PASS_HASH_BUDGET = 256 * 1024 * 1024


class Side(namedtuple("Side", "file size build_id reason")):
    """One inode of a comparison, as read: file: FileId | None (None: nothing was opened);
    size: int | None; build_id: str | None (hex); reason: str | None, why it could not be
    read (then nothing else is known)."""

    __slots__ = ()


Opener = Callable[[], int]  # an O_PATH descriptor of the file, mount-checked; raises OSError


class ContentPass:
    """The content judgments of one pass, with its caches and its hash budget."""

    def __init__(self, file_budget: int = content.HASH_BUDGET,
                 pass_budget: int = PASS_HASH_BUDGET) -> None:
        self.file_budget = file_budget
        self.budget_left = pass_budget
        self.sides: dict[FileId, Side] = {}
        self.digests: dict[FileId, content.ContentId] = {}
        self.verdicts: dict[tuple[FileId, FileId], Content] = {}
        # (held inode, path as the process sees it) -> its judgment: `rm; cp` or `mv` over
        # is a deleted and a replaced finding of one held inode at one path
        self.judged: dict[tuple[FileId, bytes], Content] = {}

    def judge(self, pid: int, finding: Finding, root: bytes = b"",
              table: mounts.MountTable = mounts.NO_MOUNTS) -> Finding:
        """`finding` with its content judged, if it is of a judged kind (else as it is).
        `root` and `table`: the process's view of paths (procfs.DiskView's root and mounts)."""
        if finding.kind not in JUDGED_KINDS:
            return finding
        if finding.subject == "mapping":
            if finding.vma is None:
                return finding
            link = proc_path(pid, b"map_files", range_name(finding.vma))
        else:
            link = proc_path(pid, b"fd", str(finding.fd).encode())
        path = root + finding.path
        if (finding.mapped, path) in self.judged:
            return finding._replace(content=self.judged[finding.mapped, path])

        def open_disk() -> int:
            if table.points:
                return mounts.open_beside(root, finding.path, table, follow_last=False)
            return os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)

        def open_held() -> int:
            fd = os.open(link, os.O_PATH | os.O_CLOEXEC)  # a magic link: to the inode itself
            try:
                mounts.check_fd(fd, table)
            except BaseException:
                os.close(fd)
                raise
            return fd

        found = self.judged[finding.mapped, path] = self._judge(finding, open_held, open_disk)
        return finding._replace(content=found)

    def _judge(self, finding: Finding, open_held: Opener, open_disk: Opener) -> Content:
        disk = self._side(open_disk, finding.disk)
        if disk.reason is not None:  # nothing at the path (rm alone): nothing to read of the held
            return Content(content.UNKNOWN, None, None, disk.reason)
        held = self._side(open_held, finding.mapped)
        if held.file is None:
            return Content(content.UNKNOWN, None, None, held.reason)
        key = (held.file, disk.file)
        if key not in self.verdicts:
            self.verdicts[key] = self._compare(held, open_held, disk, open_disk)
        return self.verdicts[key]

    def _side(self, opener: Opener, expected: FileId | None) -> Side:
        """The inode `opener` reaches (it must be `expected`, when given), read once a pass."""
        if expected is not None and expected in self.sides:
            return self.sides[expected]
        try:
            fd = opener()
        except (OSError, mounts.Untrusted) as exc:
            return Side(None, None, None, _why(exc))
        try:
            st = os.fstat(fd)
            file = FileId.of(st)
            if expected is not None and file.ino != expected.ino:
                return Side(None, None, None, "changed since it was looked at")
            if file in self.sides:
                return self.sides[file]
            if stat.S_ISLNK(st.st_mode):
                side = Side(file, None, None, "a symlink, not followed")
            elif not stat.S_ISREG(st.st_mode):
                side = Side(file, None, None, "not a regular file")
            else:
                side = Side(file, st.st_size, _read(fd, content.build_id_of_fd, st.st_size), None)
        except OSError as exc:
            return Side(None, None, None, f"cannot read: {exc.strerror or type(exc).__name__}")
        finally:
            os.close(fd)
        self.sides[file] = side
        return side

    def _compare(self, held: Side, open_held: Opener, disk: Side, open_disk: Opener) -> Content:
        ids = (held.build_id, disk.build_id)
        reason = held.reason or disk.reason
        if reason is not None:
            verdict, reason = content.UNKNOWN, reason
        elif None not in ids:
            verdict = content.IDENTICAL if held.build_id == disk.build_id else content.DIFFERENT
        elif ids != (None, None):
            verdict, reason = content.UNKNOWN, "one file has a build-id, the other none"
        elif held.size != disk.size:
            verdict = content.DIFFERENT  # no hash needed: bytes of two sizes differ
        else:
            a, b = self._digest(held, open_held), self._digest(disk, open_disk)
            verdict = content.compare(a, b)
            reason = a.reason or b.reason if verdict == content.UNKNOWN else None
        return Content(verdict, held.build_id, disk.build_id, reason)

    def _digest(self, side: Side, opener: Opener) -> content.ContentId:
        """The hash of a side without a build-id, within the budgets, once a pass."""
        assert side.file is not None and side.size is not None
        if side.file in self.digests:
            return self.digests[side.file]
        if side.size <= self.file_budget:  # a larger one is refused unread, below
            if side.size > self.budget_left:
                return content.ContentId(None, None, "the pass's hash budget is spent")
            self.budget_left -= side.size
        try:
            fd = opener()
        except (OSError, mounts.Untrusted) as exc:
            return content.ContentId(None, None, _why(exc))
        try:
            st = os.fstat(fd)
            if FileId.of(st) != side.file:
                found = content.ContentId(None, None, "changed since it was looked at")
            else:
                found = _read(fd, content.digest_of_fd, st.st_size, self.file_budget)
        except OSError as exc:
            found = content.ContentId(None, None, f"cannot read: {exc.strerror or type(exc).__name__}")
        finally:
            os.close(fd)
        self.digests[side.file] = found
        return found


def _why(exc: OSError | mounts.Untrusted) -> str:
    """Why a file could not be opened, as a content_reason (no name in it: names are data)."""
    if isinstance(exc, mounts.Untrusted):
        return "on a FUSE or network mount"
    if isinstance(exc, FileNotFoundError):
        return "nothing at the path"
    return f"cannot open: {exc.strerror or type(exc).__name__}"


def _read(opath: int, reader: Callable[..., Any], *args: Any) -> Any:
    """reader(fd, *args) on the file an O_PATH descriptor holds, reopened for reading
    through /proc/self/fd (no path walked again).  Raises OSError."""
    fd = os.open(f"/proc/self/fd/{opath}",
                 os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        return reader(fd, *args)
    finally:
        os.close(fd)

