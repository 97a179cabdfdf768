"""Tests for inodewatch.watch against real inotify on files under tmp_path."""

import mmap
import os
import select
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import lowered_sysctl
from inodewatch.watch import FileEvent, FileWatcher, WatchLimitReached

HOSTILE = b"bad\xff\x1b[31mname\n"


@pytest.fixture
def watcher() -> Iterator[FileWatcher]:
    w = FileWatcher()
    yield w
    w.close()


def wait_for(
    w: FileWatcher, done: Callable[[list[FileEvent]], bool], timeout: float = 5.0
) -> list[FileEvent]:
    """Poll the fd as the daemon does, collecting events until done() or deadline."""
    poller = select.poll()
    poller.register(w.fileno(), select.POLLIN)
    events: list[FileEvent] = []
    deadline = time.monotonic() + timeout
    while not done(events):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        if poller.poll(remaining * 1000):
            events.extend(w.read())
    return events


def kinds_for(path: bytes, events: list[FileEvent]) -> list[str]:
    return [e.kind for e in events if e.path == path]


def has(path: bytes, *kinds: str) -> Callable[[list[FileEvent]], bool]:
    return lambda events: set(kinds) <= set(kinds_for(path, events))


def make_file(path: bytes, data: bytes = b"\x7fELF" + b"\0" * 4092) -> bytes:
    with open(path, "wb") as f:
        f.write(data)
    return path


def test_in_place_write_reports_modified_and_written(watcher: FileWatcher, tmp_path: Path) -> None:
    lib = make_file(bytes(tmp_path / "libfoo.so.1"))
    assert watcher.watch_file(lib) is True

    with open(lib, "r+b") as f:
        f.write(b"EVIL")

    events = wait_for(watcher, has(lib, "modified", "written"))
    assert {"opened", "modified", "written"} <= set(kinds_for(lib, events))
    assert all(e.name is None for e in events)


def test_unlink_of_open_file_reports_attrib_then_deleted_self_on_close(
    watcher: FileWatcher, tmp_path: Path
) -> None:
    lib = make_file(bytes(tmp_path / "libfoo.so.1"))
    held = os.open(lib, os.O_RDONLY)
    try:
        watcher.watch_file(lib)
        os.unlink(lib)
        events = wait_for(watcher, has(lib, "attrib"))
        assert "attrib" in kinds_for(lib, events)
        # The inode lives on while held: no deleted_self yet.
        assert "deleted_self" not in kinds_for(lib, events)
    finally:
        os.close(held)

    events = wait_for(watcher, has(lib, "deleted_self", "ignored"))
    assert kinds_for(lib, events)[-2:] == ["deleted_self", "ignored"]
    assert lib not in watcher.watched()


def test_rename_over_reports_attrib_to_old_inode(watcher: FileWatcher, tmp_path: Path) -> None:
    lib = make_file(bytes(tmp_path / "libfoo.so.1"))
    # Map it like the dynamic loader does, so the old inode stays alive.
    with open(lib, "rb") as f:
        mapping = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    try:
        watcher.watch_file(lib)
        new = make_file(bytes(tmp_path / "libfoo.so.1.tmp"), b"\x7fELF new")
        os.rename(new, lib)

        events = wait_for(watcher, has(lib, "attrib"))
        assert kinds_for(lib, events) == ["attrib"]
        assert mapping[:4] == b"\x7fELF"
    finally:
        mapping.close()


def test_move_of_watched_file_reports_moved_self(watcher: FileWatcher, tmp_path: Path) -> None:
    lib = make_file(bytes(tmp_path / "libfoo.so.1"))
    watcher.watch_file(lib)
    os.rename(lib, tmp_path / "elsewhere")
    assert "moved_self" in kinds_for(lib, wait_for(watcher, has(lib, "moved_self")))


def test_directory_reports_created_moved_in_and_moved_from(
    watcher: FileWatcher, tmp_path: Path
) -> None:
    libdir = tmp_path / "lib"
    libdir.mkdir()
    d = bytes(libdir)
    assert watcher.watch_directory(d) is True

    make_file(d + b"/libnew.so")
    make_file(bytes(tmp_path / "staged"))
    os.rename(tmp_path / "staged", libdir / "libmoved.so")
    os.rename(libdir / "libnew.so", tmp_path / "gone")

    events = wait_for(watcher, has(d + b"/libnew.so", "created", "moved_from"))
    assert FileEvent(d + b"/libnew.so", "created", b"libnew.so") in events
    assert FileEvent(d + b"/libmoved.so", "created", b"libmoved.so") in events
    assert FileEvent(d + b"/libnew.so", "moved_from", b"libnew.so") in events
    # No open/modify noise from the directory watch itself.
    assert {e.kind for e in events} == {"created", "moved_from"}


