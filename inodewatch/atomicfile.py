"""A file replaced whole: a reader, or a restart after a crash, sees the old one or the new one.

The state file (inodewatch.state) and scan's dpkg index (inodewatch.packages) are written this
way.  Its own module, with nothing but `os`, because scan is on the start-up rule
(inodewatch/__init__.py): the index is rebuilt by a scan, and inodewatch.state pulls in
dataclasses and typing.
"""

from __future__ import annotations

import os


def write_atomic(path: str, data: bytes) -> None:
    """Replace `path` with `data`: a reader (or a restart after a crash) sees the old file or
    the new one, never half of one.  OSError on failure."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = path + ".tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, 0o600)
    except FileExistsError:
        # A leftover of a crash, or something planted: unlink removes the name itself (a
        # symlink, never what it points to), and O_EXCL refuses whatever appears meanwhile.
        os.unlink(tmp)
        fd = os.open(tmp, flags, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.rename(tmp, path)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)
