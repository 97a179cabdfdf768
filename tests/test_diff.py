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
    assert h.overwrite(mapping(), 23696) is None  # the inotify path does not log it twice


def test_a_write_seen_as_it_begins_is_critical_at_once_its_size_at_the_close():
    """IN_MODIFY: the critical line first (size_after not known yet; truncated when the
    size seen was below the one before); the writer's close then gives the size it left,
    once, and the overwrite's record (stale) takes it."""
    h = TargetHistory()
    step(h, [mapping()], {P: OLD})
    began = h.write_began(mapping(), 0)
    assert (began.level, began.name, began.fields["size_before"], began.fields["size_after"],
            began.fields["truncated"]) == ("critical", "mapping.overwritten", 15472, None, True)
    assert h.write_began(mapping(), 9000) is None  # every later write of it: told already
    closed = h.write_closed(OLD, 15472)
    assert (closed.level, closed.name) == ("warning", "mapping.overwrite_closed")
    assert closed.fields == {"path": P, "mapped_dev": "fe:00", "mapped_ino": 100,
                             "size_before": 15472, "size_after": 15472, "truncated": True}
    assert h.write_closed(OLD, 15472) is None  # a later touch: nothing
    assert [(s["event"], s["size_after"]) for s in h.stale()] == [("mapping.overwritten", 15472)]


def test_a_close_without_a_write_is_nothing():
    """touch, `: >>`: an open for writing that changes no byte raises IN_CLOSE_WRITE alone."""
    h = TargetHistory()
    step(h, [mapping()], {P: OLD})
    assert h.write_closed(OLD, 15472) is None and h.stale() == []
    began = h.write_began(mapping(), 15472)  # appended to, or rewritten before the look
    assert began.fields["truncated"] is False and began.fields["size_after"] is None


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


def test_a_reload_seen_only_through_the_next_divergence_is_still_told():
    """Replaced twice in quick succession: the target loaded the second file and it was
    replaced again before the daemon saw it in step.  It did load it: say so, in order."""
    h = TargetHistory()
    step(h, [mapping()], {P: OLD})
    step(h, [mapping(deleted=True)], {P: NEW})
    third = FileId(0xFE00, 300)
    names = step(h, [mapping(NEW, deleted=True)], {P: third})
    assert names == ["mapping.reloaded", "mapping.deleted", "mapping.replaced"]
    events = h.update([mapping(third)], [])
    assert [(e.fields["old_ino"], e.fields["new_ino"]) for e in events] == [(200, 300)]


def test_a_changed_stamp_on_a_write_watched_inode_is_not_an_overwrite():
    """Under an inotify write watch IN_MODIFY is the evidence; a different size and mtime
    under the same number is then a freed inode number given to a new file."""
    h = TargetHistory()
    step(h, [mapping()], {P: OLD})
    assert h.update([mapping(size=999, mtime=9)], [], write_watched=lambda m: True) == []
    assert [e.name for e in h.update([mapping(size=999, mtime=9)], [])] == ["mapping.overwritten"]


def test_a_reload_between_two_looks_is_told_though_the_divergence_was_never_seen():
    """rm + cp and the host's dlclose + dlopen while the daemon was paused: it resumes to
    find the host in step with the disk, and still tells that it reloaded."""
    h = TargetHistory()
    assert step(h, [mapping()], {P: OLD}) == []
    h.learn([mapping(NEW)])
    events = h.update([mapping(NEW)], [])
    assert [(e.name, e.fields["old_ino"], e.fields["new_ino"]) for e in events] == [
        ("mapping.reloaded", OLD.ino, NEW.ino)]
    assert step(h, [mapping(NEW)], {P: NEW}) == []  # once


def test_a_reload_whose_unmapped_moment_a_look_saw_is_still_told():
    """mv over, then the host's dlclose + dlopen, the daemon's first look after the mv made
    between the two (nothing mapped at the path): the next look still tells the reload."""
    h = TargetHistory()
    assert step(h, [mapping()], {P: OLD}) == []
    assert step(h, [], {P: NEW}) == []
    h.learn([mapping(NEW)])
    events = h.update([mapping(NEW)], [])
    assert [(e.name, e.fields["old_ino"], e.fields["new_ino"]) for e in events] == [
        ("mapping.reloaded", OLD.ino, NEW.ino)]


