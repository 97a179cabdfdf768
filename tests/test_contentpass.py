"""The content comparison of findings (inodewatch.contentpass) on real files held by this
very process: through /proc/self/map_files (a mapping of a deleted file) and /proc/self/fd;
the path replaced by identical bytes, other bytes, another size, a symlink, a FIFO, nothing;
each inode read once a pass; the hash budgets; a mount the pass must not touch."""

from __future__ import annotations

import mmap
import os
import shutil
from pathlib import Path

import pytest

from conftest import CSRC, content_identity
from inodewatch import content, contentpass, mounts
from inodewatch.contentpass import ContentPass
from inodewatch.model import FileId, Finding


@pytest.fixture
def held(tmp_path):
    """Factory: held(data) -> (path, fd) of a file this process holds open at `path`."""
    fds: list[int] = []

    def hold(data: bytes, name: str = "data.bin") -> tuple[Path, int]:
        path = tmp_path / name
        path.write_bytes(data)
        fds.append(os.open(path, os.O_RDONLY))
        return path, fds[-1]

    yield hold
    for fd in fds:
        os.close(fd)


def replaced(path: Path, fd: int, data: bytes | None) -> Finding:
    """Put `data` (None: nothing) at `path` as a new inode; the fd's finding."""
    mapped = FileId.of(os.fstat(fd))
    os.unlink(path)
    if data is not None:
        path.write_bytes(data)
    disk = FileId.of(os.stat(path)) if data is not None else None
    return Finding("fd", "replaced" if data is not None else "deleted", os.fsencode(path),
                   mapped, disk, fd=fd)


def verdict(f: Finding, judge: ContentPass | None = None) -> tuple[str, str | None]:
    judged = (judge or ContentPass()).judge(os.getpid(), f)
    return judged.content.verdict, judged.content.reason


def test_identical_bytes_are_identical_other_bytes_different(held):
    data = os.urandom(5000)
    path, fd = held(data)
    assert verdict(replaced(path, fd, data)) == ("identical", None)
    path, fd = held(data, "b.bin")
    other = bytearray(data)
    other[4000] ^= 1
    assert verdict(replaced(path, fd, bytes(other))) == ("different", None)


def test_another_size_is_different_without_hashing(held, monkeypatch):
    hashed = []
    monkeypatch.setattr(content, "digest_of_fd", lambda *a: hashed.append(a))
    path, fd = held(b"x" * 100)
    assert verdict(replaced(path, fd, b"x" * 101)) == ("different", None)
    assert hashed == []


def test_nothing_at_the_path_is_unknown_and_the_held_file_is_not_read(held):
    path, fd = held(b"log line\n")
    judge = ContentPass()
    assert verdict(replaced(path, fd, None), judge) == ("unknown", "nothing at the path")
    assert judge.sides == {}


def test_a_symlink_or_a_fifo_at_the_path_is_never_followed_nor_opened(held, tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"x" * 10)
    path, fd = held(b"x" * 10)
    f = replaced(path, fd, None)
    path.symlink_to(secret)  # what a user would plant to have root read another file
    assert verdict(f._replace(kind="replaced")) == ("unknown", "a symlink, not followed")
    path.unlink()
    os.mkfifo(path)  # an open for reading would block until a writer comes
    assert verdict(f._replace(kind="replaced")) == ("unknown", "not a regular file")


def test_the_path_changed_since_the_look_is_unknown(held, tmp_path):
    path, fd = held(b"abc")
    f = replaced(path, fd, b"abc")
    os.rename(path, tmp_path / "kept")  # kept: its inode number is not free to reuse
    path.write_bytes(b"abc")  # yet another inode: the finding's disk_ino no longer there
    assert verdict(f) == ("unknown", "changed since it was looked at")


def test_budgets_make_it_unknown_rather_than_a_long_read(held):
    data = os.urandom(4096)
    path, fd = held(data)
    f = replaced(path, fd, data)
    verdict_, reason = verdict(f, ContentPass(file_budget=4095))
    assert verdict_ == "unknown" and reason.startswith("no build-id and larger than")
    assert verdict(f, ContentPass(pass_budget=6000)) == ("unknown", "the pass's hash budget is spent")
    assert verdict(f, ContentPass(pass_budget=8192)) == ("identical", None)


def test_each_inode_is_read_once_a_pass(held, monkeypatch):
    reads = []
    real = content.build_id_of_fd
    monkeypatch.setattr(content, "build_id_of_fd", lambda fd, size: reads.append(size) or real(fd, size))
    data = os.urandom(3000)
    path, fd = held(data)
    f = replaced(path, fd, data)
    judge = ContentPass()
    # as `rm; cp` shows it: deleted and replaced, the same two inodes; and held twice
    for finding in (f._replace(kind="deleted", disk=None), f, f._replace(fd=os.dup(fd))):
        assert verdict(finding, judge) == ("identical", None)
    assert len(reads) == 2 and len(judge.digests) == 2


def test_a_mapping_of_a_deleted_elf_is_read_through_map_files(tmp_path, demo_build):
    """The demo's so1.so mapped here, deleted, and the path given so2.so (another build) or
    a copy of so1.so: different or identical by build-id, both build-ids told."""
    lib = tmp_path / "so.so"
    shutil.copyfile(CSRC / "so1.so", lib)
    with open(lib, "rb") as f:
        view = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    try:
        mapped = FileId.of(os.stat(lib))
        line = next(x for x in open("/proc/self/maps", "rb")
                    if x.rstrip().endswith(os.fsencode(lib) + b" (deleted)") or
                    x.rstrip().endswith(os.fsencode(lib)))
        vma = line.split()[0]
        so1 = content_identity(CSRC / "so1.so").build_id
        so2 = content_identity(CSRC / "so2.so").build_id
        for source, expected, disk_id in (("so2.so", "different", so2), ("so1.so", "identical", so1)):
            os.unlink(lib)
            shutil.copyfile(CSRC / source, lib)
            f = Finding("mapping", "replaced", os.fsencode(lib), mapped, FileId.of(os.stat(lib)),
                        perms=("r--s",), vma=vma)
            judged = ContentPass().judge(os.getpid(), f)
            assert judged.content == (expected, so1, disk_id, None)
            assert judged.fields()["content"] == expected
            assert (judged.fields()["mapped_build_id"], judged.fields()["disk_build_id"]) == (so1, disk_id)
    finally:
        view.close()


def test_nothing_on_an_untrusted_mount_is_opened_for_reading(held, tmp_path, monkeypatch):
    """The mount of tmp_path posing as a FUSE mount: the pass stops at the O_PATH step of
    both files (only the kernel's own lookups), and says why."""
    path, fd = held(b"abc")
    f = replaced(path, fd, b"abc")
    probe = os.open(tmp_path, os.O_PATH)
    try:
        mount_id = mounts.mount_id_of(f"/proc/self/fdinfo/{probe}")
    finally:
        os.close(probe)
    fuse = mounts.Mount(mount_id, os.stat(tmp_path).st_dev, b"/", b"fuse.sshfs")
    table = mounts.MountTable({fuse.dev: fuse}, {mount_id: fuse}, (fuse,))
    opened = []
    real_read = contentpass._read
    monkeypatch.setattr(contentpass, "_read", lambda *a: opened.append(a) or real_read(*a))
    judged = ContentPass().judge(os.getpid(), f, b"", table)
    assert (judged.content.verdict, judged.content.reason) == ("unknown", "on a FUSE or network mount")
    assert opened == []
