"""From successive snapshots of one target to events: state changes only, each logged once.

`TargetHistory` remembers what the daemon has seen of a target (the first name of each file,
its size and mtime then, the divergences now live) and turns each new snapshot into the
events of the contract (inodewatch.events).  No I/O: the daemon feeds it snapshots and findings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from inodewatch.model import UNKNOWN, FileId, Finding, MappedFile, OpenFile, same_file


@dataclass(frozen=True)
class Event:
    """One line of the event log, paths still as bytes."""

    level: str
    name: str
    fields: dict[str, Any]


FindingKey = tuple[str, str, bytes, int | None, FileId]


def finding_key(f: Finding) -> FindingKey:
    return (f.subject, f.kind, f.path, f.fd, f.mapped)


def finding_event(f: Finding) -> Event:
    return Event(f.level, f.event, f.fields())


def content_event(f: Finding) -> Event:
    """mapping.content / fd.content: the content of a divergence first judged unknown (the
    file at the path was still being written), now known; `kind` names the divergence."""
    return Event(f.level, f"{f.subject}.content", {"kind": f.kind, **f.fields()})


def reloaded(path: bytes, old: FileId, new: FileId) -> Event:
    return Event("info", "mapping.reloaded", {"path": path, "old_ino": old.ino, "new_ino": new.ino})


def overwritten_event(file: FileId, path: bytes, perms: str, size_before: int | None,
                      size_after: int | None, truncated: bool = False) -> Event:
    """mapping.overwritten: the held inode's data was written or truncated in place (the
    crash case).  `size_after` is None while the writer still has the file open (see
    TargetHistory.write_closed); `truncated`: its size was seen below `size_before` first."""
    return Event("critical", "mapping.overwritten", {
        "path": path,
        "mapped_dev": file.dev_text,
        "mapped_ino": file.ino,
        "perms": perms,
        "size_before": size_before,
        "size_after": size_after,
        "truncated": truncated,
    })


@dataclass
class TargetHistory:
    """What the daemon knows of one target across snapshots."""

    first_paths: dict[FileId, bytes] = field(default_factory=dict)
    contents: dict[FileId, tuple[int | None, int | None]] = field(default_factory=dict)  # size, mtime
    live: dict[FindingKey, Finding] = field(default_factory=dict)
    # a live divergence whose content was unknown -> what its path's file was when judged
    # (inode, size, mtime): judged again once that changes (a file still being written)
    unknown_at: dict[FindingKey, object] = field(default_factory=dict)
    overwritten: dict[FileId, Event] = field(default_factory=dict)
    # the overwrites seen as they began (IN_MODIFY), whose writer has not closed the file yet
    writing: set[FileId] = field(default_factory=set)
    # path -> the inode the target held there when it diverged, until it maps the new one
    awaiting_reload: dict[bytes, FileId] = field(default_factory=dict)
    # path -> the inode mapped there at the last snapshot (a reload between two looks)
    mapped_at: dict[bytes, FileId] = field(default_factory=dict)
    # path -> the inode mapped there until the last snapshot, which mapped nothing there: a
    # look that fell between a host's dlclose and its dlopen of the replacement.  Kept for
    # one snapshot only (a plugin unloaded for good is forgotten at the next).
    unmapped_at: dict[bytes, FileId] = field(default_factory=dict)
    # Bumped whenever what is above changes: the state file (inodewatch.state) is rewritten
    # only then, without comparing every target's files once a second.
    revision: int = 0
    # Writes may have happened with no watch to see them (a history restored after the
    # daemon's restart): the next update compares every file's stamp, watched or not.
    unseen_writes: bool = False

    def learn(self, mapped: list[MappedFile], paths: Iterable[tuple[FileId, bytes]] = ()) -> None:
        """Record the first name and the contents' stamp of every file not seen before, and
        forget the files no longer held: a file system hands a freed inode number to the next
        new file, which must not inherit the old one's name or size."""
        paths = list(paths)
        held = {m.file for m in mapped} | {file for file, _ in paths}
        gone = [f for f in self.first_paths if f not in held]
        for file in gone:
            del self.first_paths[file]
            self.contents.pop(file, None)
            self.overwritten.pop(file, None)
            self.writing.discard(file)
        known = (len(self.first_paths), len(self.contents))
        for m in mapped:
            self.first_paths.setdefault(m.file, m.path)
            self.contents.setdefault(m.file, (m.size, m.mtime_ns))
        for file, path in paths:
            self.first_paths.setdefault(file, path)
        if gone or known != (len(self.first_paths), len(self.contents)):
            self.revision += 1

    def first_path(self, held: MappedFile | OpenFile) -> bytes:
        """The name the file had when first seen (its current one if it is new)."""
        return self.first_paths.get(held.file, held.path)

    def overwrite(self, m: MappedFile, size_after: int | None) -> Event | None:
        """The held inode was written in place, seen after the fact (a changed stamp): the
        crash case, its size now the size after.  Logged once per inode."""
        return self._overwrite(m, size_after, None)

    def write_began(self, m: MappedFile, size_now: int | None) -> Event | None:
        """The held inode's data is being written or truncated (IN_MODIFY, which a touch or
        an open for writing alone never raises): the crash case, logged at once, before the
        crash can come; the size after waits for the writer's close (`write_closed`).  A
        size below the one before means the writer truncated it first (cp's O_TRUNC), when
        the daemon looked before the rewrite was over."""
        return self._overwrite(m, None, size_now)

    def _overwrite(self, m: MappedFile, size_after: int | None,
                   size_now: int | None) -> Event | None:
        file = m.file
        if file in self.overwritten or file not in self.contents:
            return None
        before = self.contents[file][0]
        truncated = size_now is not None and before is not None and size_now < before
        event = overwritten_event(file, self.first_paths[file], ",".join(m.perms), before,
                                  size_after, truncated)
        self.overwritten[file] = event
        if size_after is None:
            self.writing.add(file)
        self.revision += 1
        return event

    def write_closed(self, file: FileId, size_after: int | None) -> Event | None:
        """The writer of an overwrite seen as it began closed the file (IN_CLOSE_WRITE):
        mapping.overwrite_closed with the size it left, which the overwrite's own record
        (target.exited's `stale`, the state file) takes too.  None for any other close
        (a touch, `: >>`, a second writer)."""
        if file not in self.writing:
            return None
        self.writing.discard(file)
        told = self.overwritten[file]
        fields = {**told.fields, "size_after": size_after}
        self.overwritten[file] = Event(told.level, told.name, fields)
        self.revision += 1
        return Event("warning", "mapping.overwrite_closed",
                     {k: fields[k] for k in ("path", "mapped_dev", "mapped_ino", "size_before",
                                             "size_after", "truncated")})

    def stamp_check(self, mapped: Iterable[MappedFile],
                    now_at: Callable[[bytes], tuple[Any, FileId] | None]) -> list[Event]:
        """The in-place writes inotify may have missed (its queue overflowed, or the daemon
        was paused): a file still at its first path, the same inode, with another size or
        mtime than when first seen.  `mapped` is the last snapshot (the target may be dead
        by now); `now_at(path)` is (os.stat_result, FileId) of what the path names, or None."""
        events = []
        for m in mapped:
            if m.file in self.overwritten or m.file not in self.contents:
                continue
            found = now_at(self.first_paths[m.file])
            if found is None or not same_file(found[1], m.file):
                continue
            st = found[0]
            if (st.st_size, st.st_mtime_ns) != self.contents[m.file]:
                if (event := self.overwrite(m, st.st_size)) is not None:
                    events.append(event)
        return events

    def update(self, mapped: list[MappedFile], findings: list[Finding],
               write_watched: Callable[[MappedFile], bool] = lambda m: False,
               judge: Callable[[Finding], Finding] = lambda f: f,
               stamp_at: Callable[[bytes], object] = lambda path: None) -> list[Event]:
        """The events that this snapshot's findings mean, given what was seen before.

        `judge` gives a new finding its content (inodewatch.contentpass): called once per
        divergence, when it is first seen; a live one keeps what it was told with, unless
        its content was unknown and the file at its path has changed since (`stamp_at(path)`,
        taken before the judging: e.g. its inode, size and mtime): `rm; cp` is seen when cp
        creates the file, still empty; judged again once written, the verdict known is
        logged as mapping.content (fd.content).

        A changed size or mtime means an in-place write only for a file inotify is not
        watching for writes: where it is, its IN_MODIFY is the evidence, and a stamp that
        differs is more likely a freed inode number given to a new file (`write_watched`).
        Not after `unseen_writes`: a watch added since (for another target holding the same
        file) saw nothing of a write made before it.
        """
        events: list[Event] = []
        every_file, self.unseen_writes = self.unseen_writes, False
        for m in mapped:
            if m.file not in self.contents or (m.size, m.mtime_ns) == self.contents[m.file]:
                continue
            if m.mtime_ns is None:
                # Its stamp is unknown (no map_files, and the path names another file now:
                # rm+cp, mv over): nothing says it was written.  Not a changed stamp.
                continue
            if every_file or not write_watched(m):
                if (event := self.overwrite(m, m.size)) is not None:
                    events.append(event)
            elif m.size == self.contents[m.file][0]:
                # Watched, and only its mtime moved: a touch (a write raises IN_MODIFY, told
                # by the daemon).  That is its stamp from now on, or it would read as an
                # overwrite once the watch moves on (the path replaced: an upgrade).  A size
                # that moved stays unrefreshed: size_before must be the size before the write.
                self.contents[m.file] = (m.size, m.mtime_ns)
                self.revision += 1
        current = {finding_key(f): f for f in findings}
        unknown_at: dict[FindingKey, object] = {}
        # a deleted inode with a new file at its path is also replaced: that one tells
        replaced = {(f.mapped, f.path, f.fd) for f in findings if f.kind == "replaced"}
        for key, f in current.items():
            if key in self.live:
                current[key] = self.live[key]
                if key in self.unknown_at and not (f.kind == "deleted"
                                                   and (f.mapped, f.path, f.fd) in replaced):
                    if (stamp := stamp_at(f.path)) == self.unknown_at[key]:
                        unknown_at[key] = stamp
                    elif (again := judge(f)).content is not None and again.content.verdict == UNKNOWN:
                        unknown_at[key] = stamp
                    else:
                        current[key] = again
                        events.append(content_event(again))
                continue
            stamp = stamp_at(f.path)
            f = current[key] = judge(f)
            if f.content is not None and f.content.verdict == UNKNOWN:
                unknown_at[key] = stamp
            if f.subject == "mapping":
                old = self.awaiting_reload.get(f.path)
                if old is not None and old != f.mapped:
                    # It diverges again before we saw it in step: it did load f.mapped.
                    events.append(reloaded(f.path, old, f.mapped))
                self.awaiting_reload[f.path] = f.mapped
            events.append(finding_event(f))
        if current.keys() != self.live.keys():
            self.revision += 1
        self.live, self.unknown_at = current, unknown_at
        diverged_paths = {f.path for f in findings if f.subject == "mapping"}
        held = {m.file for m in mapped}
        mapped_at: dict[bytes, FileId] = {}
        for m in mapped:
            path = self.first_path(m)
            mapped_at[path] = m.file
            old = self.awaiting_reload.get(path)
            if old is not None and m.file != old and path not in diverged_paths:
                del self.awaiting_reload[path]
                self.revision += 1
                events.append(reloaded(path, old, m.file))
            elif (old is None and (before := self.mapped_at.get(path, self.unmapped_at.get(path)))
                  is not None
                  and before not in held and not same_file(before, m.file)
                  and path not in diverged_paths):
                # Replaced and reloaded between two looks (the daemon paused, or a host
                # faster than its re-read): the divergence was never seen, the reload is.
                events.append(reloaded(path, before, m.file))
        self.unmapped_at = {p: f for p, f in self.mapped_at.items() if p not in mapped_at}
        self.mapped_at = mapped_at
        return events

    def stale(self) -> list[dict[str, Any]]:
        """The divergences live now, for target.exited."""
        out = [{"event": f.event, **f.fields()} for f in self.live.values()]
        out += [{"event": e.name, **e.fields} for e in self.overwritten.values()]
        return out