def test_a_plugin_unloaded_for_good_is_forgotten_a_look_later():
    h = TargetHistory()
    step(h, [mapping()], {P: OLD})
    step(h, [], {P: OLD})
    step(h, [], {P: NEW})
    assert h.unmapped_at == {} and h.mapped_at == {}
    assert step(h, [mapping(NEW)], {P: NEW}) == []  # a new load, not a reload


def test_a_second_inode_mapped_beside_the_first_is_no_reload():
    h = TargetHistory()
    step(h, [mapping()], {P: OLD})
    assert "mapping.reloaded" not in step(h, [mapping(), mapping(NEW)], {P: NEW})


def test_stamp_check_finds_a_write_inotify_missed_even_in_a_dead_target():
    h = TargetHistory()
    m = mapping()
    step(h, [m], {P: OLD})

    class Stat:
        st_size, st_mtime_ns = 23696, 7

    events = h.stamp_check([m], {P: (Stat, OLD)}.get)
    assert [(e.name, e.fields["size_before"], e.fields["size_after"]) for e in events] == [
        ("mapping.overwritten", 15472, 23696)]
    assert h.stamp_check([m], {P: (Stat, OLD)}.get) == []  # once
    # another inode at the path (rm + cp) or nothing there is no in-place write
    h2 = TargetHistory()
    step(h2, [m], {P: OLD})
    assert h2.stamp_check([m], {P: (Stat, NEW)}.get) == []
    assert h2.stamp_check([m], {}.get) == []


def test_a_touch_seen_while_watched_is_no_overwrite_once_the_path_is_replaced():
    """Seen on nginx: touch (its watch saw no write), then a dpkg-style upgrade: the watch
    moves to the new inode, and the held one's moved mtime read as an overwrite."""
    h = TargetHistory()
    step(h, [mapping()], {P: OLD})
    watched = lambda m: m.file == OLD  # noqa: E731  (the path's watch is on the held inode)
    assert h.update([mapping(mtime=2)], [], watched) == []  # the touch
    h.learn([mapping(deleted=True, mtime=2)])
    findings = find_divergence([mapping(deleted=True, mtime=2)], [], {P: NEW}.get, h.first_paths)
    events = h.update([mapping(deleted=True, mtime=2)], findings, lambda m: False)
    assert [e.name for e in events] == ["mapping.deleted", "mapping.replaced"]
    # a size that moved while watched is left to the IN_MODIFY the daemon gets: size_before
    assert h.update([mapping(size=1, mtime=3)], [], watched) == []
    assert h.write_began(mapping(), 1).fields["size_before"] == 15472


def test_content_unknown_while_the_new_file_is_written_is_judged_again_once():
    """`rm; cp`: the replaced finding is seen at cp's create, the file still empty (content
    unknown); once its stamp moves the divergence is judged again, and the verdict told once
    (mapping.content); a stamp that stays put is never judged again."""
    from inodewatch.model import Content

    h = TargetHistory()
    step(h, [mapping()], {P: OLD})
    verdicts = iter([Content("unknown", "ab", None, "one file has a build-id, the other none"),
                     Content("different", "ab", "cd", None)])
    judged = []

    def judge(f):
        judged.append(f.kind)
        return f._replace(content=next(verdicts)) if f.kind == "replaced" else f
    held = [mapping(deleted=True)]
    h.learn(held)
    findings = find_divergence(held, [], {P: NEW}.get, h.first_paths)
    events = h.update(held, findings, judge=judge, stamp_at=lambda p: (200, 0, 1))
    assert [e.fields.get("content") for e in events] == [None, "unknown"]
    assert h.update(held, findings, judge=judge, stamp_at=lambda p: (200, 0, 1)) == []
    assert judged == ["deleted", "replaced"]  # the same stamp: not judged again
    events = h.update(held, findings, judge=judge, stamp_at=lambda p: (200, 15472, 2))
    assert [(e.level, e.name, e.fields["kind"], e.fields["content"]) for e in events] == [
        ("warning", "mapping.content", "replaced", "different")]
    assert h.update(held, findings, judge=judge, stamp_at=lambda p: (200, 15472, 3)) == []
    assert [s.get("content") for s in h.stale()] == [None, "different"]
