"""One target as a state machine (inodewatch.target): snapshots, inotify's events and a fake
clock in; events, watches and follow-up looks out.  No process, no file, no inotify."""

from __future__ import annotations

from collections import namedtuple

from inodewatch.exits import ExitStatus
from inodewatch.model import FileId, MappedFile, OpenFile
from inodewatch.procfs import OnDisk, ProcessId
from inodewatch.target import LINGER, LOOK_BURST, RELOAD_FOLLOW_UP, Target, with_status
from inodewatch.watch import NAME_EVENTS, OPEN_EVENTS, WRITE_EVENTS

OLD, NEW = FileId(0xFE00, 100), FileId(0xFE00, 200)
P = b"/opt/demo/so.so"
DATA = b"/var/lib/demo/data.db"
Stat = namedtuple("Stat", "st_ino st_size st_mtime_ns")


def mapping(file=OLD, path=P, deleted=False, size=15472, mtime=1):
    return MappedFile(path, file, ("r-xp",), deleted, size, mtime)


class Disk:
    """What paths name, as the daemon's DiskView answers; `stats` counts the questions."""

    def __init__(self, **at: tuple[FileId, int, int]) -> None:
        self.files: dict[bytes, OnDisk] = {}
        self.stats = 0
        for path, (file, size, mtime) in at.items():
            self.put(path.encode().replace(b"_", b"/"), file, size, mtime)

    def put(self, path: bytes, file: FileId, size: int = 15472, mtime: int = 1) -> None:
        self.files[path] = OnDisk(Stat(file.ino, size, mtime), file)

    def at(self, path: bytes) -> OnDisk | None:
        return self.files.get(path)

    def stat(self, path: bytes):
        def ask():
            self.stats += 1
            found = self.files.get(path)
            return None if found is None else found.stat
        return ask


def target(now: float = 0.0, **kw) -> Target:
    t = Target.new(ProcessId(4242, 1000), now, **kw)
    return t


def look(t: Target, mapped, disk: Disk, now: float, open_files=(), watched=lambda p, f: False):
    return t.look(list(mapped), list(open_files), now, disk.at, lambda f: f, watched)


def names(events) -> list[str]:
    return [e.name for e in events]


def test_a_look_gives_the_events_and_the_watches_a_target_needs():
    disk = Disk()
    disk.put(P, OLD)
    t = target()
    held = OpenFile(3, DATA, FileId(0xFE00, 7), False)
    disk.put(DATA, held.file)
    events, watches = look(t, [mapping()], disk, 1.0, [held])
    assert events == []
    assert watches == {DATA: NAME_EVENTS, P: NAME_EVENTS | WRITE_EVENTS}
    assert t.mapped == {OLD: mapping()} and t.open_files == [held]
    # rm + cp: the divergence once, and the path watched for its next open (the reload)
    disk.put(P, NEW)
    events, watches = look(t, [mapping(deleted=True)], disk, 2.0)
    assert names(events) == ["mapping.deleted", "mapping.replaced"]
    assert watches[P] == NAME_EVENTS | WRITE_EVENTS | OPEN_EVENTS
    assert look(t, [mapping(deleted=True)], disk, 3.0).events == []
    # the dlopen of the new file: reloaded, and the old path needs no open watch any more
    events, watches = look(t, [mapping(NEW)], disk, 4.0)
    assert [(e.name, e.fields["old_ino"], e.fields["new_ino"]) for e in events] == [
        ("mapping.reloaded", 100, 200)]
    assert watches == {P: NAME_EVENTS | WRITE_EVENTS}


def test_a_file_unmapped_a_moment_ago_stays_watched_for_its_reopen_for_linger_seconds():
    """A plugin host between its dlclose and its dlopen maps nothing."""
    disk = Disk()
    disk.put(P, OLD)
    t = target()
    look(t, [mapping()], disk, 10.0)
    assert look(t, [], disk, 11.0).watches == {P: NAME_EVENTS | OPEN_EVENTS}
    assert look(t, [], disk, 10.0 + LINGER - 0.001).watches == {P: NAME_EVENTS | OPEN_EVENTS}
    assert look(t, [], disk, 10.0 + LINGER).watches == {}


