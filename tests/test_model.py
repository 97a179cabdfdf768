"""The pure comparison: a held file and the disk -> findings."""

from __future__ import annotations

from inodewatch.model import FileId, MappedFile, OpenFile, compare, find_divergence, is_pseudo_path, runs_code

HELD = FileId(0xFE00, 100)
NEW = FileId(0xFE00, 200)


def kinds(findings):
    return [f.kind for f in findings]


def test_intact_file_has_no_finding():
    assert compare("mapping", b"/a/so.so", HELD, False, HELD) == []


def test_deleted_then_replaced():
    found = compare("mapping", b"/a/so.so", HELD, True, NEW, perms=("r-xp",))
    assert kinds(found) == ["deleted", "replaced"]
    assert found[1].fields() == {"path": b"/a/so.so", "mapped_dev": "fe:00", "mapped_ino": 100,
                                 "disk_dev": "fe:00", "disk_ino": 200, "perms": "r-xp"}


def test_deleted_with_nothing_at_the_path():
    assert kinds(compare("mapping", b"/a/so.so", HELD, True, None)) == ["deleted"]


def test_linked_elsewhere_but_gone_from_its_path_is_missing():
    assert kinds(compare("mapping", b"/a/so.so", HELD, False, None)) == ["missing"]


def test_device_only_difference_is_the_same_file():
    # overlayfs before 6.8 and btrfs subvolumes report another st_dev for one inode
    assert compare("mapping", b"/a/so.so", HELD, False, FileId(0x2A, 100)) == []


def test_rename_seen_by_the_daemon_and_a_new_file_at_the_old_path():
    found = compare("mapping", b"/a/old.so", HELD, False, NEW, first_path=b"/a/so.so")
    assert kinds(found) == ["renamed", "replaced"]
    assert found[0].new_path == b"/a/old.so" and found[0].path == b"/a/so.so"


def test_rename_away_with_nothing_at_the_old_path():
    assert kinds(compare("mapping", b"/a/old.so", HELD, False, None, first_path=b"/a/so.so")) == ["renamed"]


def test_find_divergence_covers_mappings_and_fds():
    mapped = [MappedFile(b"/a/so.so", HELD, ("r-xp",), True)]
    fds = [OpenFile(3, b"/var/log/x.log", FileId(0xFE00, 300), True)]
    disk = {b"/a/so.so": NEW}.get
    found = find_divergence(mapped, fds, disk)
    assert [f.event for f in found] == ["mapping.deleted", "mapping.replaced", "fd.deleted"]
    assert found[2].fields()["fd"] == 3


def test_pseudo_paths():
    for p in [b"/memfd:x", b"/SYSV00000000", b"/dev/zero", b"anon_inode:[x]", b"[vdso]", b""]:
        assert is_pseudo_path(p)
    assert not is_pseudo_path(b"/usr/lib/libc.so.6")


def test_runs_code_is_a_private_executable_mapping():
    assert runs_code(("r--p", "r-xp", "rw-p")) and runs_code(("--xp",))
    assert not runs_code(("rw-s",)) and not runs_code(("rw-s", "r-xs")) and not runs_code(())


def test_two_versions_at_one_path_are_duplicated_once_per_older_inode():
    """nginx reloaded with load_module spelled otherwise maps the old, deleted inode and the
    new one under one path: deleted and replaced (the old), and duplicated."""
    path = b"/etc/nginx/modules/echo.so"
    old = MappedFile(path, HELD, ("r--p", "r-xp"), True, vma=b"7f00-7f01")
    new = MappedFile(path, NEW, ("r--p", "r-xp"), False)
    found = find_divergence([old, new], [], {path: NEW}.get)
    assert [f.event for f in found] == ["mapping.deleted", "mapping.replaced", "mapping.duplicated"]
    assert found[2].fields() == {"path": path, "old_ino": HELD.ino, "new_ino": NEW.ino,
                                 "perms": "r--p,r-xp"}
    assert found[2].needs_restart and found[2].vma == b"7f00-7f01"
    # the new one not mapped (yet): no duplicate; another path's new file: none either
    assert [f.kind for f in find_divergence([old], [], {path: NEW}.get)] == ["deleted", "replaced"]
    other = MappedFile(b"/other.so", NEW, ("r-xp",), False)
    assert "duplicated" not in [f.kind for f in find_divergence([old, other], [], {path: NEW, b"/other.so": NEW}.get)]
