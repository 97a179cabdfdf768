"""The guard's bookkeeping in the daemon (inodewatch.guardmarks), on a recording stand-in for
the guard: which mapped files are wanted, one mark per inode whoever maps it, marks gone with
the last target, and what a refusal tells each target."""

from __future__ import annotations

import errno

from inodewatch.guard import REFUSED, UNKNOWN, Refusal
from inodewatch.guardmarks import GuardMarks, refusal_events, wanted_marks
from inodewatch.model import FileId, MappedFile

PLUGIN = b"/opt/app/plugins/so.so"
NGINX_MODULE = b"/usr/lib/nginx/modules/ngx_http_echo_module.so"
LIBC = b"/usr/lib/x86_64-linux-gnu/libc.so.6"
LIBSSL = b"/usr/lib/x86_64-linux-gnu/libssl.so.3"
A, B, C = FileId(65024, 10), FileId(65024, 11), FileId(65024, 12)


def mapped(path: bytes, file: FileId, deleted: bool = False) -> MappedFile:
    return MappedFile(path, file, ("r--p", "r-xp"), deleted, 15472, 1)


class Recorder:
    def __init__(self, refuse: dict[bytes, OSError] | None = None, gone: set[bytes] = frozenset()) -> None:
        self.calls: list[tuple] = []
        self.refuse = refuse or {}
        self.gone = gone

    def guard(self, path: bytes, dev: int, ino: int) -> bool:
        self.calls.append(("guard", path, ino))
        if path in self.refuse:
            raise self.refuse[path]
        return path not in self.gone

    def unguard(self, dev: int, ino: int) -> None:
        self.calls.append(("unguard", ino))


def test_only_live_guardable_files_still_at_their_path_on_trusted_mounts_are_wanted():
    disk = {PLUGIN: A, NGINX_MODULE: B, LIBSSL: C, b"/fuse/x.so": FileId(1, 5)}
    maps = [mapped(PLUGIN, A), mapped(NGINX_MODULE, B), mapped(LIBSSL, C),
            mapped(LIBC, FileId(65024, 13)),
            mapped(b"/opt/app/old.so", FileId(65024, 14), deleted=True),
            mapped(b"/opt/app/replaced.so", FileId(65024, 15)),  # the path names another now
            mapped(b"/fuse/x.so", FileId(1, 5))]
    wanted = wanted_marks(maps, b"", disk.get, lambda p: not p.startswith(b"/fuse/"))
    assert wanted == {A: PLUGIN, B: NGINX_MODULE}
    widened = wanted_marks(maps, b"/proc/42/root", disk.get, lambda p: True,
                           widen=[b"/usr/lib/x86_64-linux-gnu"])
    assert widened[C] == b"/proc/42/root" + LIBSSL  # widened; libc never
    assert FileId(65024, 13) not in widened
    only = wanted_marks(maps, b"", disk.get, lambda p: True, only={NGINX_MODULE})
    assert only == {B: NGINX_MODULE}


def test_the_inode_as_stat_names_it_is_marked_when_the_maps_device_differs():
    on_disk = FileId(42, A.ino)  # overlayfs before 6.8: another st_dev for the same file
    assert wanted_marks([mapped(PLUGIN, A)], b"", {PLUGIN: on_disk}.get, lambda p: True) == {on_disk: PLUGIN}


def test_one_mark_per_inode_whoever_maps_it_gone_with_the_last_target():
    rec = Recorder()
    marks = GuardMarks(rec)
    assert marks.sync(1, {A: PLUGIN}) == []
    marks.sync(2, {A: PLUGIN, B: NGINX_MODULE})
    marks.sync(1, {A: PLUGIN})  # nothing new: no call
    assert rec.calls == [("guard", PLUGIN, A.ino), ("guard", NGINX_MODULE, B.ino)]
    assert marks.holders(A) == {1, 2} and marks.marked() == 2
    marks.sync(1, {})  # reloaded another file, say
    assert rec.calls[-1] == ("guard", NGINX_MODULE, B.ino)  # A still held by 2
    marks.drop(2)
    assert sorted(rec.calls[-2:]) == [("unguard", A.ino), ("unguard", B.ino)]
    assert marks.marked() == 0 and marks.held == {}
    assert marks.holders(A) == {2}  # a refusal still on its way names who it protected


def test_a_refused_or_vanished_mark_is_not_held_and_is_tried_again():
    full = OSError(errno.ENOSPC, "No space left on device")
    rec = Recorder(refuse={PLUGIN: full}, gone={NGINX_MODULE})
    marks = GuardMarks(rec)
    assert marks.sync(1, {A: PLUGIN, B: NGINX_MODULE}) == [(PLUGIN, full)]
    assert marks.marked() == 0 and marks.held == {}
    rec.refuse = {}
    marks.sync(1, {A: PLUGIN})
    assert marks.holders(A) == {1} and rec.calls.count(("guard", PLUGIN, A.ino)) == 2


def refusal(outcome: str = REFUSED, flags: int | None = 0o1001) -> Refusal:
    return Refusal(outcome, 4242, 4242, b"cp", b"/usr/bin/cp", [b"cp", b"new.so", PLUGIN], False,
                   A, PLUGIN, flags, 257, 1764755818.5)


def test_a_refusal_is_one_critical_line_per_target_it_protected():
    held = {7: mapped(PLUGIN, A), 3: None}  # 3: unmapped a moment ago
    events = refusal_events(refusal(), held, errno.ETXTBSY)
    assert [pid for pid, _ in events] == [3, 7]
    for _pid, event in events:
        assert (event.level, event.name) == ("critical", "mapping.write_refused")
        assert event.fields["writer_comm"] == b"cp" and event.fields["errno"] == "ETXTBSY"
        assert event.fields["flags"] == "O_WRONLY|O_TRUNC"
        assert event.fields["mapped_ino"] == A.ino and event.fields["path"] == PLUGIN
        assert "mv" in event.fields["detail"]


def test_an_unjudged_open_is_one_warning_naming_the_targets():
    [(pid, event)] = refusal_events(refusal(UNKNOWN, None), {7: mapped(PLUGIN, A), 9: None}, errno.EPERM)
    assert pid == 0 and (event.level, event.name) == ("warning", "guard.unjudged")
    assert event.fields["pids"] == [7, 9] and event.fields["writer_pid"] == 4242