def test_watch_paths_leave_every_other_file_out_of_events_and_watches():
    disk = Disk()
    other = b"/opt/demo/other.so"
    disk.put(P, NEW)  # both replaced already
    disk.put(other, NEW)
    t = target(watch_paths={P})
    events, watches = look(t, [mapping(deleted=True), mapping(FileId(0xFE00, 9), other, True)],
                           disk, 1.0)
    assert {e.fields["path"] for e in events} == {P}
    assert set(watches) == {P} and set(t.mapped) == {OLD}


def test_an_in_place_write_is_told_as_it_begins_after_a_look_and_its_size_at_the_close():
    """IN_MODIFY on the inode it maps: look first (the map may be older than a reload), then
    mapping.overwritten; the writer's close gives the size it left.  The disk is asked for
    a size only when one is told."""
    disk = Disk()
    disk.put(P, OLD)
    t = target()
    look(t, [mapping()], disk, 1.0)
    stat = disk.stat(P)
    reaction = t.on_file_event("modified", OLD, 1.5, 0.1, stat)
    assert reaction == (([], True, False)) and disk.stats == 0
    look(t, [mapping()], disk, 1.5)  # the look it asked for: still mapped
    disk.put(P, OLD, size=0)  # cp truncated it first
    [began] = t.write_began(OLD, stat)
    assert (began.level, began.name, began.fields["size_before"], began.fields["size_after"],
            began.fields["truncated"]) == ("critical", "mapping.overwritten", 15472, None, True)
    assert disk.stats == 1
    # every later write of it: told already, no look asked for
    assert t.on_file_event("modified", OLD, 1.6, 0.1, stat).look_first is False
    disk.put(P, OLD, size=23696, mtime=2)
    reaction = t.on_file_event("written", OLD, 1.7, 0.1, stat)
    assert [(e.name, e.fields["size_after"]) for e in reaction.events] == [
        ("mapping.overwrite_closed", 23696)]
    assert t.on_file_event("written", OLD, 1.8, 0.1, stat).events == []  # a later touch
    assert t.exited(ExitStatus(None, "SIGSEGV", False, "proc_connector")).fields["stale"][0][
        "size_after"] == 23696


def test_a_write_of_another_inode_or_of_one_unmapped_since_is_nothing():
    disk = Disk()
    disk.put(P, OLD)
    t = target()
    look(t, [mapping()], disk, 1.0)
    stat = disk.stat(P)
    assert t.on_file_event("modified", NEW, 1.1, 0.1, stat).look_first is False
    assert t.on_file_event("modified", None, 1.1, 0.1, stat).look_first is False
    assert t.on_file_event("written", OLD, 1.1, 0.1, stat).events == []  # no write began
    assert t.on_file_event("modified", OLD, 1.2, 0.1, stat).look_first is True
    look(t, [mapping(deleted=True)], disk, 1.2)  # deleted meanwhile: not written in place
    assert t.write_began(OLD, stat) == [] and disk.stats == 0
    assert t.write_began(NEW, stat) == []


def test_a_flooded_target_tells_the_write_at_its_next_paced_look():
    """A user writing her own mapped file over and over: no look at every write; the look
    its pace allows compares every file's stamp, watched or not."""
    disk = Disk()
    disk.put(P, OLD)
    t = target()
    look(t, [mapping()], disk, 1.0)
    t.pace.take(LOOK_BURST + 1.0, 1.0, 0.1)  # in debt for ~10 s
    assert t.on_file_event("modified", OLD, 2.0, 0.1, disk.stat(P)).look_first is False
    written = mapping(size=23696, mtime=2)
    events = look(t, [written], disk, 12.0, watched=lambda p, f: True).events
    assert [(e.name, e.fields["size_after"]) for e in events] == [("mapping.overwritten", 23696)]


