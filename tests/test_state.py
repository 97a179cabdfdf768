"""The state file's pure core (history <-> plain data, validation, bounds) and its I/O shell
(atomic write, capped read) on real files: a hostile, truncated or oversized file is one
StateError, never another exception, and a link planted in the directory is never followed."""

from __future__ import annotations

import json
import os
import random

import pytest

from inodewatch import state
from inodewatch.diff import TargetHistory
from inodewatch.model import FileId, Finding, MappedFile, find_divergence
from inodewatch.procfs import ProcessId
from inodewatch.state import StateError, StateFile, decode, encode_target, envelope, dump_target, loads

OLD, NEW, LIBC = FileId(0xFE00, 100), FileId(0xFE00, 200), FileId(0xFE00, 7)
P, ODD = b"/opt/demo/so.so", b"/opt/demo/caf\xe9\x1b.so"
IDENT = ProcessId(4242, 123456)
BOOT = "e4607659-021e-4092-9d2e-eea572962c47"


def mapping(file=OLD, path=P, deleted=False, size=15472, mtime=1):
    return MappedFile(path, file, ("r--p", "r-xp"), deleted, size, mtime)


def step(history, mapped, disk):
    history.learn(mapped)
    findings = find_divergence(mapped, [], disk.get, history.first_paths)
    return history.update(mapped, findings)


def round_trip(history, mapped=None, ident=IDENT, boot=BOOT):
    mapped = {m.file: m for m in (mapped or [])}
    text = envelope(boot, [dump_target(encode_target(ident, history, mapped))])
    saved = loads(text.encode("ascii"))
    assert saved.boot_id == boot and list(saved.targets) == [ident]
    return saved.targets[ident]


def a_rich_history():
    """A target that has seen everything: a replaced file awaiting reload (and its new
    version loaded beside it), an overwrite, a file with a non-UTF-8 name, and an fd on a
    deleted file."""
    h = TargetHistory()
    others = [mapping(LIBC, b"/usr/lib/libc.so.6", size=9, mtime=-5),
              mapping(FileId(0xFE00, 9), ODD, size=1, mtime=1)]
    disk = {b"/usr/lib/libc.so.6": LIBC, ODD: FileId(0xFE00, 9)}
    step(h, [mapping(), *others], {P: OLD, **disk})
    step(h, [mapping(deleted=True), mapping(NEW), *others], {P: NEW, **disk})
    assert {f.kind for f in h.live.values()} == {"deleted", "replaced", "duplicated"}
    assert h.overwrite(others[0], 11) is not None
    h.learn([mapping(deleted=True), mapping(NEW), *others], [(FileId(0xFE00, 55), b"/var/log/app.log")])
    h.live[("fd", "deleted", b"/var/log/app.log", 3, FileId(0xFE00, 55))] = Finding(
        "fd", "deleted", b"/var/log/app.log", FileId(0xFE00, 55), fd=3)
    return h


def assert_same(a: TargetHistory, b: TargetHistory):
    assert a.first_paths == b.first_paths
    assert a.contents == b.contents
    assert a.live == b.live
    assert {f: (e.level, e.name, e.fields) for f, e in a.overwritten.items()} == \
        {f: (e.level, e.name, e.fields) for f, e in b.overwritten.items()}
    assert a.awaiting_reload == b.awaiting_reload


def test_round_trip_keeps_every_part_of_the_history():
    h = TargetHistory()
    step(h, [mapping(), mapping(FileId(0xFE00, 9), ODD)], {P: OLD, ODD: FileId(0xFE00, 9)})
    step(h, [mapping(), mapping(FileId(0xFE00, 9), ODD)], {P: NEW, ODD: FileId(0xFE00, 9)})
    h.overwrite(mapping(FileId(0xFE00, 9), ODD), 99)
    h.learn([mapping(), mapping(FileId(0xFE00, 9), ODD)], [(FileId(1, 2), b"/var/log/a.log")])
    h.live[("fd", "renamed", b"/var/log/a.log", 3, FileId(1, 2))] = Finding(
        "fd", "renamed", b"/var/log/a.log", FileId(1, 2), new_path=b"/var/log/a.log.1", fd=3)
    assert h.awaiting_reload == {P: OLD} and h.overwritten and len(h.live) == 2
    assert_same(round_trip(h), h)