def test_hostile_name_is_exact_and_does_not_lose_the_batch(
    watcher: FileWatcher, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    d = bytes(tmp_path)
    watcher.watch_directory(d)
    make_file(d + b"/" + HOSTILE)
    make_file(d + b"/libafter.so")

    # Both events are queued before the first read: one read must return both.
    poller = select.poll()
    poller.register(watcher.fileno(), select.POLLIN)
    assert poller.poll(5000)
    events = watcher.read()

    assert events == [
        FileEvent(d + b"/" + HOSTILE, "created", HOSTILE),
        FileEvent(d + b"/libafter.so", "created", b"libafter.so"),
    ]
    assert capfd.readouterr() == ("", "")


def test_non_utf8_paths_can_be_watched(watcher: FileWatcher, tmp_path: Path) -> None:
    d = bytes(tmp_path) + b"/dir\xfe\x1b[0m\n"
    os.mkdir(d)
    lib = make_file(d + b"/lib\xff.so")
    assert watcher.watch_directory(d)
    assert watcher.watch_file(lib)
    assert watcher.watched() == {d, lib}

    with open(lib, "ab") as f:
        f.write(b"x")
    make_file(d + b"/" + HOSTILE)

    events = wait_for(watcher, lambda ev: "written" in kinds_for(lib, ev)
                      and "created" in kinds_for(d + b"/" + HOSTILE, ev))
    assert "written" in kinds_for(lib, events)
    assert FileEvent(d + b"/" + HOSTILE, "created", HOSTILE) in events


def test_watch_is_idempotent_and_unwatch_is_silent(watcher: FileWatcher, tmp_path: Path) -> None:
    lib = make_file(bytes(tmp_path / "libfoo.so"))
    assert watcher.watch_file(lib) is True
    assert watcher.watch_file(lib) is False
    watcher.unwatch(lib)
    watcher.unwatch(lib)
    watcher.unwatch(b"/never/watched")
    assert watcher.watched() == set()

    with open(lib, "ab") as f:
        f.write(b"x")
    # Neither the IN_IGNORED from unwatch nor later writes are reported.
    assert wait_for(watcher, lambda events: False, timeout=0.2) == []


def test_unwatch_after_kernel_dropped_watch(watcher: FileWatcher, tmp_path: Path) -> None:
    lib = make_file(bytes(tmp_path / "libfoo.so"))
    watcher.watch_file(lib)
    os.unlink(lib)  # nothing holds it: the kernel drops the watch itself
    watcher.unwatch(lib)
    assert watcher.watched() == set()
    assert watcher.read() == []


def test_aliases_of_one_inode_each_get_events(watcher: FileWatcher, tmp_path: Path) -> None:
    (tmp_path / "usr").mkdir()
    (tmp_path / "lib").symlink_to("usr")
    real = make_file(bytes(tmp_path / "usr" / "libc.so.6"))
    alias = bytes(tmp_path / "lib" / "libc.so.6")
    assert watcher.watch_file(real) and watcher.watch_file(alias)

    with open(real, "ab") as f:
        f.write(b"x")
    events = wait_for(watcher, lambda ev: has(real, "written")(ev) and has(alias, "written")(ev))
    assert "written" in kinds_for(real, events) and "written" in kinds_for(alias, events)

    # Dropping one alias must keep the kernel watch for the other.
    watcher.unwatch(real)
    with open(real, "ab") as f:
        f.write(b"x")
    events = wait_for(watcher, has(alias, "written"))
    assert "written" in kinds_for(alias, events)
    assert kinds_for(real, events) == []


def test_unwatchable_paths_raise_oserror(watcher: FileWatcher, tmp_path: Path) -> None:
    lib = make_file(bytes(tmp_path / "libfoo.so"))
    with pytest.raises(FileNotFoundError):
        watcher.watch_file(bytes(tmp_path / "missing\xff.so"))
    with pytest.raises(NotADirectoryError):
        watcher.watch_directory(lib)
    with pytest.raises(IsADirectoryError):
        watcher.watch_file(bytes(tmp_path))
    assert watcher.watched() == set()


def test_watch_limit_raises_and_prints_nothing(
    watcher: FileWatcher, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    files = [make_file(bytes(tmp_path / f"lib{i}.so")) for i in range(3)]
    # 1 is below what this user already holds (or the second watch exceeds it).
    with lowered_sysctl("max_user_watches", 1), pytest.raises(WatchLimitReached) as caught:
        for f in files:
            watcher.watch_file(f)

    assert "fs.inotify.max_user_watches" in str(caught.value)
    assert not isinstance(caught.value, OSError)
    assert len(watcher.watched()) < len(files)
    assert capfd.readouterr() == ("", "")


def test_fd_is_not_inheritable_and_read_never_blocks(watcher: FileWatcher) -> None:
    assert os.get_inheritable(watcher.fileno()) is False
    assert os.get_blocking(watcher.fileno()) is False
    assert watcher.read() == []


def test_queue_overflow_sets_overflowed(tmp_path: Path) -> None:
    # The kernel reads the queue limit once, when the inotify fd is created.
    with lowered_sysctl("max_queued_events", 16):
        w = FileWatcher()
    try:
        d = bytes(tmp_path)
        w.watch_directory(d)
        for i in range(100):
            make_file(d + b"/lib%d.so" % i, b"")

        events = wait_for(w, lambda ev: w.overflowed)
        assert w.overflowed is True
        assert len(events) < 100
        assert w.read() == [] and w.overflowed is False
    finally:
        w.close()


def test_close_is_idempotent() -> None:
    w = FileWatcher()
    w.close()
    w.close()


def test_rewatching_a_path_that_now_names_another_file(watcher: FileWatcher, tmp_path: Path) -> None:
    """The caller decided on an older stat; the open lands on the new file.  The old inode's
    watch must let go of the path, or its IN_IGNORED later drops the new watch's entry and
    the new one's IN_IGNORED fails (found by benchmarks/soak.py at an operation every 30 ms)."""
    from inodewatch.watch import NAME_EVENTS, OPEN_EVENTS

    path = make_file(bytes(tmp_path / "so.so"))
    watcher.watch_file(path, NAME_EVENTS)
    os.rename(path, path + b".old")
    make_file(path)
    watcher.watch_file(path, NAME_EVENTS | OPEN_EVENTS)
    assert watcher.watched() == {path}
    os.unlink(path + b".old")  # the first inode is freed: its watch goes first...
    os.unlink(path)  # ...then the second's, in the same queue
    events = wait_for(watcher, has(path, "ignored"))
    assert kinds_for(path, events)[-1] == "ignored" and watcher.watched() == set()


def test_a_directory_reads_only_the_names_asked_for(watcher: FileWatcher, tmp_path: Path) -> None:
    """A flood of other names in the directory costs a set look-up each, and no event."""
    d = bytes(tmp_path)
    names = {b"so.so"}
    watcher.watch_directory(d, names)
    for i in range(500):
        make_file(d + b"/noise%d" % i, b"")
        os.rename(d + b"/noise%d" % i, d + b"/moved%d" % i)
    make_file(d + b"/so.so")
    events = wait_for(watcher, has(d + b"/so.so", "created"))
    assert {e.path for e in events} == {d + b"/so.so"}
    names.add(b"later.so")  # the caller's own set: read at every record
    make_file(d + b"/later.so")
    make_file(d + b"/unasked.so")
    events = wait_for(watcher, has(d + b"/later.so", "created"))
    assert {e.path for e in events} == {d + b"/later.so"}


def test_the_records_of_one_read_are_merged_per_file(watcher: FileWatcher, tmp_path: Path) -> None:
    from inodewatch.watch import NAME_EVENTS, OPEN_EVENTS

    lib = make_file(bytes(tmp_path / "so.so"))
    watcher.watch_file(lib, NAME_EVENTS | OPEN_EVENTS)
    for _ in range(50):  # open, close, open, close: records the kernel cannot merge itself
        os.close(os.open(lib, os.O_RDONLY))
    poller = select.poll()
    poller.register(watcher.fileno(), select.POLLIN)
    assert poller.poll(5000)
    events = watcher.read()
    assert [e.kind for e in events] == ["opened", "closed"]
    assert all(e.records == 100 for e in events)
