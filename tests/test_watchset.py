"""The watch set's bookkeeping and budget, on a recording stand-in for the inotify adapter."""

from __future__ import annotations

from inodewatch.model import FileId
from inodewatch.watch import NAME_EVENTS, OPEN_EVENTS, WRITE_EVENTS, WatchLimitReached
from inodewatch.watchset import WatchSet, default_budget, per_target_cap

P = b"/opt/app/so.so"
A, B = FileId(1, 10), FileId(1, 11)
MAPPED = NAME_EVENTS | WRITE_EVENTS


class Recorder:
    """Records the calls; `limit` watches, then ENOSPC (WatchLimitReached) as the kernel."""

    def __init__(self, limit: int = 10_000) -> None:
        self.calls: list[tuple] = []
        self.limit = limit
        self.watched: set[bytes] = set()
        self.names: dict[bytes, set[bytes] | None] = {}

    def watch_file(self, path: bytes, mask: int, ino: int | None = None) -> bool:
        self._count(path)
        self.calls.append(("file", path, mask))
        return True

    def watch_directory(self, path: bytes, names: set[bytes] | None = None) -> bool:
        self._count(path)
        self.names[path] = names
        self.calls.append(("dir", path))
        return True

    def unwatch(self, path: bytes) -> None:
        self.watched.discard(path)
        self.calls.append(("unwatch", path))

    def _count(self, path: bytes) -> None:
        if path not in self.watched and len(self.watched) >= self.limit:
            raise WatchLimitReached("inotify watch limit reached (fs.inotify.max_user_watches)")
        self.watched.add(path)


def files(directory: bytes, count: int, mask: int = MAPPED, first: int = 100) -> dict:
    return {b"%s/f%d" % (directory, i): (mask, FileId(1, first + i)) for i in range(count)}


def test_two_targets_share_one_watch_with_the_union_of_their_events():
    rec = Recorder()
    ws = WatchSet(rec, budget=100)
    ws.sync(1, {P: (NAME_EVENTS, A)})
    ws.sync(2, {P: (MAPPED, A)})
    assert rec.calls == [("dir", b"/opt/app"), ("file", P, NAME_EVENTS), ("file", P, MAPPED)]
    ws.sync(2, {})
    assert rec.calls[-1] == ("file", P, NAME_EVENTS)  # narrowed back, still watched
    ws.sync(1, {})
    assert rec.calls[-2:] == [("unwatch", P), ("unwatch", b"/opt/app")]
    assert ws.users == {} and ws.granted == {} and not ws.dir_refs and ws.used() == 0


def test_a_new_file_at_the_path_is_watched_instead_and_its_open_matters():
    rec = Recorder()
    ws = WatchSet(rec, budget=100)
    assert ws.sync(1, {P: (MAPPED, A)}) is False
    assert ws.sync(1, {P: (MAPPED | OPEN_EVENTS, B)}) is True
    assert rec.calls[-2:] == [("unwatch", P), ("file", P, MAPPED | OPEN_EVENTS)]
    assert ws.watched_inode(P) == B
    assert ws.sync(1, {P: (MAPPED | OPEN_EVENTS, B)}) is False  # nothing new


def test_a_directory_reads_only_the_names_its_targets_want():
    rec = Recorder()
    ws = WatchSet(rec, budget=100)
    ws.sync(1, {P: (MAPPED, A), b"/opt/app/other.so": (MAPPED, B)})
    assert rec.names[b"/opt/app"] == {b"so.so", b"other.so"}
    ws.sync(1, {P: (MAPPED, A)})
    assert rec.names[b"/opt/app"] == {b"so.so"}  # the watcher's own set, changed in place


def test_the_default_budget_is_half_the_kernel_limit_and_one_target_a_share_of_it():
    assert default_budget(192_530) == 96_265
    assert per_target_cap(96_265) == 6_016
    assert per_target_cap(1_000) == 256  # a floor for a small budget...
    assert per_target_cap(50) == 50  # ...but never more than the budget


def test_the_budget_leaves_paths_unwatched_and_says_whose():
    ws = WatchSet(Recorder(), budget=11)
    ws.sync(7, files(b"/home/u", 20), operator=False)
    assert ws.used() == 11  # the directory and 10 files
    assert ws.unwatched() == 10 and ws.affected() == [7]
    ws.sync(7, files(b"/home/u", 5), operator=False)  # it needs fewer now: all fit
    assert ws.unwatched() == 0 and ws.affected() == [] and ws.used() == 6


def test_one_target_gets_at_most_its_cap_the_paths_awaiting_a_reload_first():
    ws = WatchSet(Recorder(), budget=1000, per_target=3)
    wanted = files(b"/srv", 5, mask=NAME_EVENTS)
    wanted[b"/srv/mapped.so"] = (MAPPED, FileId(1, 1))
    wanted[b"/srv/new.so"] = (MAPPED | OPEN_EVENTS, FileId(1, 2))
    ws.sync(1, wanted)
    assert set(ws.granted[1]) == {b"/srv/new.so", b"/srv/mapped.so", b"/srv/f0"}
    assert ws.unwatched() == 4