def test_the_saved_stamp_is_the_one_last_seen():
    """A touch seen live (IN_ATTRIB, no write) must not read as an overwrite after a restart:
    the file keeps the stamp of the latest snapshot."""
    h = TargetHistory()
    step(h, [mapping(mtime=1)], {P: OLD})
    back = round_trip(h, [mapping(mtime=2)])
    assert back.contents == {OLD: (15472, 2)}
    assert step(back, [mapping(mtime=2)], {P: OLD}) == []


def test_a_restored_history_reports_what_happened_meanwhile_once():
    h = TargetHistory()
    step(h, [mapping(), mapping(NEW, b"/opt/demo/b.so")], {P: OLD, b"/opt/demo/b.so": NEW})
    back = round_trip(h, [mapping(), mapping(NEW, b"/opt/demo/b.so")])
    # meanwhile: so.so written in place; b.so renamed to b.old and a new b.so copied in
    other = FileId(0xFE00, 300)
    now = [mapping(size=23696, mtime=9), mapping(NEW, b"/opt/demo/b.old")]
    events = step(back, now, {P: OLD, b"/opt/demo/b.so": other, b"/opt/demo/b.old": NEW})
    names = {(e.name, e.fields["path"]) for e in events}
    assert names == {("mapping.overwritten", P), ("mapping.renamed", b"/opt/demo/b.so"),
                     ("mapping.replaced", b"/opt/demo/b.so")}
    over = next(e for e in events if e.name == "mapping.overwritten")
    assert (over.level, over.fields["size_before"], over.fields["size_after"]) == ("critical", 15472, 23696)
    # and once only, across a second restart too
    again = round_trip(back, now)
    assert step(again, now, {P: OLD, b"/opt/demo/b.so": other, b"/opt/demo/b.old": NEW}) == []


def test_a_restored_history_compares_stamps_even_where_a_watch_is_in_place_now():
    """Two targets holding one file: the first's look after the restart puts a write watch
    on it, which saw nothing of the cp made while the daemon was down; the second target
    must still be told."""
    h = TargetHistory()
    step(h, [mapping()], {P: OLD})
    back = round_trip(h, [mapping()])
    watched = lambda m: True  # noqa: E731
    events = back.update([mapping(size=23696, mtime=9)], [], watched)
    assert [e.name for e in events] == ["mapping.overwritten"]
    live = TargetHistory()  # a history that was watching all along trusts its watch
    step(live, [mapping()], {P: OLD})
    assert live.update([mapping(size=23696, mtime=9)], [], watched) == []


def test_a_divergence_logged_before_the_restart_is_not_logged_again_but_its_reload_is():
    h = TargetHistory()
    step(h, [mapping()], {P: OLD})
    assert [e.name for e in step(h, [mapping(deleted=True)], {P: NEW})] == [
        "mapping.deleted", "mapping.replaced"]
    back = round_trip(h, [mapping(deleted=True)])
    assert step(back, [mapping(deleted=True)], {P: NEW}) == []
    assert [e.name for e in step(back, [mapping(NEW)], {P: NEW})] == ["mapping.reloaded"]


def test_revision_moves_only_when_the_history_changes():
    h = TargetHistory()
    step(h, [mapping()], {P: OLD})
    first = h.revision
    step(h, [mapping()], {P: OLD})
    assert h.revision == first  # the same snapshot again: nothing to write
    step(h, [mapping(deleted=True)], {P: NEW})
    assert h.revision > first


def valid_file() -> bytes:
    h = a_rich_history()
    return envelope(BOOT, [dump_target(encode_target(IDENT, h, {}))]).encode("ascii")


def test_every_truncation_is_a_state_error():
    raw = valid_file()
    assert loads(raw).targets
    for n in range(len(raw) - 1):  # the newline alone may go
        with pytest.raises(StateError):
            loads(raw[:n])


def mutate(obj, path, value):
    obj = json.loads(json.dumps(obj))
    node = obj
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return obj


