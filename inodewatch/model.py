"""Plain data about a process's files, and the pure comparison that finds divergence.

Nothing here does I/O: `procfs` reads the kernel's view, the callers stat the disk, and
`find_divergence` compares the two.  Paths are `bytes` throughout, exactly as the kernel
reports them; turning them into text is the renderers' job.

The records are `collections.namedtuple`s (as psutil's), their fields' types in their
docstrings: every `scan` pays its imports at start-up, and `dataclasses` (inspect, ast:
~10 ms) or `typing.NamedTuple` (typing: ~6 ms) would cost it more than the scan of a small
host; a scan also builds thousands of these, where a frozen dataclass's __init__ costs
several times a tuple's.
"""

from __future__ import annotations

import os
from collections import namedtuple
from collections.abc import Callable, Iterable, Sequence

# Names the kernel gives to files that were never reachable through a path: shared memory,
# memfd, SysV segments, DRM buffers.  They always read "(deleted)" and are never a stale
# shared object.  Under /dev/ live IPC and devices (POSIX shm segments in /dev/shm, shared
# mappings of /dev/zero, device memory): not a file on disk, except code (see runs_code).
DEVICE_DIR = b"/dev/"
PSEUDO_PREFIXES: tuple[bytes, ...] = (
    b"/memfd:",
    b"/SYSV",
    DEVICE_DIR,
    b"/anon_hugepage",
    b"/[aio]",
    b"/drm mm object",
    b"/i915",
    b"/kfd",
    b"/dmabuf:",
    b"/proc/",
    b"/sys/",
)

DELETED_SUFFIX = b" (deleted)"


class FileId(namedtuple("FileId", "dev ino")):
    """An inode: the pair the kernel uses to tell files apart (dev, ino: int)."""

    __slots__ = ()

    @classmethod
    def of(cls, st: os.stat_result) -> FileId:
        return cls(st.st_dev, st.st_ino)

    @property
    def dev_text(self) -> str:
        """The device as /proc/PID/maps prints it, e.g. "fe:00"."""
        return f"{os.major(self.dev):02x}:{os.minor(self.dev):02x}"


class MappedFile(namedtuple("MappedFile", "path file perms deleted size mtime_ns vma",
                            defaults=(None, None, None))):
    """One file mapped by a process: all its VMAs grouped into one (dev, inode).

    path: bytes, the kernel's current name for it, without a " (deleted)" it added;
    file: FileId; perms: tuple[str, ...], every distinct permission string, e.g. ("r--p",
    "r-xp"); deleted: bool, the inode has no link left on disk; size, mtime_ns: int | None;
    vma: bytes | None, one VMA's range as maps prints it (b"7f1c2d400000-7f1c2d401000"):
    where /proc/PID/map_files/ reaches the inode itself.
    """

    __slots__ = ()


class OpenFile(namedtuple("OpenFile", "fd path file deleted size", defaults=(None,))):
    """One regular file held open by a process (fd: int, path: bytes, file: FileId,
    deleted: bool, size: int | None)."""

    __slots__ = ()


class Content(namedtuple("Content", "verdict mapped_build_id disk_build_id reason")):
    """What a process runs compared with what is on disk (see inodewatch.contentpass):
    verdict: str, "identical", "different" or "unknown"; mapped_build_id, disk_build_id:
    str | None, the GNU build-ids (hex) where the files have one; reason: str | None, why
    the verdict is unknown."""

    __slots__ = ()

    def fields(self) -> dict[str, object]:
        out: dict[str, object] = {"content": self.verdict}
        if self.mapped_build_id is not None:
            out["mapped_build_id"] = self.mapped_build_id
        if self.disk_build_id is not None:
            out["disk_build_id"] = self.disk_build_id
        if self.reason is not None:
            out["content_reason"] = self.reason
        return out


IDENTICAL = "identical"
UNKNOWN = "unknown"


class Finding(namedtuple("Finding", "subject kind path mapped disk new_path perms fd vma content "
                                    "package", defaults=(None, None, (), None, None, None, None))):
    """One way in which what a process holds differs from what is on disk.

    subject: str, "mapping" or "fd"; kind: str, "deleted" (the held inode has no link
    left), "replaced" (the path names another inode), "missing" (nothing is at the path, but
    the inode still has links elsewhere), "renamed" (the inode now lives under new_path) or
    "duplicated" (the process maps this inode and, at the same path, the one on disk: two
    versions loaded at once); path: bytes; mapped: FileId, the held inode; disk: FileId |
    None, what the path names now; new_path: bytes | None; perms: tuple[str, ...]; fd: int |
    None; vma: bytes | None, a mapping's range (MappedFile.vma); content: Content | None,
    once judged (deleted and replaced findings); package: packages.Package | None, the
    package owning the path (scan only, a process in the host's mount namespace).
    """

    __slots__ = ()

    @property
    def event(self) -> str:
        return f"{self.subject}.{self.kind}"

    @property
    def level(self) -> str:
        """Its event's level: a warning, but info when the content is identical."""
        return "warning" if self.needs_restart else "info"

    @property
    def needs_restart(self) -> bool:
        """False only when the process runs exactly what is on disk (identical content):
        the inode changed, the code did not."""
        return self.content is None or self.content.verdict != IDENTICAL

    def fields(self) -> dict[str, object]:
        """Its event's fields (inodewatch/events.py), paths still as bytes."""
        if self.kind == "duplicated":
            return {"path": self.path, "old_ino": self.mapped.ino,
                    "new_ino": self.disk.ino if self.disk is not None else None,
                    "perms": ",".join(self.perms)}
        out: dict[str, object] = {"path": self.path}
        if self.fd is not None:
            out["fd"] = self.fd
        if self.new_path is not None:
            out["new_path"] = self.new_path
        out["mapped_dev"] = self.mapped.dev_text
        out["mapped_ino"] = self.mapped.ino
        if self.disk is not None:
            out["disk_dev"] = self.disk.dev_text
            out["disk_ino"] = self.disk.ino
        if self.perms:
            out["perms"] = ",".join(self.perms)
        if self.content is not None:
            out.update(self.content.fields())
        if self.package is not None:
            out.update(self.package.fields())
        return out