def test_the_operators_target_takes_the_watches_of_targets_anyone_can_match():
    rec = Recorder()
    ws = WatchSet(rec, budget=30)
    ws.sync(100, files(b"/home/u/a", 20), operator=False)
    ws.sync(101, files(b"/home/u/b", 20), operator=False)
    assert ws.used() == 30 and ws.affected() == [101]
    demo = {P: (MAPPED, A), b"/usr/lib/libc.so.6": (MAPPED, B)}
    ws.sync(1, demo)  # --pid: its two files and two directories
    assert set(ws.granted[1]) == set(demo) and ws.used() == 30
    assert ws.affected() == [100, 101]  # 100 held most: it gave watches up
    assert len(ws.granted[100]) == 16 and ws.unwatched() == 4 + 12
    # another target anyone can match takes nothing from it
    ws.sync(102, files(b"/home/u/c", 5), operator=False)
    assert set(ws.granted[1]) == set(demo) and ws.granted[102] == {}


def test_a_path_shared_with_an_operators_target_is_never_given_up():
    ws = WatchSet(Recorder(), budget=4)
    ws.sync(1, {P: (MAPPED, A)})  # operator: /opt/app and so.so
    ws.sync(100, {P: (MAPPED, A), b"/home/u/x": (MAPPED, B)}, operator=False)
    ws.sync(2, {b"/srv/y": (MAPPED, FileId(2, 1))})  # operator: needs 2, takes /home/u's 2
    assert set(ws.granted[100]) == {P} and set(ws.granted[2]) == {b"/srv/y"}
    assert ws.affected() == [100]


def test_watches_come_back_when_the_hungry_targets_exit():
    ws = WatchSet(Recorder(), budget=12)
    ws.sync(1, {P: (MAPPED, A)})
    ws.sync(100, files(b"/home/u", 50), operator=False)
    assert ws.unwatched() == 41  # it got a directory and 9 files
    ws.sync(100, {})
    assert ws.unwatched() == 0 and ws.affected() == [] and ws.used() == 2


def test_the_kernels_limit_is_a_ceiling_until_retry():
    rec = Recorder(limit=3)  # other processes hold the rest of the user's watches
    ws = WatchSet(rec, budget=100)
    ws.sync(1, files(b"/srv", 5))
    assert ws.used() == 3 and ws.unwatched() == 3 and ws.ceiling == 3
    calls = len(rec.calls)
    ws.sync(1, files(b"/srv", 5))  # no new attempt while the kernel is full
    assert len(rec.calls) == calls and ws.unwatched() == 3
    rec.limit = 10
    ws.retry()
    ws.sync(1, files(b"/srv", 5))
    assert ws.unwatched() == 0 and ws.used() == 6


def test_a_flooded_kind_is_muted_until_a_target_is_synced_again():
    rec = Recorder()
    ws = WatchSet(rec, budget=100)
    wanted = {P: (MAPPED | OPEN_EVENTS, B)}
    ws.sync(1, wanted)
    ws.mute(P, OPEN_EVENTS)
    assert rec.calls[-1] == ("file", P, MAPPED)
    ws.mute(P, OPEN_EVENTS)  # muted already: no call
    assert rec.calls[-1] == ("file", P, MAPPED) and len(rec.calls) == 3
    assert ws.covers(P, B, WRITE_EVENTS)  # writes are still watched
    assert ws.sync(1, wanted) is True  # opens back: one may have been the reload
    assert rec.calls[-1] == ("file", P, MAPPED | OPEN_EVENTS)


def test_a_watch_that_moved_on_covers_its_old_inode_for_the_targets_not_looked_at_since():
    """Two targets map A at P; an upgrade puts B there.  The first target's look moves the
    watch to B; the second, looked at next, held A watched all along since its own look."""
    ws = WatchSet(Recorder(), budget=100)
    ws.sync(1, {P: (MAPPED, A)})
    ws.sync(2, {P: (MAPPED, A)})
    second_looked = ws.moves
    ws.sync(1, {P: (MAPPED, B)})  # the first target's look after the upgrade
    assert not ws.covers(P, A, WRITE_EVENTS) and ws.covers(P, B, WRITE_EVENTS)
    assert ws.covered_since(P, A, WRITE_EVENTS, second_looked)
    ws.sync(2, {P: (MAPPED, B)})
    assert not ws.covered_since(P, A, WRITE_EVENTS, ws.moves)  # a later look: A unwatched
    assert not ws.covered_since(P, A, OPEN_EVENTS, second_looked)  # never watched for opens
    ws.sync(1, {})
    ws.sync(2, {})
    assert ws.left == {}  # nothing kept for a path nobody holds
