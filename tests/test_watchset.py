"""The watch set's bookkeeping, on a recording stand-in for the inotify adapter."""

from __future__ import annotations

from inodewatch.model import FileId
from inodewatch.watch import NAME_EVENTS, OPEN_EVENTS, WRITE_EVENTS, WatchLimitReached
from inodewatch.watchset import WatchSet

P = b"/opt/app/so.so"
A, B = FileId(1, 10), FileId(1, 11)


class Recorder:
    def __init__(self, limit: int = 100) -> None:
        self.calls: list[tuple] = []
        self.limit = limit

    def watch_file(self, path: bytes, mask: int) -> bool:
        self._count()
        self.calls.append(("file", path, mask))
        return True

    def watch_directory(self, path: bytes) -> bool:
        self._count()
        self.calls.append(("dir", path))
        return True

    def unwatch(self, path: bytes) -> None:
        self.calls.append(("unwatch", path))

    def _count(self) -> None:
        if self.limit == 0:
            raise WatchLimitReached("inotify watch limit reached (fs.inotify.max_user_watches)")
        self.limit -= 1


def test_two_targets_share_one_watch_with_the_union_of_their_events():
    rec = Recorder()
    ws = WatchSet(rec, on_limit=lambda reason: None)
    ws.sync(1, {P: (NAME_EVENTS, A)})
    ws.sync(2, {P: (NAME_EVENTS | WRITE_EVENTS, A)})
    assert rec.calls == [("dir", b"/opt/app"), ("file", P, NAME_EVENTS),
                         ("file", P, NAME_EVENTS | WRITE_EVENTS)]
    ws.sync(2, {})
    assert rec.calls[-1] == ("file", P, NAME_EVENTS)  # narrowed back, still watched
    ws.sync(1, {})
    assert rec.calls[-2:] == [("unwatch", P), ("unwatch", b"/opt/app")]
    assert ws.users == {} and ws.by_pid == {} and not ws.dir_refs


def test_a_new_file_at_the_path_is_watched_instead_and_its_open_matters():
    rec = Recorder()
    ws = WatchSet(rec, on_limit=lambda reason: None)
    assert ws.sync(1, {P: (NAME_EVENTS | WRITE_EVENTS, A)}) is False
    assert ws.sync(1, {P: (NAME_EVENTS | WRITE_EVENTS | OPEN_EVENTS, B)}) is True
    assert rec.calls[-2:] == [("unwatch", P), ("file", P, NAME_EVENTS | WRITE_EVENTS | OPEN_EVENTS)]
    assert ws.watched_inode(P) == B
    assert ws.sync(1, {P: (NAME_EVENTS | WRITE_EVENTS | OPEN_EVENTS, B)}) is False  # nothing new


def test_the_watch_limit_is_told_once():
    told = []
    ws = WatchSet(Recorder(limit=0), on_limit=told.append)
    ws.sync(1, {P: (NAME_EVENTS, A), b"/opt/other/x.so": (NAME_EVENTS, B)})
    ws.sync(2, {P: (NAME_EVENTS, A)})
    assert len(told) == 1 and "max_user_watches" in told[0]
    assert ws.watched_inode(P) is None