HOSTILE = [
    (("format",), "other"),
    (("version",), 2),
    (("boot_id",), 7),
    (("targets",), {}),
    (("targets", 0, "pid"), True),
    (("targets", 0, "pid"), -1),
    (("targets", 0, "pid"), 2 ** 64),
    (("targets", 0, "start_time"), 1.5),
    (("targets", 0, "files"), "x"),
    (("targets", 0, "files", 0, "path"), "relative.so"),
    (("targets", 0, "files", 0, "path"), "/a\u0000b"),
    (("targets", 0, "files", 0, "path"), "/\ud800"),  # a surrogate no byte decodes to
    (("targets", 0, "files", 0, "path"), "/" + "a" * 5000),
    (("targets", 0, "files", 0, "ino"), None),
    (("targets", 0, "files", 0, "mapped"), "yes"),
    (("targets", 0, "files", 0, "size"), "big"),
    (("targets", 0, "live", 0, "subject"), "socket"),
    (("targets", 0, "live", 0, "kind"), "exploded"),
    (("targets", 0, "live", 0, "perms"), ["rwxrwx"]),
    (("targets", 0, "live", 0, "perms"), "r-xp"),
    (("targets", 0, "live", 0, "disk"), [1]),
    (("targets", 0, "live", 0, "fd"), 3),  # a mapping has no fd
    (("targets", 0, "overwritten", 0, "ino"), 999999),  # not among the files
    (("targets", 0, "overwritten", 0, "perms"), "r-xp," * 40),
    (("targets", 0, "awaiting", 0, "path"), ["/x"]),
    (("targets", 0, "awaiting"), [1, 2]),
]


@pytest.mark.parametrize("path,value", HOSTILE, ids=[".".join(map(str, p)) + "=" + repr(v)[:12]
                                                       for p, v in HOSTILE])
def test_a_hostile_value_is_a_state_error(path, value):
    data = json.loads(valid_file())
    assert data["targets"][0]["live"] and data["targets"][0]["overwritten"] and data["targets"][0]["awaiting"]
    with pytest.raises(StateError):
        decode(mutate(data, path, value))


@pytest.mark.parametrize("raw", [
    b"", b"\0\1\2garbage", b"[" * 100_000 + b"]" * 100_000, b'{"format": 1e400}', b"null",
    b"\xff\xfe{}", b'{"targets": [' + b"1" * 5000 + b"]}", b"NaN", "{\"é\": 1}".encode(),
], ids=["empty", "binary", "deep", "inf", "null", "bom", "long-int", "nan", "non-ascii"])
def test_garbage_is_a_state_error(raw):
    with pytest.raises(StateError):
        loads(raw)


def test_random_damage_is_a_state_error_or_a_valid_state():
    raw = valid_file()
    rng = random.Random(13)
    for _ in range(3000):
        damaged = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        try:
            saved = loads(bytes(damaged))
        except StateError:
            continue
        for history in saved.targets.values():  # whatever passed is usable
            history.stale()
            assert all(p.startswith(b"/") for p in history.first_paths.values())


def test_too_many_targets_or_files_is_refused_at_read():
    data = json.loads(valid_file())
    target = data["targets"][0]
    with pytest.raises(StateError, match="targets"):
        decode({**data, "targets": [target] * (state.MAX_TARGETS + 1)})
    with pytest.raises(StateError, match="files"):
        decode(mutate(data, ("targets", 0, "files"), [target["files"][0]] * (state.MAX_FILES + 1)))


def test_size_cap_at_read(tmp_path):
    big = tmp_path / "state.json"
    with open(big, "wb") as f:
        f.truncate(state.MAX_BYTES * 4)  # sparse: costs no disk
    raw = state.read_capped(str(big))
    assert len(raw) == state.MAX_BYTES + 1  # never more than the cap is read
    with pytest.raises(StateError, match="larger than"):
        loads(raw)
    loaded = StateFile(str(big), BOOT).load()
    assert loaded.targets == {} and "larger than" in loaded.problem and "\n" not in loaded.problem


