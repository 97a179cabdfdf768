"""The state file: what the daemon knows of each target, kept across its restarts.

A daemon killed (`kill -9`, the OOM killer, a crash) and started again would otherwise meet its
targets as strangers: a `cp` over a mapped file, or `mv so.so old.so; cp new so.so`, done
while it was down leaves nothing a fresh look can tell from an intact file.  So the daemon
keeps, per target, its identity (pid + start time, and the boot), the inodes it holds with
their first paths and the size and mtime last seen, the divergences already logged and the
reloads awaited, in `--state-file PATH`; a restarted daemon gives a target with the same
identity its history back, and its first look reports what changed meanwhile, once.

Pure core: `encode_target` / `decode` between `diff.TargetHistory` and plain JSON-able data,
`decode` validating every field (any violation is a `StateError`, the whole file is then
ignored).  Thin I/O shell: `StateFile` reads with a size cap, never following a symlink and
never blocking on a FIFO, and writes atomically: a temporary file in the same directory
(created O_EXCL | O_NOFOLLOW, so a link planted there is removed, never followed), fsync,
rename, fsync of the directory.

Bounds: at most MAX_TARGETS targets and MAX_FILES files (and as many live divergences,
overwrites and awaited reloads) per target, paths of at most MAX_PATH bytes, MAX_BYTES in all;
what does not fit is left out (those files are then met afresh after a restart) and the
target's entry says `"truncated": true`.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from inodewatch.atomicfile import write_atomic
from inodewatch.diff import Event, TargetHistory, finding_key, overwritten_event
from inodewatch.events import FINDING_KINDS, SUBJECTS
from inodewatch.model import FileId, Finding, MappedFile
from inodewatch.procfs import ProcessId

FORMAT = "inodewatch-state"
VERSION = 1
MAX_BYTES = 8 * 1024 * 1024
MAX_TARGETS = 1024
MAX_FILES = 1024
MAX_PATH = 4096
# Rewritten at most this often (seconds), and at a clean stop; and, for a big file (500
# targets: 2.7 MB, ~12 ms with its fsync), so that writing it takes at most this share of the
# time.
SAVE_EVERY = 1.0
SAVE_SHARE = 0.01
BOOT_ID = "/proc/sys/kernel/random/boot_id"

MAX_INT = 2 ** 64

Stamp = tuple[int | None, int | None]  # size, mtime_ns
Entry = tuple[ProcessId, TargetHistory, Mapping[FileId, MappedFile]]


class StateError(Exception):
    """The state file cannot be used (message is a short phrase, never its contents)."""


# --- the pure core: history <-> plain data ---------------------------------------------------

def _text(path: bytes) -> str:
    # Any bytes, exactly: non-UTF-8 bytes become lone surrogates, which json.dumps writes as
    # \udcNN escapes, so the file stays ASCII.
    return path.decode("utf-8", "surrogateescape")


def _file(file: FileId) -> dict[str, int]:
    return {"dev": file.dev, "ino": file.ino}


def _encode_finding(f: Finding) -> dict[str, Any]:
    return {"subject": f.subject, "kind": f.kind, "path": _text(f.path), **_file(f.mapped),
            "disk": None if f.disk is None else [f.disk.dev, f.disk.ino],
            "new_path": None if f.new_path is None else _text(f.new_path),
            "perms": list(f.perms), "fd": f.fd}


def encode_target(ident: ProcessId, history: TargetHistory,
                  mapped: Mapping[FileId, MappedFile]) -> dict[str, Any]:
    """One target as plain data.  The stamp saved is the one last seen (`mapped`, the
    target's latest snapshot), so a `touch` seen live is not an overwrite after a restart."""
    short = {f: p for f, p in history.first_paths.items() if len(p) <= MAX_PATH}
    # What is diverged or overwritten first: under the cap, those must survive.
    wanted = set(history.overwritten) | {f.mapped for f in history.live.values()}
    order = sorted(short, key=lambda f: f not in wanted)[:MAX_FILES]
    kept = set(order)
    files = []
    for file in order:
        stamp: Stamp | None = history.contents.get(file)
        if stamp is not None and file in mapped:
            stamp = (mapped[file].size, mapped[file].mtime_ns)
        files.append({**_file(file), "path": _text(short[file]),
                      "size": None if stamp is None else stamp[0],
                      "mtime_ns": None if stamp is None else stamp[1],
                      "mapped": stamp is not None})
    live = [_encode_finding(f) for f in history.live.values()
            if f.mapped in kept and len(f.path) <= MAX_PATH
            and (f.new_path is None or len(f.new_path) <= MAX_PATH)]
    overwritten = [{**_file(file), "perms": e.fields["perms"], "size_before": e.fields["size_before"],
                    "size_after": e.fields["size_after"], "truncated": e.fields["truncated"]}
                   for file, e in history.overwritten.items() if file in kept]
    awaiting = [{"path": _text(p), **_file(f)} for p, f in history.awaiting_reload.items()
                if len(p) <= MAX_PATH][:MAX_FILES]
    out: dict[str, Any] = {"pid": ident.pid, "start_time": ident.start_time, "files": files,
                           "live": live, "overwritten": overwritten, "awaiting": awaiting}
    if (len(order) < len(history.first_paths) or len(live) < len(history.live)
            or len(overwritten) < len(history.overwritten)
            or len(awaiting) < len(history.awaiting_reload)):
        out["truncated"] = True
    return out


def envelope(boot_id: str, target_chunks: Iterable[str]) -> str:
    """The whole file, from each target's JSON text (encoded apart, so an unchanged target
    is not encoded again)."""
    head = json.dumps({"format": FORMAT, "version": VERSION, "boot_id": boot_id})
    return f'{head[:-1]}, "targets": [{", ".join(target_chunks)}]}}\n'


def dump_target(entry: dict[str, Any]) -> str:
    return json.dumps(entry, ensure_ascii=True, allow_nan=False, separators=(",", ":"))


@dataclass
class Saved:
    """What a state file holds: the boot it was written in and each target's history."""

    boot_id: str
    targets: dict[ProcessId, TargetHistory] = field(default_factory=dict)


def _int(obj: Mapping[str, Any], key: str, *, signed: bool = False, optional: bool = False) -> Any:
    value = obj.get(key)
    if value is None and optional:
        return None
    # type() is int: JSON's true is no number, and 1e400 (inf) no integer.
    if type(value) is not int or not (-MAX_INT if signed else 0) <= value < MAX_INT:
        raise StateError(f"{key!r} is not a valid number")
    return value


def _path(obj: Mapping[str, Any], key: str, *, optional: bool = False) -> bytes | None:
    value = obj.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.startswith("/"):
        raise StateError(f"{key!r} is not a path")
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise StateError(f"{key!r} is not a path") from None
    if len(raw) > MAX_PATH or b"\0" in raw:
        raise StateError(f"{key!r} is not a path")
    return raw


def _list(obj: Mapping[str, Any], key: str) -> list[Any]:
    value = obj.get(key)
    if not isinstance(value, list) or len(value) > MAX_FILES:
        raise StateError(f"{key!r} is not a list of at most {MAX_FILES}")
    if not all(isinstance(item, dict) for item in value):
        raise StateError(f"{key!r} holds something other than objects")
    return value


def _perm(value: Any) -> str:
    if (not isinstance(value, str) or len(value) != 4 or value[0] not in "r-" or value[1] not in "w-"
            or value[2] not in "x-" or value[3] not in "ps"):
        raise StateError("'perms' is not a list of permissions")
    return value


def _fileid(obj: Mapping[str, Any]) -> FileId:
    return FileId(_int(obj, "dev"), _int(obj, "ino"))


def _decode_finding(obj: Mapping[str, Any]) -> Finding:
    subject, kind = obj.get("subject"), obj.get("kind")
    if subject not in SUBJECTS or kind not in FINDING_KINDS:
        raise StateError("a live divergence of unknown kind")
    disk = obj.get("disk")
    if disk is not None:
        if not isinstance(disk, list) or len(disk) != 2:
            raise StateError("'disk' is not an inode")
        disk = _fileid({"dev": disk[0], "ino": disk[1]})
    perms = obj.get("perms")
    if not isinstance(perms, list) or len(perms) > 16:
        raise StateError("'perms' is not a list of permissions")
    fd = _int(obj, "fd", optional=True)
    if (fd is None) != (subject == "mapping"):
        raise StateError("'fd' does not match the subject")
    return Finding(subject, kind, _path(obj, "path"), _fileid(obj), disk,
                   _path(obj, "new_path", optional=True), tuple(_perm(p) for p in perms), fd)


def _decode_overwrite(obj: Mapping[str, Any], first_paths: Mapping[FileId, bytes]) -> tuple[FileId, Event]:
    file = _fileid(obj)
    perms = obj.get("perms")
    if not isinstance(perms, str) or len(perms) > 80:
        raise StateError("'perms' is not a list of permissions")
    for perm in perms.split(","):
        _perm(perm)
    if file not in first_paths:
        raise StateError("an overwrite of a file not listed")
    return file, overwritten_event(file, first_paths[file], perms,
                                   _int(obj, "size_before", optional=True),
                                   _int(obj, "size_after", optional=True),
                                   obj.get("truncated") is True)


def decode_target(obj: Any) -> tuple[ProcessId, TargetHistory]:
    if not isinstance(obj, dict):
        raise StateError("a target is not an object")
    ident = ProcessId(_int(obj, "pid"), _int(obj, "start_time"))
    history = TargetHistory(unseen_writes=True)  # the daemon was down: nothing watched
    for f in _list(obj, "files"):
        file, path = _fileid(f), _path(f, "path")
        history.first_paths[file] = path  # type: ignore[assignment]  # not optional: never None
        if f.get("mapped") is True:
            history.contents[file] = (_int(f, "size", optional=True),
                                      _int(f, "mtime_ns", signed=True, optional=True))
        elif f.get("mapped") is not False:
            raise StateError("'mapped' is not true or false")
    for f in _list(obj, "live"):
        finding = _decode_finding(f)
        history.live[finding_key(finding)] = finding
    for f in _list(obj, "overwritten"):
        file, event = _decode_overwrite(f, history.first_paths)
        history.overwritten[file] = event
    for f in _list(obj, "awaiting"):
        history.awaiting_reload[_path(f, "path")] = _fileid(f)  # type: ignore[index]
    return ident, history


def decode(data: Any) -> Saved:
    """Check and read a parsed state file; StateError on anything unexpected."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise StateError("not an inodewatch state file")
    if data.get("version") != VERSION:
        raise StateError("a state file of another version")
    boot_id = data.get("boot_id")
    targets = data.get("targets")
    if not isinstance(boot_id, str) or len(boot_id) > 64:
        raise StateError("'boot_id' is not valid")
    if not isinstance(targets, list) or len(targets) > MAX_TARGETS:
        raise StateError(f"'targets' is not a list of at most {MAX_TARGETS}")
    return Saved(boot_id, dict(decode_target(t) for t in targets))


def loads(raw: bytes) -> Saved:
    """The state file's bytes, parsed and checked."""
    if len(raw) > MAX_BYTES:
        raise StateError(f"larger than {MAX_BYTES} bytes")
    try:
        data = json.loads(raw.decode("ascii"))
    except UnicodeDecodeError:
        raise StateError("not ASCII JSON") from None
    except RecursionError:
        raise StateError("nested too deeply") from None
    except ValueError as exc:  # json's errors say where, never what was there
        raise StateError(f"not JSON ({type(exc).__name__} at byte {getattr(exc, 'pos', '?')})") from None
    return decode(data)


# --- the I/O shell ---------------------------------------------------------------------------

def read_boot_id() -> str:
    try:
        with open(BOOT_ID) as f:
            return f.read().strip()
    except OSError:
        return ""


def read_capped(path: str, cap: int = MAX_BYTES) -> bytes | None:
    """The file's bytes (None if there is none), at most cap + 1 of them.  A symlink is
    refused (O_NOFOLLOW), and a FIFO or a device neither blocks nor is read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise StateError("not a regular file")
        chunks = []
        left = cap + 1
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


@dataclass
class Loaded:
    """A state file read at start: histories to give back to targets of this boot, targets
    of another boot (all gone), and the one-line problem if the file was unusable."""

    targets: dict[ProcessId, TargetHistory] = field(default_factory=dict)
    other_boot: dict[ProcessId, TargetHistory] = field(default_factory=dict)
    problem: str | None = None


class StateFile:
    """`--state-file PATH`: read once at start, rewritten when what it holds changes."""

    def __init__(self, path: str, boot_id: str | None = None) -> None:
        self.path = path
        self.boot_id = read_boot_id() if boot_id is None else boot_id
        self.failing = False
        # ident -> (the snapshot it was encoded from, its mark, its JSON text), and the marks
        # last written: an unchanged daemon writes nothing.
        self.chunks: dict[ProcessId, tuple[Mapping[FileId, MappedFile], Any, str]] = {}
        self.written: list[tuple[ProcessId, Any]] | None = None

    def load(self) -> Loaded:
        try:
            raw = read_capped(self.path)
            if raw is None:
                return Loaded()
            saved = loads(raw)
        except (OSError, StateError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            return Loaded(problem=f"state file {self.path} not used ({reason}): starting "
                                  "without the history saved before the restart")
        if saved.boot_id != self.boot_id:
            return Loaded(other_boot=saved.targets)
        return Loaded(targets=saved.targets)

    def save(self, entries: Iterable[Entry]) -> tuple[str, str, str] | None:
        """Write the file if what it would hold changed.  Returns (level, event, detail) to
        log when writing starts failing (watch.degraded) or works again (watch.recovered)."""
        marks, chunks, budget = [], [], MAX_BYTES - 200
        for ident, history, mapped in list(entries)[:MAX_TARGETS]:
            cached = self.chunks.get(ident)
            if cached is not None and cached[0] is mapped and cached[1][0] == history.revision:
                mark, text = cached[1], cached[2]  # no look since: the stamps cannot differ
            else:
                # The history's revision, and the stamps last seen (a touch changes only those).
                mark = (history.revision, tuple((m.size, m.mtime_ns) for m in mapped.values()))
                if cached is not None and cached[1] == mark:
                    text = cached[2]
                else:
                    text = dump_target(encode_target(ident, history, mapped))
                self.chunks[ident] = (mapped, mark, text)
            if len(text) + 2 > budget:
                continue  # too big for what is left: this target restarts afresh
            budget -= len(text) + 2
            marks.append((ident, mark))
            chunks.append(text)
        if marks == self.written:
            return None
        self.chunks = {ident: self.chunks[ident] for ident, _ in marks}
        try:
            write_atomic(self.path, envelope(self.boot_id, chunks).encode("ascii"))
        except OSError as exc:
            if self.failing:
                return None
            self.failing = True
            return ("warning", "watch.degraded",
                    f"cannot write state file {self.path} ({exc.strerror or exc}): a restart "
                    "would not know what was seen before it; still watching")
        self.written = marks
        if self.failing:
            self.failing = False
            return ("info", "watch.recovered", f"state file {self.path} written again")
        return None
