"""Snapshots of one target -> events: each state change once, nothing invented."""

from __future__ import annotations

from inodewatch.diff import TargetHistory
from inodewatch.model import FileId, MappedFile, find_divergence

OLD, NEW = FileId(0xFE00, 100), FileId(0xFE00, 200)
P = b"/opt/demo/so.so"


def mapping(file=OLD, path=P, deleted=False, size=15472, mtime=1):
    return MappedFile(path, file, ("r-xp",), deleted, size, mtime)


def step(history: TargetHistory, mapped: list[MappedFile], disk: dict[bytes, FileId]) -> list[str]:
    """What the daemon does for one snapshot, with the disk as given."""
    history.learn(mapped)
    findings = find_divergence(mapped, [], disk.get, history.first_paths)
    return [e.name for e in history.update(mapped, findings)]


def test_rm_then_cp_is_logged_once():
    h = TargetHistory()
    assert step(h, [mapping()], {P: OLD}) == []
    assert step(h, [mapping(deleted=True)], {P: NEW}) == ["mapping.deleted", "mapping.replaced"]
    assert step(h, [mapping(deleted=True)], {P: NEW}) == []  # not again at every poll
    assert [s["event"] for s in h.stale()] == ["mapping.deleted", "mapping.replaced"]


def test_hold_mode_reload_after_a_gap_with_nothing_mapped():
    h = TargetHistory()
    step(h, [mapping()], {P: OLD})
    step(h, [mapping(deleted=True)], {P: NEW})
    assert step(h, [], {P: NEW}) == []  # between dlclose and dlopen
    events = h.update([mapping(NEW)], [])
    assert [(e.name, e.fields["old_ino"], e.fields["new_ino"]) for e in events] == [
        ("mapping.reloaded", 100, 200)]
    assert h.stale() == []


def test_in_place_write_is_overwritten_once():
    h = TargetHistory()
    step(h, [mapping()], {P: OLD})
    events = h.update([mapping(size=23696, mtime=2)], [])
    assert [(e.level, e.name, e.fields["size_before"], e.fields["size_after"]) for e in events] == [
        ("critical", "mapping.overwritten", 15472, 23696)]
    assert h.update([mapping(size=23696, mtime=3)], []) == []
    assert h.overwrite(OLD, 23696) is None  # the inotify path does not log it twice


def test_a_reused_inode_number_inherits_nothing():
    """ext4 gives a freed inode number to the next new file: not an overwrite, not a rename."""
    h = TargetHistory()
    step(h, [mapping()], {P: OLD})
    assert step(h, [], {}) == []  # dlclose: the inode is freed
    other = b"/opt/demo/b.so"
    assert step(h, [mapping(path=other, size=999, mtime=5)], {other: OLD}) == []


def test_rename_away_then_new_file_at_the_old_path():
    h = TargetHistory()
    step(h, [mapping()], {P: OLD})
    moved = b"/opt/demo/old.so"
    assert step(h, [mapping(path=moved)], {P: NEW, moved: OLD}) == ["mapping.renamed", "mapping.replaced"]