def is_pseudo_path(path: bytes) -> bool:
    """True for names that are not files on a real file system (never reported)."""
    return not path.startswith(b"/") or path.startswith(PSEUDO_PREFIXES)


def runs_code(perms: Iterable[str]) -> bool:
    """Whether a file's VMAs (their maps permissions, e.g. "r-xp") include a private
    executable one, as the loader maps every object it loads.  That makes a file under /dev/
    code like anywhere else: a library copied to /dev/shm (tmpfs), dlopen'ed, then deleted.
    POSIX shm data, /dev/zero and devices are mapped shared or without exec; so is the
    double mapping of a JIT or of libffi's closures (one file, mapped rw-s and r-xs)."""
    return any(p[2:4] == "xp" for p in perms)


def same_file(held: FileId, on_disk: FileId) -> bool:
    """Whether the inode on disk is the one held.

    A device-only difference with the same inode number is treated as the same file:
    overlayfs before Linux 6.8 and btrfs subvolumes report different st_dev for one file,
    and calling that "replaced" is the peers' most common false positive.
    """
    return held.ino == on_disk.ino


DiskLookup = Callable[[bytes], FileId | None]


def intact(held: FileId, deleted: bool, disk: FileId | None, expected: bytes, path: bytes) -> bool:
    """Nothing to say (compare gives []): the file is at the path it was opened from, as
    named now.  Asked alone first for nearly every file of a scan, it spares the call to
    compare with its keywords (5,000 processes: ~20,000 calls)."""
    return disk is not None and not deleted and expected == path and same_file(held, disk)


def compare(
    subject: str,
    path: bytes,
    held: FileId,
    deleted: bool,
    disk: FileId | None,
    *,
    perms: tuple[str, ...] = (),
    fd: int | None = None,
    first_path: bytes | None = None,
    vma: bytes | None = None,
) -> list[Finding]:
    """Compare one held file with what is on disk at the path it was opened from.

    `path` is the kernel's current name; `first_path` the name the file had when we first
    saw it (the daemon knows it; a one-shot scan does not), and `disk` what is now at that
    first path (or at `path`, without one).
    """
    expected = first_path if first_path is not None else path
    if intact(held, deleted, disk, expected, path):
        return []  # nearly every file of every process: decided without building anything
    still_there = disk is not None and same_file(held, disk)
    common = {"mapped": held, "perms": perms, "fd": fd, "vma": vma}
    found: list[Finding] = []
    if deleted:
        found.append(Finding(subject, "deleted", expected, **common))
    elif expected != path and not still_there:
        found.append(Finding(subject, "renamed", expected, new_path=path, **common))
    if disk is not None and not still_there:
        found.append(Finding(subject, "replaced", expected, disk=disk, **common))
    elif disk is None and not deleted and expected == path:
        found.append(Finding(subject, "missing", expected, **common))
    return found


def find_divergence(
    mapped: Sequence[MappedFile],
    open_files: Iterable[OpenFile],
    disk: DiskLookup,
    first_paths: dict[FileId, bytes] | None = None,
) -> list[Finding]:
    """Every finding for one process; `disk` says what inode a path names now."""
    first_paths = first_paths or {}
    found: list[Finding] = []
    for m in mapped:
        expected = first_paths.get(m.file, m.path)
        if not intact(m.file, m.deleted, on_disk := disk(expected), expected, m.path):
            found += compare("mapping", m.path, m.file, m.deleted, on_disk,
                             perms=m.perms, first_path=expected, vma=m.vma)
    if found:
        found += duplicates(mapped, [f for f in found if f.kind == "replaced"], first_paths)
    for f in open_files:
        expected = first_paths.get(f.file, f.path)
        if not intact(f.file, f.deleted, on_disk := disk(expected), expected, f.path):
            found += compare("fd", f.path, f.file, f.deleted, on_disk, fd=f.fd,
                             first_path=expected)
    return found


def duplicates(mapped: Sequence[MappedFile], replaced: list[Finding],
               first_paths: dict[FileId, bytes]) -> list[Finding]:
    """Two versions loaded at once: a mapping replaced on disk (`replaced`, its findings)
    whose new file the process maps too, under the same path (nginx reloaded with its
    load_module spelled otherwise: glibc matches no loaded object by the new name, and loads
    the new file beside the old one).  One finding per older inode; only a process with a
    replaced mapping pays for the look."""
    if not replaced:
        return []
    at = {(first_paths.get(m.file, m.path), m.file.ino) for m in mapped}
    return [Finding("mapping", "duplicated", f.path, f.mapped, f.disk, perms=f.perms, vma=f.vma)
            for f in replaced if f.disk is not None and (f.path, f.disk.ino) in at]