def test_a_changed_stamp_is_an_overwrite_only_where_no_watch_saw_the_file():
    """Where inotify watched the inode for writes since the last look, its IN_MODIFY is the
    evidence: a moved mtime alone is a touch."""
    disk = Disk()
    disk.put(P, OLD)
    t = target()
    look(t, [mapping()], disk, 1.0)
    asked = []

    def watched(path: bytes, file: FileId) -> bool:
        asked.append((path, file))
        return True

    assert look(t, [mapping(mtime=2)], disk, 2.0, watched=watched).events == []
    assert asked == [(P, OLD)]
    events = look(t, [mapping(size=9, mtime=3)], disk, 3.0).events
    assert names(events) == ["mapping.overwritten"]


def test_events_that_open_a_watched_file_ask_for_the_follow_up_looks():
    t = target()
    for kind in ("opened", "closed"):
        assert t.on_file_event(kind, OLD, 1.0, 0.1, lambda: None).reload is True
    for kind in ("created", "moved", "attrib", "modified", "written"):
        assert t.on_file_event(kind, OLD, 1.0, 0.1, lambda: None).reload is False
    assert t.follow_ups(5.0) == [5.0 + d for d in RELOAD_FOLLOW_UP]


def test_after_missed_events_an_operators_target_is_checked_at_once_others_when_paced():
    """After an overflow: the stamps of what it mapped (even if it is dead by now), then a
    look; a target anyone can match, flooded, waits for its pace and compares every stamp."""
    disk = Disk()
    disk.put(P, OLD)
    named, matched = target(), target()
    matched.operator = False
    for t in (named, matched):
        look(t, [mapping()], disk, 1.0)
        t.pace.take(LOOK_BURST + 1.0, 1.0, 0.1)
    disk.put(P, OLD, size=23696, mtime=2)
    assert named.checks_now(2.0, 0.1) is True
    assert [(e.name, e.fields["size_after"]) for e in named.missed_writes(disk.at)] == [
        ("mapping.overwritten", 23696)]
    assert named.missed_writes(disk.at) == []  # once
    assert matched.checks_now(2.0, 0.1) is False
    events = look(matched, [mapping(size=23696, mtime=2)], disk, 20.0, watched=lambda p, f: True).events
    assert names(events) == ["mapping.overwritten"]


def test_the_exit_tells_what_was_stale_and_a_units_pidfd_exit_asks_systemd():
    disk = Disk()
    disk.put(P, NEW)
    t = target()
    look(t, [mapping(deleted=True)], disk, 1.0)
    pidfd = ExitStatus(None, None, None, "pidfd")
    exited = t.exited(pidfd)
    assert (exited.level, exited.name) == ("info", "target.exited")
    assert list(exited.fields) == ["exit_code", "signal", "core_dumped", "status_source", "stale"]
    assert [s["event"] for s in exited.fields["stale"]] == ["mapping.deleted", "mapping.replaced"]
    assert t.asks_systemd(pidfd) is False
    t.term = ("unit", b"demo.service")
    assert t.asks_systemd(pidfd) is True
    assert t.asks_systemd(ExitStatus(1, None, False, "proc_connector")) is False
    told = with_status(exited, ExitStatus(None, "SIGKILL", False, "systemd"))
    assert (told.level, told.fields["signal"], told.fields["status_source"]) == (
        "warning", "SIGKILL", "systemd")
    assert told.fields["stale"] == exited.fields["stale"]


def test_what_it_holds_by_inode_number_is_named_by_its_first_path():
    disk = Disk()
    disk.put(P, OLD)
    t = target()
    look(t, [mapping()], disk, 1.0)
    moved = b"/opt/demo/old.so"
    disk.put(moved, OLD)
    disk.files.pop(P)
    look(t, [mapping(path=moved)], disk, 2.0)
    assert t.holding(OLD.ino).path == P
    assert t.holding(NEW.ino) is None
    assert t.live_divergences() == {("mapping", "renamed"): 1, ("mapping", "overwritten"): 0}