def test_the_writer_keeps_within_the_caps(monkeypatch):
    h = TargetHistory()
    files = [mapping(FileId(1, i), b"/lib/%d.so" % i) for i in range(state.MAX_FILES + 50)]
    h.learn(files)
    step(h, [*files[:-1], mapping(FileId(1, len(files) - 1), files[-1].path, deleted=True)],
         {f.path: f.file for f in files})
    entry = encode_target(IDENT, h, {})
    assert len(entry["files"]) == state.MAX_FILES and entry["truncated"] is True
    # the diverged file is among those kept, though it came last
    assert files[-1].file.ino in {f["ino"] for f in entry["files"]} and entry["live"]
    assert json.loads(dump_target(encode_target(IDENT, TargetHistory(), {}))).get("truncated") is None


def test_the_writer_keeps_within_the_byte_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(state, "MAX_BYTES", 3000)
    sf = StateFile(str(tmp_path / "state.json"), BOOT)
    entries = []
    for pid in range(1, 40):
        h = TargetHistory()
        step(h, [mapping()], {P: OLD})
        entries.append((ProcessId(pid, 1), h, {}))
    assert sf.save(entries) is None
    raw = (tmp_path / "state.json").read_bytes()
    assert len(raw) <= 3000
    kept = loads(raw).targets
    assert 0 < len(kept) < 39 and ProcessId(1, 1) in kept  # the first ones, whole


def test_save_writes_only_on_change(tmp_path):
    path = tmp_path / "state.json"
    sf = StateFile(str(path), BOOT)
    h = TargetHistory()
    step(h, [mapping()], {P: OLD})
    sf.save([(IDENT, h, {OLD: mapping()})])
    first = os.stat(path)
    sf.save([(IDENT, h, {OLD: mapping()})])
    assert os.stat(path).st_ino == first.st_ino  # not rewritten
    sf.save([(IDENT, h, {OLD: mapping(mtime=5)})])  # a stamp seen changing: rewritten
    assert os.stat(path).st_ino != first.st_ino
    assert loads(path.read_bytes()).targets[IDENT].contents == {OLD: (15472, 5)}
    second = os.stat(path).st_ino
    step(h, [mapping(deleted=True)], {P: NEW})
    sf.save([(IDENT, h, {OLD: mapping(mtime=5)})])
    assert os.stat(path).st_ino != second and loads(path.read_bytes()).targets[IDENT].live
    assert sf.save([]) is None and loads(path.read_bytes()).targets == {}
    assert not (tmp_path / "state.json.tmp").exists()


def test_another_boot_gives_nothing_back(tmp_path):
    path = tmp_path / "state.json"
    h = TargetHistory()
    step(h, [mapping()], {P: OLD})
    StateFile(str(path), "an-earlier-boot").save([(IDENT, h, {})])
    loaded = StateFile(str(path), BOOT).load()
    assert loaded.targets == {} and list(loaded.other_boot) == [IDENT] and loaded.problem is None


def test_a_link_planted_where_the_temporary_file_goes_is_never_followed(tmp_path):
    victim = tmp_path / "shadow"
    victim.write_text("root:secret\n")
    path = tmp_path / "state.json"
    os.symlink(victim, str(path) + ".tmp")
    assert StateFile(str(path), BOOT).save([]) is None
    assert victim.read_text() == "root:secret\n"
    assert not os.path.islink(path) and loads(path.read_bytes()).targets == {}
    assert not os.path.lexists(str(path) + ".tmp")


def test_a_symlink_or_fifo_at_the_path_is_refused_and_replaced(tmp_path):
    victim = tmp_path / "shadow"
    victim.write_text("root:secret\n")
    path = tmp_path / "state.json"
    os.symlink(victim, path)
    sf = StateFile(str(path), BOOT)
    loaded = sf.load()
    assert loaded.targets == {} and "not used" in loaded.problem
    sf.save([])
    assert victim.read_text() == "root:secret\n" and not os.path.islink(path)
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    assert "not a regular file" in StateFile(str(fifo), BOOT).load().problem  # and did not block


def test_a_failing_write_is_said_once_and_its_recovery_too(tmp_path):
    missing = tmp_path / "not-yet"
    sf = StateFile(str(missing / "state.json"), BOOT)
    level, event, detail = sf.save([])
    assert (level, event) == ("warning", "watch.degraded") and str(missing) in detail
    assert sf.save([]) is None  # not again at every second
    missing.mkdir()
    assert sf.save([])[:2] == ("info", "watch.recovered")
    assert sf.save([]) is None
