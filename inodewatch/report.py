"""Post-mortem: from the daemon's JSON-lines logs, per target a timeline and one verdict.

`inodewatch report LOG ... [--json] [--pid PID] [--since T] [--until T]`

Input.  Each LOG is a plain or gzip file, e.g. logrotate's `events.json.2.gz events.json.1
events.json` in any order, read as one stream of events in time order by inodewatch.logread
(lines capped at 1 MiB, bad lines counted and skipped; see its docstring).  Nothing is held
whole: the report is built as the events stream past, in bounded memory.

Targets.  Every event with a `pid` belongs to one target *life*, of that pid on the line's
`host` (every daemon line names it; lines without, from older daemons, are one host of their
own, None): pid 1234 on web-1 and pid 1234 on web-2 are two targets, whatever the order their
logs interleave in.  A `target.attached` after that pid's `target.exited` (or `target.lost`),
or with another `start_time`, starts a new one (pid reuse).  A re-attach of the same process (the daemon restarted) continues the life.  Each life
is followed incrementally (Timeline): what its verdict needs is kept as the events come, and
of its events in the window the first FIRST_SHOWN and the last LAST_SHOWN are kept for the
timeline, with the number of those in between ("... 12,345 events not shown ...").

Verdicts: one sentence per life (`outcome` names the case in JSON), judged on the life's events
up to --until; --since only trims the timeline shown, so a file replaced before it still counts.

  crashed_after_overwrite  killed by a fault signal (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP,
      SIGSYS: FAULT_SIGNALS) after a file it mapped was overwritten in place:
      "pid 38314 (reload) was killed by SIGSEGV 1.2 s after /opt/demo/so.so (inode 2146358,
      mapped r--p,r-xp,rw-p) was overwritten in place" (perms from a mapping event or `stale`)
  killed         "pid 7 (nginx) was killed by SIGKILL, while running 1 stale file: /x.so (deleted)"
                 (also after an overwrite: a SIGKILL or SIGTERM is never its symptom)
  exited         "pid 7 (nginx) exited with status 0" (+ the same clause when `stale` is not empty)
  exit_unknown   the exit was seen through a pidfd only, without its status
  lost           "pid 7 (nginx) ended while the daemon was not running, how is unknown" (a
                 restarted daemon's target.lost; + the stale clause)
  running_duplicated  "pid 7 (nginx) was still running two versions of /x.so (inode 12 and
                 13) at once at the end of the log" (mapping.duplicated, until a reload)
  running_stale  "pid 7 (nginx) was still running old code at the end of the log:
                  /x.so (deleted, replaced at 2026-01-02T03:04:05.000006Z)"
  reloaded       "pid 7 (nginx) reloaded /x.so (inode 12 -> 13) 0.300 s after it was replaced;
                  still running at the end of the log"
  running        "pid 7 (nginx) was still running at the end of the log; nothing diverged"

Under --guard, any verdict ends with what the guard kept from happening (mapping.write_refused):
"; the guard refused 2 writes that would have crashed it, to /x.so (the last by cp)".

Intervals ("1.2 s after", a reload's "0.300 s after") are not computed across a pause of the
daemon: when a watch.gap was logged after the first event and at or before the second, the
sentence says "after ... (the interval is unknown: the daemon was paused 27.3 s in between)";
when the first event was logged within RESUME_BLUR (2 s) after a watch.gap, it was found by
the daemon's re-read at the resume and carries the resume's time, not its own: "(the interval
is unknown: the write was logged as the daemon resumed from a pause of 27.3 s)".  A gap has
no pid: it counts for every target of its host (Daemons: each host's pauses and namespace,
the least recently used forgotten past MAX_HOSTS).  An end earlier than its start (the log's
clock went back) has no interval either.  `--pid` selects that pid on every host.

Whose.  Target events carry the process's `uid` and mount namespace (`mnt_ns`), and
daemon.started the daemon's own: the header and the verdict say "pid 7 (reload, uid 1001) on
web-1" (" on HOST" whenever the lines name the host, even with one host in the logs: the
report prints a target before it knows whether another host follows), and a target whose
namespace differs from its host's daemon's (the latest daemon.started of its host before its
event) gets a note: "...; note: this process runs in another mount namespace (mnt:[X]) than
the daemon's (mnt:[Y]): its /opt/demo/so.so is not necessarily the host's file" (a user in
`unshare -Urm` can bind her own file over any path there).  No daemon.started read (rotated
away): no note, `foreign_namespace` null.

"At the end of the log" becomes "at T" when --until cut the life short.  The daemon logs no
event when a diverged file is closed or unmapped, so running_stale lists the divergences as
last reported (a re-attach resets them: the daemon reports again what is still diverged; not
one with `restored: true`, whose daemon kept them in its state file and does not repeat them).

Memory.  A life is printed once it is over: LINGER (10 s of log time) after its end, so a
second daemon's word on the same exit still joins it; at a new life of its pid; or at the end
of the input.  Each life remembers at most MAX_REMEMBERED files per kind of fact (live
divergences, perms, divergences awaiting their reload, reloads), the oldest forgotten first.  All lives
together are held to LIVES_BUDGET bytes (as counted: lines kept plus a fixed cost per life
and per fact); past it, the report first prints the lives already over, then drops the kept
timeline lines of the lives least recently active, and last judges those lives as they are
and prints them ("at T, its last event read: not followed further"), so any log is read in
bounded memory.  Targets are printed in the order their lives began, except that when more
than HOLD_BUDGET bytes of finished targets wait behind one still running, they are printed
as they are.

Output.  Text: per target a header, its events in the window and the verdict; then the
daemon's own warnings (watch.overflow, watch.degraded, watch.gap: every daemon-wide event of
level warning or above; the first and last WARNINGS_SHOWN) and a summary line.  Every value
from the log is passed through escape_control: names are untrusted.  --json: JSON lines, one
`{"type": "target", "host", "pid", "comm", "start_time", "uid", "mnt_ns", "foreign_namespace",
"outcome", "verdict", "timeline"}` per target (timeline: the events in the window exactly as
logged, in ASCII; when some are not shown, `events_not_shown` counts them and
`not_shown_after` says after which entry), then one `{"type": "summary", "files", "events",
"skipped", "targets", "outcomes", "warnings"}` (`warnings_not_shown`, `out_of_order` and
`brief_lives` when not zero or empty).

Brief lives (is_brief: ended by an exit within BRIEF of their first event, nothing diverged)
are not printed but counted per command in BriefLives (at most FOLDED_COMMANDS), unless the
operator names pids; the tally of outcomes counts them all the same.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, NamedTuple, TextIO, TypeVar

from inodewatch.events import DIVERGENCE_KINDS as KINDS_IN_CONTRACT
from inodewatch.events import SUBJECTS
from inodewatch.logread import Counts, LogEvent, ReportError, parse_line, parse_time, read
from inodewatch.text import escape_control

DIVERGENCE_KINDS = frozenset(KINDS_IN_CONTRACT)  # a set: asked of every event read
WARNING_LEVELS = ("warning", "error", "critical")
# The signals by which an in-place overwrite shows: the process faults on pages that changed
# under it.  A SIGKILL, a SIGTERM or an exit is someone's decision, never that symptom.
FAULT_SIGNALS = ("SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGTRAP", "SIGSYS")
# What ends a target's life: its exit seen, or found gone by a restarted daemon.
ENDS = ("target.exited", "target.lost")

FIRST_SHOWN = 20
LAST_SHOWN = 20
WARNINGS_SHOWN = 10  # first and last
MAX_REMEMBERED = 64
LINGER = timedelta(seconds=10)
# What the daemon logs right after a watch.gap is what its full re-read at the resume found:
# it may have happened at any time during the pause (its timestamp is the resume's).
RESUME_BLUR = timedelta(seconds=2)
LIVES_BUDGET = 96 << 20
HOLD_BUDGET = 16 << 20
MAX_HOSTS = 4096  # whose daemon state (pauses, mount namespace) is kept, by name
HOSTS_BYTES = 1 << 20
# What a life and one remembered fact cost beyond the text they hold, roughly, in CPython.
LIFE_COST = 2048
FACT_COST = 256
SLOT_COST = 64

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True)
class Verdict:
    outcome: str
    text: str  # terminal-safe
    paths: tuple[str, ...] = ()  # the files it names, as logged


class Divergence(NamedTuple):
    """One file a target held that no longer matched the disk, as a log event tells it."""

    subject: str  # "mapping" or "fd"
    kind: str
    path: str
    fd: int | None
    ino: int | None
    new_path: str | None
    new_ino: int | None  # duplicated: the new version, mapped beside the old one (`ino`)

    @property
    def file(self) -> tuple[str, str, int | None, int | None]:
        return (self.subject, self.path, self.fd, self.ino)

    @property
    def label(self) -> str:
        if self.kind == "renamed" and self.new_path is not None:
            return f"renamed to {escape_control(self.new_path)}"
        if self.kind == "duplicated":
            return f"loaded twice, inode {self.ino} beside {_text(self.new_ino)}"
        return "overwritten in place" if self.kind == "overwritten" else self.kind

    @property
    def size(self) -> int:
        return len(self.path) + len(self.new_path or "")


class Budget:
    """The bytes all lives hold, as counted (see the module docstring)."""

    __slots__ = ("used",)

    def __init__(self) -> None:
        self.used = 0


_MISSING: Any = object()


class Memo(dict[K, V]):
    """What a life remembers of one kind: a dict of at most MAX_REMEMBERED entries, the oldest
    forgotten first (an update keeps an entry's place), each costing FACT_COST plus what
    `size(key, value)` says.  A dict itself: look-ups cost no Python call."""

    __slots__ = ("size", "bytes", "budget")

    def __init__(self, budget: Budget, size: Callable[[K, V], int]) -> None:
        super().__init__()
        self.size = size
        self.bytes = 0
        self.budget = budget

    def put(self, key: K, value: V) -> None:
        old = self.get(key, _MISSING)
        if old is _MISSING:
            delta = FACT_COST + self.size(key, value)
            if len(self) >= MAX_REMEMBERED:
                self.drop(next(iter(self)))
        else:
            delta = self.size(key, value) - self.size(key, old)
        self[key] = value
        self.bytes += delta
        self.budget.used += delta

    def drop(self, key: K) -> None:
        old = self.pop(key, _MISSING)
        if old is not _MISSING:
            delta = FACT_COST + self.size(key, old)
            self.bytes -= delta
            self.budget.used -= delta

    def clear(self) -> None:
        super().clear()
        self.budget.used -= self.bytes
        self.bytes = 0


class Live(Memo[Divergence, datetime]):
    """What a life still runs or holds diverged, as last reported, and when; a reload drops
    the divergences of its (path, inode) at once, through an index."""

    __slots__ = ("files", "forgotten")

    def __init__(self, budget: Budget) -> None:
        super().__init__(budget, _divergence_size)
        self.files: dict[tuple[str, int | None], list[Divergence]] = {}  # mapping subject only
        self.forgotten = 0  # forgotten for newer ones since the last attach

    def add(self, d: Divergence, when: datetime) -> None:
        if d not in self:
            if len(self) >= MAX_REMEMBERED:
                self.forget(next(iter(self)))
                self.forgotten += 1
            if d[0] == "mapping":
                self.files.setdefault((d[2], d[4]), []).append(d)
        self.put(d, when)

    def reloaded(self, path: str | None, old: int | None) -> None:
        for d in self.files.pop((path, old), ()) if path is not None else ():
            self.drop(d)

    def clear(self) -> None:
        super().clear()
        self.files.clear()
        self.forgotten = 0

    def forget(self, d: Divergence) -> None:
        self.drop(d)
        if d.subject == "mapping":
            same = self.files[(d.path, d.ino)]
            same.remove(d)
            if not same:
                del self.files[(d.path, d.ino)]


def _divergence_size(d: Divergence, when: datetime) -> int:
    return d.size


class Keeping(Generic[V]):
    """What a timeline keeps of an event it shows: `event` makes it of a decoded event (the
    first ones, as they come), `line` of a line kept as it was (the last ones, at the end)."""

    def event(self, e: LogEvent) -> V:
        raise NotImplementedError

    def line(self, raw: bytes) -> V:
        return self.event(_event(raw))


class Shown(Generic[V]):
    """The events of a sequence kept for showing: the first `first`, made when they come
    (most lives are short: each is made once), and the last `last` as their lines (made at
    the end: a long life's middle is never made); how many in between were not kept."""

    __slots__ = ("head", "tail", "first", "not_shown", "bytes", "keep", "budget")

    def __init__(self, first: int, last: int, keep: Keeping[V], budget: Budget) -> None:
        self.head: list[V] = []
        self.tail: deque[bytes] = deque(maxlen=last)
        self.first = first
        self.not_shown = 0
        self.bytes = 0  # counted: what head and tail hold, by the length of their lines
        self.keep = keep
        self.budget = budget

    def add(self, e: LogEvent) -> None:
        size = len(e.raw) + FACT_COST
        if len(self.head) < self.first:
            self.head.append(self.keep.event(e))
        else:
            tail = self.tail
            if len(tail) == tail.maxlen:
                size -= len(tail[0]) + FACT_COST
                self.not_shown += 1
            tail.append(e.raw)
        self.bytes += size
        self.budget.used += size

    def forget(self) -> None:
        """Keep nothing already seen (memory is short); later events still go to the tail."""
        self.not_shown += len(self.head) + len(self.tail)
        self.head.clear()
        self.tail.clear()
        self.first = 0
        self.budget.used -= self.bytes
        self.bytes = 0

    @property
    def count(self) -> int:
        return len(self.head) + self.not_shown + len(self.tail)

    def items(self) -> tuple[list[V], list[V]]:
        """The kept events as `keep` makes them: those before the ones not shown, and after."""
        return self.head, [self.keep.line(raw) for raw in self.tail]


def _event(raw: bytes) -> LogEvent:
    event = parse_line(raw)  # it was valid when first read
    assert event is not None
    return event


class Mark(NamedTuple):
    """When an event was logged, and where it stands among the daemon's pauses (watch.gap):
    an interval is known only between two marks with no pause between them, the first not
    logged right after one (see _interval)."""

    time: datetime
    gaps: int  # watch.gap events read before this one
    paused: float  # their gap_s, summed (those that gave one)
    resumed: float | None  # logged within RESUME_BLUR after a watch.gap: its gap_s (0: unknown)


class Reload(NamedTuple):
    """A target's last reload of one path, and the first report of the held inode diverging."""

    path: Any  # as logged: _reload_text makes them text
    old_ino: Any
    new_ino: Any
    mark: Mark
    diverged: tuple[Divergence, Mark] | None


class End(NamedTuple):
    """A life's last end (its exit, or target.lost), with the last overwrite before it."""

    raw: bytes  # parsed again to judge: the `stale` list may be long
    name: str
    mark: Mark
    overwrite: tuple[Divergence, Mark] | None


class DaemonState:
    """What the daemon's own events said so far: its pauses (watch.gap: daemon-wide, with no
    pid; logged when the daemon resumed, so any event logged before it and one logged at or
    after it have a pause between them, and what is logged right after it may have happened
    during it), and its mount namespace (daemon.started)."""

    __slots__ = ("gaps", "paused", "last", "mnt_ns")

    def __init__(self) -> None:
        self.gaps = 0
        self.paused = 0.0
        self.last: tuple[datetime, float] | None = None  # the latest: when, gap_s (0: unknown)
        self.mnt_ns: int | None = None  # the latest daemon.started's

    def paused_at(self, when: datetime, fields: Mapping[str, Any]) -> None:
        seconds = fields.get("gap_s")
        seconds = float(seconds) if type(seconds) in (int, float) and seconds > 0 else 0.0
        self.gaps += 1
        self.paused += seconds
        self.last = (when, seconds)

    def mark(self, when: datetime) -> Mark:
        last = self.last
        resumed = last[1] if last is not None and when - last[0] <= RESUME_BLUR else None
        return _new(Mark, (when, self.gaps, self.paused, resumed))


class Daemons:
    """Each host's DaemonState (lines without `host`, from older daemons, are one host of
    their own), the least recently used forgotten past MAX_HOSTS hosts or HOSTS_BYTES of
    names: a later line of a forgotten host starts it afresh (no gap, no namespace known);
    a life keeps the state it began with."""

    __slots__ = ("states", "bytes")

    def __init__(self) -> None:
        self.states: dict[str | None, DaemonState] = {}
        self.bytes = 0

    def of(self, host: str | None) -> DaemonState:
        state = self.states.pop(host, None)
        if state is None:
            state = DaemonState()
            self.bytes += len(host or "")
            while self.states and (len(self.states) >= MAX_HOSTS or self.bytes > HOSTS_BYTES):
                old = next(iter(self.states))
                del self.states[old]
                self.bytes -= len(old or "")
        self.states[host] = state  # last: the most recently used
        return state


_new = tuple.__new__  # _new(Divergence, (...)): without the class's Python-level __new__


# --- following one life -------------------------------------------------------------------


def _str(fields: Mapping[str, Any], key: str) -> str | None:
    value = fields.get(key)
    return value if isinstance(value, str) else None


def _int(fields: Mapping[str, Any], key: str) -> int | None:
    value = fields.get(key)
    return value if type(value) is int else None


def divergence(name: str, fields: Mapping[str, Any]) -> Divergence | None:
    """The divergence an event (or an entry of `stale`) reports, if it reports one."""
    subject, _, kind = name.partition(".")
    path = _str(fields, "path")
    if subject not in SUBJECTS or kind not in DIVERGENCE_KINDS or path is None:
        return None
    ino = _int(fields, "old_ino" if kind == "duplicated" else "mapped_ino")
    return _new(Divergence, (subject, kind, path, _int(fields, "fd"), ino,
                             _str(fields, "new_path"), _int(fields, "new_ino")))


def _perms_size(ino: int, perms: str) -> int:
    return len(perms)


def _first_size(key: tuple[str, int | None], first: tuple[Divergence, Mark]) -> int:
    return len(key[0])


def _reload_size(path: str | None, r: Reload) -> int:
    return len(path or "")


class Timeline:
    """One target life, followed event by event: what its verdict needs, and the events of the
    window kept for showing (as `keep` makes them)."""

    __slots__ = ("host", "pid", "seq", "budget", "daemon", "comm", "uid", "mnt_ns", "host_mnt_ns",
                 "start_time", "identity", "ended", "end",
                 "overwrite", "perms", "live", "first_diverged", "reloads", "shown", "last_time",
                 "cut_at", "dropped", "active", "first_time", "diverged", "refusals", "refused")

    def __init__(self, host: str | None, pid: int, seq: int, keep: Keeping[Any], budget: Budget,
                 daemon: DaemonState) -> None:
        self.host = host  # the `host` of its lines: a pid is a process of one host
        self.pid = pid
        self.seq = seq  # the order lives began in
        self.budget = budget
        self.daemon = daemon
        self.comm: str | None = None  # from its latest attach that gives it (judged part)
        self.uid: int | None = None  # from its latest event that gives them
        self.mnt_ns: int | None = None
        self.host_mnt_ns: int | None = None  # the daemon's, as that event was logged
        self.start_time: str | None = None
        self.identity: str | None = None  # the latest start_time of any attach: pid reuse
        self.ended = False  # an end seen, judged or not: a later attach is a new life
        self.end: End | None = None
        self.overwrite: tuple[Divergence, Mark] | None = None  # the last one so far
        self.perms: Memo[int, str] = Memo(budget, _perms_size)  # inode -> perms, as last logged
        self.live = Live(budget)
        # (path, inode) -> its first divergence, for the reload's delay
        self.first_diverged: Memo[tuple[str, int | None], tuple[Divergence, Mark]] = Memo(
            budget, _first_size)
        self.reloads: Memo[str | None, Reload] = Memo(budget, _reload_size)  # per path, its last
        self.shown = Shown(FIRST_SHOWN, LAST_SHOWN, keep, budget)
        self.last_time: datetime | None = None  # of its last judged event
        self.first_time: datetime | None = None  # of its first judged event
        self.diverged = False  # any divergence of it ever logged: never a brief life
        self.refusals = 0  # mapping.write_refused: writes the guard kept from crashing it
        self.refused: tuple[str, str | None] | None = None  # the last one: path, writer's comm
        self.cut_at: datetime | None = None  # the life went on past --until: judged at this time
        self.dropped = False  # judged before its end: the report's memory budget
        self.active: datetime | None = None  # the time of its latest event: least recently
        # active lives are the first to forget what they keep when memory is short
        budget.used += LIFE_COST + len(host or "")

    @property
    def cost(self) -> int:
        """What it holds, as counted in its budget."""
        return (LIFE_COST + len(self.host or "") + (len(self.end.raw) if self.end is not None else 0) + self.shown.bytes
                + self.perms.bytes + self.live.bytes + self.first_diverged.bytes
                + self.reloads.bytes)

    @property
    def foreign_namespace(self) -> bool | None:
        """Whether it ran in another mount namespace than the daemon; None: one is unknown."""
        if self.mnt_ns is None or self.host_mnt_ns is None:
            return None
        return self.mnt_ns != self.host_mnt_ns

    @property
    def events(self) -> list[Any]:
        """The events kept for showing, oldest first (all of them when there were few)."""
        head, tail = self.shown.items()
        return head + tail

    def starts_anew(self, attached: LogEvent) -> bool:
        if self.ended:
            return True
        new = _str(attached.fields, "start_time")
        return self.identity is not None and new is not None and self.identity != new

    def judge(self, e: LogEvent) -> None:
        """Take in one event of the life, up to --until."""
        f, name, when = e.fields, e.name, e.time
        self.last_time = when
        if self.first_time is None:
            self.first_time = when
        if type(uid := f.get("uid")) is int:
            self.uid = uid
        if type(mnt_ns := f.get("mnt_ns")) is int:
            self.mnt_ns, self.host_mnt_ns = mnt_ns, self.daemon.mnt_ns
        subject, _, kind = name.partition(".")
        if subject == "mapping" or subject == "fd":
            if kind == "reloaded" and subject == "mapping":
                self._reloaded(f, when)
            elif kind == "write_refused" and type(path := f.get("path")) is str:
                self.refusals += 1
                self.refused = (path, _str(f, "writer_comm"))
                self.diverged = True  # never folded away as a brief life
            elif kind in DIVERGENCE_KINDS and type(path := f.get("path")) is str:
                if kind == "duplicated":  # rare, and keyed by its old inode
                    d = divergence(name, f)
                    assert d is not None
                    ino = d.ino
                else:  # divergence(), inline: most events are these
                    fd, ino, new_path = f.get("fd"), f.get("mapped_ino"), f.get("new_path")
                    if type(ino) is not int:
                        ino = None
                    d = _new(Divergence, (subject, kind, path, fd if type(fd) is int else None,
                                          ino, new_path if type(new_path) is str else None, None))
                self.live.add(d, when)
                self.diverged = True
                if subject == "mapping":
                    if (path, ino) not in self.first_diverged:
                        self.first_diverged.put((path, ino), (d, self.daemon.mark(when)))
                    if kind == "overwritten":
                        self.overwrite = (d, self.daemon.mark(when))
            if subject == "mapping" and type(ino := f.get("mapped_ino")) is int:
                perms = f.get("perms")
                if perms and type(perms) is str and self.perms.get(ino) != perms:
                    self.perms.put(ino, perms)
        elif name == "target.attached":
            if (comm := _str(f, "comm")) is not None:
                self.comm = comm
            if (start_time := _str(f, "start_time")) is not None:
                self.start_time = start_time
            if f.get("restored") is not True:
                self.live.clear()  # a (re-)attach reports afresh whatever is diverged
        elif name in ENDS:
            self.budget.used += len(e.raw) - (len(self.end.raw) if self.end is not None else 0)
            self.end = _new(End, (e.raw, name, self.daemon.mark(when), self.overwrite))

    def _reloaded(self, f: Mapping[str, Any], when: datetime) -> None:
        path, old = _str(f, "path"), _int(f, "old_ino")
        self.live.reloaded(path, old)
        # The first report of the held inode diverging: when the operator replaced it.  Both
        # facts about the old inode are done with (a hold-mode host reloads a new one at every
        # replacement: kept, they would fill the memos with inodes long gone).
        diverged = self.first_diverged.get((path, old)) if path is not None else None
        self.first_diverged.drop((path, old))
        if old is not None:
            self.perms.drop(old)
        self.reloads.put(path, _new(Reload, (f.get("path"), f.get("old_ino"), f.get("new_ino"),
                                             self.daemon.mark(when), diverged)))


# --- verdicts -----------------------------------------------------------------------------


def _who(t: Timeline) -> str:
    """"pid 7 (reload, uid 1001) on web-1": what is known of it."""
    known = [escape_control(t.comm)] if t.comm is not None else []
    known += [f"uid {t.uid}"] if t.uid is not None else []
    where = f" on {escape_control(t.host)}" if t.host is not None else ""
    return f"pid {t.pid} ({', '.join(known)}){where}" if known else f"pid {t.pid}{where}"


def format_time(when: datetime) -> str:
    # isoformat, not strftime: glibc's %Y does not pad year 1 to 0001
    return when.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _delay(start: datetime, end: datetime) -> str:
    seconds = (end - start).total_seconds()
    return f"{seconds:.1f} s" if seconds >= 1 else f"{seconds:.3f} s"


# What was logged, as a noun: "the write was logged as the daemon resumed"
NOUNS = {"overwritten": "the write", "replaced": "the replacement", "deleted": "the deletion",
         "renamed": "the rename", "missing": "the removal"}


def _interval(start: Mark, end: Mark, what: Divergence) -> tuple[str, str]:
    """(" 1.2 s", "") when the interval from `start` to `end` is known; ("", " (the interval is
    unknown: why)") when a pause of the daemon lies between them, `start` (`what`) was logged
    as the daemon resumed from one, or the log's clock went back."""
    if end.gaps > start.gaps:
        length = f" {end.paused - start.paused:.1f} s" if end.paused > start.paused else ""
        why = f"the daemon was paused{length} in between"
    elif start.resumed is not None:
        length = f" of {start.resumed:.1f} s" if start.resumed else ""
        why = f"{NOUNS[what.kind]} was logged as the daemon resumed from a pause{length}"
    elif end.time < start.time:
        why = "the log's clock went back in between"
    else:
        return f" {_delay(start.time, end.time)}", ""
    return "", f" (the interval is unknown: {why})"


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


def _describe_files(divergences: Iterable[tuple[Divergence, datetime | None]]) -> list[str]:
    """"/x.so (deleted, replaced at T)" per file: its kinds in report order, T the latest."""
    groups: dict[tuple[str, str, int | None, int | None], tuple[list[str], datetime | None]] = {}
    for d, when in divergences:
        labels, _ = groups.get(d.file, ([f"fd {d.fd}"] if d.fd is not None else [], None))
        if d.label not in labels:
            labels.append(d.label)
        groups[d.file] = (labels, when)
    return [f"{escape_control(path)} ({', '.join(labels)}"
            + (f" at {format_time(when)})" if when is not None else ")")
            for (_, path, _, _), (labels, when) in groups.items()]


def _stale_clause(stale: Iterable[Divergence]) -> str:
    files = _describe_files((d, None) for d in stale)
    if not files:
        return ""
    return f", while running {_plural(len(files), 'stale file')}: {', '.join(files)}"


def _stale(fields: Mapping[str, Any]) -> tuple[list[Mapping[str, Any]], list[Divergence]]:
    """An end's `stale` list: its well-formed entries, and the divergences they name."""
    raw_stale = fields.get("stale")
    stale_fields = [s for s in raw_stale if isinstance(s, dict)] if isinstance(raw_stale, list) else []
    return stale_fields, [d for s in stale_fields if isinstance(s.get("event"), str)
                          and (d := divergence(s["event"], s)) is not None]


def _perms(t: Timeline, ino: int | None, stale: list[Mapping[str, Any]]) -> str | None:
    """How the overwritten inode was mapped (the overwrite event itself does not say): from
    the end's `stale` entry, else from the life's mapping events."""
    if ino is None:
        return None
    for fields in reversed(stale):
        if _int(fields, "mapped_ino") == ino and (perms := _str(fields, "perms")):
            return perms
    return t.perms.get(ino)


def _exit_verdict(t: Timeline, end: End, fields: Mapping[str, Any]) -> Verdict:
    who = _who(t)
    stale_fields, stale = _stale(fields)
    signal = _str(fields, "signal")
    if signal:
        killed = f"{who} was killed by {escape_control(signal)}"
        if fields.get("core_dumped") is True:
            killed += " (core dumped)"
        if end.overwrite is None or signal not in FAULT_SIGNALS:
            return Verdict("killed", killed + _stale_clause(stale), _paths(stale))
        # The last overwrite before the death: the likeliest cause, and the shortest delay.
        over, mark = end.overwrite
        details = [f"inode {over.ino}"] if over.ino is not None else []
        if (perms := _perms(t, over.ino, stale_fields)) is not None:
            details.append(f"mapped {escape_control(perms)}")
        file = escape_control(over.path) + (f" ({', '.join(details)})" if details else "")
        rest = [d for d in stale if d.file != over.file or d.kind != "overwritten"]
        delay, unknown = _interval(mark, end.mark, over)
        return Verdict("crashed_after_overwrite",
                       f"{killed}{delay} after {file} was overwritten in place{unknown}"
                       f"{_stale_clause(rest)}", _paths([over, *rest]))
    code = _int(fields, "exit_code")
    if code is not None:
        return Verdict("exited", f"{who} exited with status {code}{_stale_clause(stale)}",
                       _paths(stale))
    how = (" (seen through a pidfd, without the proc connector)"
           if _str(fields, "status_source") == "pidfd" else "")
    return Verdict("exit_unknown", f"{who} exited with an unknown status{how}{_stale_clause(stale)}",
                   _paths(stale))


def _paths(divergences: Iterable[Divergence]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(d.path for d in divergences))


def _reload_text(r: Reload) -> str:
    text = f"reloaded {_text(r.path)} (inode {_text(r.old_ino)} -> {_text(r.new_ino)})"
    if r.diverged is None:
        return text
    d, mark = r.diverged
    delay, unknown = _interval(mark, r.mark, d)
    return f"{text}{delay} after it was {d.label}{unknown}"


def _end_of_log(t: Timeline) -> str:
    if t.dropped and t.last_time is not None:
        return (f"at {format_time(t.last_time)}, its last event read (not followed further: "
                f"more targets at once than the report holds in {LIVES_BUDGET >> 20} MiB)")
    return "at the end of the log" if t.cut_at is None else f"at {format_time(t.cut_at)}"


def verdict(t: Timeline) -> Verdict:
    """What happened to this target, in one terminal-safe sentence (see the module docstring);
    with a note when it ran in another mount namespace than the daemon."""
    judged = _verdict(t)
    if t.refused is not None:
        path, comm = t.refused
        by = f" (the last by {escape_control(comm)})" if comm else ""
        judged = Verdict(judged.outcome, f"{judged.text}; the guard refused "
                         f"{_plural(t.refusals, 'write')} that would have crashed it, to "
                         f"{escape_control(path)}{by}", judged.paths)
    if not t.foreign_namespace:
        return judged
    if len(judged.paths) == 1:
        whose = f"its {escape_control(judged.paths[0])} is not necessarily the host's file"
    else:
        whose = ("the files named here are not necessarily the host's" if judged.paths
                 else "the paths in its events are not necessarily the host's files")
    return Verdict(judged.outcome, f"{judged.text}; note: this process runs in another mount "
                   f"namespace (mnt:[{t.mnt_ns}]) than the daemon's (mnt:[{t.host_mnt_ns}]): "
                   f"{whose}", judged.paths)


def _verdict(t: Timeline) -> Verdict:
    if t.end is not None:
        fields = _event(t.end.raw).fields
        if t.end.name == "target.lost":
            stale = _stale(fields)[1]
            return Verdict("lost", f"{_who(t)} ended while the daemon was not running, how is "
                                   f"unknown{_stale_clause(stale)}", _paths(stale))
        return _exit_verdict(t, t.end, fields)
    who, end = _who(t), _end_of_log(t)
    twice = [d for d in t.live if d.kind == "duplicated"]
    if twice:  # two versions of one library at once: a state of its own
        return Verdict("running_duplicated", f"{who} was still running two versions of "
                       + ", ".join(f"{escape_control(d.path)} (inode {d.ino} and {_text(d.new_ino)})"
                                   for d in twice) + f" at once {end}", _paths(twice))
    if t.live:
        live = list(t.live.items())
        what = ("running old code" if any(d.subject == "mapping" for d, _ in live)
                else "holding stale files open")
        ordered = sorted(live, key=lambda item: item[1])
        more = (f", and {_plural(t.live.forgotten, 'older divergence')} not kept (more than "
                f"{MAX_REMEMBERED} at once)" if t.live.forgotten else "")
        return Verdict("running_stale", f"{who} was still {what} {end}: "
                       + ", ".join(_describe_files(ordered)) + more, _paths(d for d, _ in ordered))
    if t.reloads:
        reloads = list(t.reloads.values())
        done = "; ".join(_reload_text(r) for r in reloads)
        return Verdict("reloaded", f"{who} {done}; still running {end}",
                       tuple(dict.fromkeys(r.path for r in reloads if isinstance(r.path, str))))
    return Verdict("running", f"{who} was still running {end}; nothing diverged")


# --- following every life -----------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """What to report: the targets (`pids`, all when None) and the time window."""

    pids: frozenset[int] | None = None
    since: datetime | None = None
    until: datetime | None = None

    def shows(self, when: datetime) -> bool:
        return (self.since is None or when >= self.since) and (self.until is None or when <= self.until)


class Tracker:
    """Every life at once, as the events stream past, in bounded memory (module docstring).
    `begin(life)` is called as a life begins, `done(life)` once it is over and judged; `keep`
    makes what a life keeps of an event it shows."""

    def __init__(self, window: Window, keep: Keeping[Any],
                 begin: Callable[[Timeline], None], done: Callable[[Timeline], None]) -> None:
        self.window = window
        self.everything = window.since is None and window.until is None
        self.keep = keep
        self.begin = begin
        self.done = done
        self.open: dict[tuple[str | None, int], Timeline] = {}  # by host and pid
        self.ended: deque[tuple[datetime, Timeline]] = deque()  # as they ended, for LINGER
        self.budget = Budget()
        self.daemons = Daemons()
        self.seq = 0
        self.now: datetime | None = None  # the latest time seen
        self.warnings: Shown[Any] = Shown(WARNINGS_SHOWN, WARNINGS_SHOWN, keep, Budget())

    def feed(self, e: LogEvent) -> None:
        when, name, pid, fields, _ = e
        if self.now is None or when > self.now:
            self.now = when
            while self.ended and self.ended[0][0] + LINGER < when:
                self._finish(self.ended.popleft()[1])
        window = self.window
        host = fields.get("host")
        if type(host) is not str:
            host = None
        if pid is None:
            if window.until is None or when <= window.until:
                if name == "watch.gap":
                    self.daemons.of(host).paused_at(when, fields)
                elif name == "daemon.started" and type(mnt_ns := fields.get("mnt_ns")) is int:
                    self.daemons.of(host).mnt_ns = mnt_ns
            if (fields.get("level") in WARNING_LEVELS or name == "watch.gap") and window.shows(when):
                self.warnings.add(e)
            return
        if window.pids is not None and pid not in window.pids:
            return
        key = (host, pid)
        life = self.open.get(key)
        if life is None or (name == "target.attached" and life.starts_anew(e)):
            if life is not None:
                self._finish(life)
            life = self.open[key] = Timeline(host, pid, self.seq, self.keep, self.budget,
                                             self.daemons.of(host))
            self.seq += 1
            self.begin(life)
        life.active = when
        if name == "target.attached":
            if (start_time := _str(fields, "start_time")) is not None:
                life.identity = start_time
        elif name in ENDS:
            life.ended = True
        if window.until is not None and when > window.until:
            life.cut_at = window.until
        else:
            life.judge(e)
            if self.everything or window.shows(when):
                life.shown.add(e)
            if name in ENDS:
                self.ended.append((when, life))
        if self.budget.used > LIVES_BUDGET:
            self._shed()

    def _finish(self, life: Timeline) -> None:
        key = (life.host, life.pid)
        if self.open.get(key) is life:
            del self.open[key]
            if life.host_mnt_ns is None:  # its events came before any daemon.started read
                life.host_mnt_ns = life.daemon.mnt_ns
            self.budget.used -= life.cost
            self.done(life)

    def _shed(self) -> None:
        """Back under 3/4 of the budget: print what is over, then forget kept events, then
        judge lives early, the least recently active first."""
        goal = LIVES_BUDGET * 3 // 4
        while self.ended and self.budget.used > goal:
            self._finish(self.ended.popleft()[1])
        idle = sorted(self.open.values(), key=lambda t: t.active)
        for life in idle:
            if self.budget.used <= goal:
                return
            life.shown.forget()
        for life in idle:
            if self.budget.used <= goal:
                return
            life.dropped = True
            self._finish(life)

    def close(self) -> None:
        """The end of the input: every life still open is judged and printed, in begin order."""
        for life in sorted(self.open.values(), key=lambda t: t.seq):
            self._finish(life)


@dataclass(frozen=True)
class TargetReport:
    timeline: Timeline
    verdict: Verdict


def track(events: Iterable[LogEvent], window: Window, keep: Keeping[Any],
          begin: Callable[[Timeline], None], done: Callable[[Timeline], None]) -> Tracker:
    tracker = Tracker(window, keep, begin, done)
    for e in events:
        tracker.feed(e)
    tracker.close()
    return tracker


class AsEvents(Keeping[LogEvent]):
    """Events as they are (build_timelines, select: small logs)."""

    def event(self, e: LogEvent) -> LogEvent:
        return e


AS_EVENTS = AsEvents()


def _ignore(life: Timeline) -> None:
    pass


def build_timelines(events: Iterable[LogEvent]) -> list[Timeline]:
    """One timeline per target life, in the order the lives begin (small logs: all are kept)."""
    lives: list[Timeline] = []
    track(events, Window(), AS_EVENTS, lives.append, _ignore)
    return lives


def select(events: Iterable[LogEvent], pids: Iterable[int] | None = None,
           since: datetime | None = None, until: datetime | None = None) -> list[TargetReport]:
    """The targets to report: those (of `pids`) with events in the window, each judged on its
    life up to `until` (small logs: all are kept)."""
    lives: list[Timeline] = []
    track(events, Window(frozenset(pids) if pids else None, since, until), AS_EVENTS, lives.append,
          _ignore)
    return [TargetReport(t, verdict(t)) for t in lives if t.shown.count]


# --- rendering ----------------------------------------------------------------------------


def _text(value: Any) -> str:
    """Any logged value as inert text: a hostile or damaged log may put anything anywhere."""
    if value is None:
        return "?"
    if type(value) is int:
        return str(value)
    if isinstance(value, str):
        return escape_control(value)
    try:
        return escape_control(json.dumps(value, allow_nan=False))
    except RecursionError:  # decoded from a deeper stack than this one
        return "(nested too deeply to show)"


def describe(e: LogEvent) -> str:
    """The detail column of one timeline line."""
    f = e.fields
    path = _text(f.get("path"))
    if f.get("fd") is not None:
        path = f"fd {_text(f.get('fd'))} {path}"
    kind = e.name.partition(".")[2]
    if e.name == "target.attached":
        cmdline = f.get("cmdline")
        command = (" ".join(map(_text, cmdline)) if isinstance(cmdline, list) and cmdline
                   else _text(f.get("exe")))
        return f"{_text(f.get('comm'))}: {command}"
    if e.name == "target.exited":
        if _str(f, "signal"):
            how = f"killed by {_text(f.get('signal'))}"
            how += " (core dumped)" if f.get("core_dumped") is True else ""
        elif _int(f, "exit_code") is not None:
            how = f"exit status {_text(f.get('exit_code'))}"
        else:
            how = "status unknown"
        stale = f.get("stale")
        if isinstance(stale, list) and stale:
            how += f", {_plural(len(stale), 'stale file')}"
        return how
    if e.name == "mapping.reloaded":
        return f"{path}: inode {_text(f.get('old_ino'))} -> {_text(f.get('new_ino'))}"
    if e.name in ("mapping.overwritten", "mapping.overwrite_closed"):
        # size_after is null in an overwrite seen as it began: overwrite_closed follows with it
        how = "written in place" if kind == "overwritten" else "closed by its writer"
        return (f"{path}: inode {_text(f.get('mapped_ino'))} {how}, "
                f"{_text(f.get('size_before'))} -> {_text(f.get('size_after'))} bytes"
                + (", truncated first" if f.get("truncated") is True else ""))
    if kind == "renamed":
        return f"{path}: inode {_text(f.get('mapped_ino'))} now at {_text(f.get('new_path'))}"
    if kind == "write_refused":
        return (f"{path}: inode {_text(f.get('mapped_ino'))} write refused: pid "
                f"{_text(f.get('writer_pid'))} ({_text(f.get('writer_comm'))}) got "
                f"{_text(f.get('errno'))}")
    if kind == "duplicated":
        return (f"{path}: inode {_text(f.get('old_ino'))} and inode {_text(f.get('new_ino'))} "
                f"both mapped [{_text(f.get('perms'))}]")
    if kind == "replaced":
        return (f"{path}: inode {_text(f.get('mapped_ino'))} held, "
                f"path now names inode {_text(f.get('disk_ino'))}{_content(f)}")
    if kind == "content":  # a deleted or replaced divergence judged again, now known
        return f"{path}: inode {_text(f.get('mapped_ino'))} {_text(f.get('kind'))}{_content(f)}"
    if kind in DIVERGENCE_KINDS:
        perms = f" [{_text(f.get('perms'))}]" if "perms" in f else ""
        return f"{path}: inode {_text(f.get('mapped_ino'))} {kind}{perms}{_content(f)}"
    # Anything else (watch.*, daemon.*, events of a newer version): its fields as they are.
    skip = {"timestamp", "level", "event", "pid"}
    return " ".join(f"{escape_control(k)}={_text(v)}" for k, v in f.items()
                    if k not in skip and not k.endswith("_bytes"))


def _content(f: Mapping[str, Any]) -> str:
    """", identical content, no restart needed": a deleted or replaced finding's `content`."""
    content = f.get("content")
    if content is None:
        return ""
    if content == "identical":
        return ", identical content, no restart needed"
    reason = f" ({_text(f.get('content_reason'))})" if "content_reason" in f else ""
    return f", content {_text(content)}{reason}"


class AsText(Keeping[str]):
    """Timeline lines for a terminal."""

    def event(self, e: LogEvent) -> str:
        return _line(e)


class AsJson(Keeping[str]):
    """Timeline entries in JSON, from the line itself: no decoding needed."""

    def event(self, e: LogEvent) -> str:
        return _json(e.raw)

    def line(self, raw: bytes) -> str:
        return _json(raw)


def _line(e: LogEvent) -> str:
    """One timeline line on a terminal."""
    stamp = e.fields["timestamp"]
    if not (len(stamp) == 27 and stamp[10] == "T" and stamp[19] == "." and stamp[26] == "Z"):
        stamp = format_time(e.time)  # the daemon's own form is already format_time's
    return f"  {stamp}  {escape_control(e.name):<19}  {describe(e)}"


def _json(raw: bytes) -> str:
    """One timeline entry in JSON: the line as logged (it was decoded, so it is valid JSON with
    nothing non-finite in it), in plain ASCII: every other character is in a string, so
    \\uXXXX stands for it, and a tab or CR can only be blank space between values.  Never
    encoded again from the decoded value, which may nest deeper than json.dumps recurses."""
    text = raw.decode()
    if not raw.isascii():
        text = _NOT_ASCII.sub(_json_escape, text)
    if "\t" in text or "\r" in text:
        text = text.translate(_BLANK)
    return text.strip(" ")


_NOT_ASCII = re.compile(r"[^\x00-\x7f]")
_BLANK = str.maketrans("\t\r", "  ")


def _json_escape(found: re.Match[str]) -> str:
    code = ord(found.group())
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000  # a surrogate pair, as JSON spells a character past the BMP
    return f"\\u{0xd800 + (code >> 10):04x}\\u{0xdc00 + (code & 0x3ff):04x}"


def _shown_lines(shown: Shown[str], what: str) -> list[str]:
    head, tail = shown.items()
    elided = [f"  ... {_plural(shown.not_shown, what)} not shown ..."] if shown.not_shown else []
    return head + elided + tail


def summary_line(files: int, counts: Counts) -> str:
    text = (f"read {_plural(files, 'file')}, {_plural(counts.events, 'event')}, "
            f"skipped {_plural(counts.bad, 'bad line')}")
    if counts.out_of_order:
        text += (f"; {_plural(counts.out_of_order, 'line')} older than the line before "
                 "(taken in log order)")
    return text


def render_target(t: Timeline, judged: Verdict, as_json: bool) -> str:
    """One target's report: its text block, or its JSON line (the life kept its events as
    _line or _json made them)."""
    if not as_json:
        return "\n".join([_who(t), *_shown_lines(t.shown, "event"),
                          f"  verdict: {judged.text}", "", ""])
    head, tail = t.shown.items()
    record: dict[str, Any] = {"type": "target", "host": t.host, "pid": t.pid, "comm": t.comm,
                              "start_time": t.start_time, "uid": t.uid, "mnt_ns": t.mnt_ns,
                              "foreign_namespace": t.foreign_namespace,
                              "outcome": judged.outcome, "verdict": judged.text}
    if t.shown.not_shown:
        record.update(events_not_shown=t.shown.not_shown, not_shown_after=len(head))
    # ensure_ascii: plain ASCII, no raw control or bidi character; allow_nan=False: a guard
    start = json.dumps(record, allow_nan=False)[:-1]
    return f'{start}, "timeline": [{", ".join(head + tail)}]}}\n'


# The tally's order and words, per outcome.
OUTCOMES = (
    ("crashed_after_overwrite", "crashed after an overwrite"),
    ("killed", "killed"),
    ("exited", "exited"),
    ("exit_unknown", "ended, status unknown"),
    ("lost", "ended while the daemon was down"),
    ("running_duplicated", "running two versions at once"),
    ("running_stale", "still running stale code"),
    ("reloaded", "reloaded"),
    ("running", "running"),
)


def tally_line(outcomes: dict[str, int]) -> str:
    """'48 lives: 1 killed, 46 exited, 1 still running stale code'."""
    words = dict(OUTCOMES)
    total = sum(outcomes.values())
    return (f"{total} li{'ves' if total != 1 else 'fe'}: "
            + (", ".join(f"{n} {words.get(k, k)}" for k, n in outcomes.items()) or "none"))


# Brief lives: a selector that matches `nginx -s reload` (it forks, signals the master and
# exits) or a cron job sees a life per run that tells nothing; printed, they would bury the
# lives that matter.  Folded: one line per command.
BRIEF = timedelta(seconds=1)
FOLDABLE = ("exited", "exit_unknown")  # a kill or a crash is always shown
FOLDED_COMMANDS = 64  # commands counted apart; the brief lives of any others, together
COMMAND_CHARS = 64  # of a command's name, as a key: a crafted log may carry any length


def is_brief(t: Timeline, judged: Verdict) -> bool:
    """Over within BRIEF of its first event, by an exit, and nothing of it ever diverged."""
    return (judged.outcome in FOLDABLE and not t.diverged and t.first_time is not None
            and t.last_time is not None and t.last_time - t.first_time < BRIEF)


class Fold:
    """The brief lives of one command: how many, their outcomes, the first and last seen."""

    __slots__ = ("lives", "outcomes", "first", "last")

    def __init__(self) -> None:
        self.lives = 0
        self.outcomes: dict[str, int] = {}
        self.first: datetime | None = None
        self.last: datetime | None = None

    def add(self, outcome: str, when: datetime | None) -> None:
        self.lives += 1
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        if when is not None:
            self.first = when if self.first is None else min(self.first, when)
            self.last = when if self.last is None else max(self.last, when)

    def text(self) -> str:
        words = dict(OUTCOMES)
        span = (f", {format_time(self.first)} to {format_time(self.last)}"
                if self.first is not None and self.last is not None else "")
        lives = "1 brief life" if self.lives == 1 else f"{self.lives:,} brief lives"
        return (f"{lives} ("
                + ", ".join(f"{n} {words[k]}" for k, n in self.outcomes.items()) + f"){span}")

    def record(self) -> dict[str, Any]:
        return {"lives": self.lives, "outcomes": self.outcomes,
                "first": format_time(self.first) if self.first is not None else None,
                "last": format_time(self.last) if self.last is not None else None}


class BriefLives:
    """The folded lives, per command (comm), in bounded memory: FOLDED_COMMANDS commands of at
    most COMMAND_CHARS characters, the rest in `other`."""

    def __init__(self) -> None:
        self.commands: dict[str | None, Fold] = {}
        self.other = Fold()

    @property
    def lives(self) -> int:
        return sum(f.lives for f in self.commands.values()) + self.other.lives

    def add(self, t: Timeline, outcome: str) -> None:
        comm = t.comm[:COMMAND_CHARS] if t.comm is not None else None
        fold = self.commands.get(comm)
        if fold is None:
            fold = self.other
            if len(self.commands) < FOLDED_COMMANDS:
                fold = self.commands[comm] = Fold()
        fold.add(outcome, t.first_time)

    def lines(self) -> list[str]:
        if not self.lives:
            return []
        lines = [f"brief lives, one line per command (each ended within {BRIEF.seconds} s of "
                 "its first event, nothing diverged):"]
        lines += [f"  {escape_control(comm) if comm is not None else '(command unknown)'}: "
                  f"{fold.text()}" for comm, fold in self.commands.items()]
        if self.other.lives:
            lines.append(f"  other commands (more than {FOLDED_COMMANDS}): {self.other.text()}")
        return lines

    def record(self) -> list[dict[str, Any]]:
        folds = [{"comm": comm, **fold.record()} for comm, fold in self.commands.items()]
        if self.other.lives:
            folds.append({"comm": None, "other_commands": True, **self.other.record()})
        return folds


def render_end(warnings: Shown[str], files: int, counts: Counts, targets: int,
               outcomes: dict[str, int], brief: BriefLives, as_json: bool) -> str:
    """What follows the targets: the brief lives folded, the daemon's warnings, the tally of
    outcomes (in OUTCOMES' order, brief lives included) and the summary."""
    order = {key: i for i, (key, _) in enumerate(OUTCOMES)}
    outcomes = dict(sorted(outcomes.items(), key=lambda kv: order.get(kv[0], len(order))))
    if as_json:
        head, tail = warnings.items()
        summary: dict[str, Any] = {"type": "summary", "files": files, "events": counts.events,
                                   "skipped": counts.bad, "targets": targets,
                                   "outcomes": outcomes}
        extra = {"warnings_not_shown": warnings.not_shown, "out_of_order": counts.out_of_order}
        start = json.dumps(summary, allow_nan=False)[:-1]
        tail_keys = "".join(f', "{k}": {v}' for k, v in extra.items() if v)
        if brief.lives:
            tail_keys += f', "brief_lives": {json.dumps(brief.record(), allow_nan=False)}'
        return f'{start}, "warnings": [{", ".join(head + tail)}]{tail_keys}}}\n'
    lines = [] if targets or brief.lives else ["no target events"]
    lines += brief.lines()
    if warnings.count:
        lines += ["daemon warnings:", *_shown_lines(warnings, "warning")]
    if targets or brief.lives:
        lines.append(tally_line(outcomes))
    return "\n".join([*lines, summary_line(files, counts)]) + "\n"


class Printer:
    """Targets printed in the order their lives began, as soon as every earlier one is out;
    past HOLD_BUDGET bytes waiting, the finished ones go out as they are."""

    def __init__(self, out: TextIO, as_json: bool, fold: bool = True) -> None:
        self.out = out
        self.as_json = as_json
        self.fold = fold  # brief lives into BriefLives (not when the operator names pids)
        self.brief = BriefLives()
        self.slots: deque[list[str | None]] = deque()  # one per life begun, not yet printed
        self.slot: dict[int, list[str | None]] = {}  # by life seq, until it is done
        self.held = 0
        self.printed = 0
        self.outcomes: dict[str, int] = {}  # lives printed, per outcome

    def begin(self, life: Timeline) -> None:
        slot: list[str | None] = [None]
        self.slots.append(slot)
        self.slot[life.seq] = slot

    def done(self, life: Timeline) -> None:
        slot = self.slot.pop(life.seq)
        text = ""
        if life.shown.count:
            judged = verdict(life)
            self.outcomes[judged.outcome] = self.outcomes.get(judged.outcome, 0) + 1
            if self.fold and is_brief(life, judged):
                self.brief.add(life, judged.outcome)
            else:
                text = render_target(life, judged, self.as_json)
        slot[0] = text
        self.held += len(text) + SLOT_COST
        while self.slots and (text := self.slots[0][0]) is not None:
            self.slots.popleft()
            self._print(text)
        if self.held > HOLD_BUDGET:
            waiting: deque[list[str | None]] = deque()
            for slot in self.slots:
                if slot[0] is None:
                    waiting.append(slot)
                else:
                    self._print(slot[0])
            self.slots = waiting

    def _print(self, text: str) -> None:
        self.held -= len(text) + SLOT_COST
        if text:
            self.out.write(text)
            self.printed += 1


# --- command line -------------------------------------------------------------------------


def time_arg(text: str) -> datetime:
    try:
        return parse_time(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("logs", nargs="+", metavar="LOG",
                        help="JSON-lines log written by the daemon, plain or gzip (rotated "
                             "files in any order)")
    parser.add_argument("--json", action="store_true",
                        help="JSON lines: one object per target, then a summary")
    parser.add_argument("--pid", type=int, action="append", metavar="PID",
                        help="only this target (repeatable)")
    parser.add_argument("--since", type=time_arg, metavar="TIME",
                        help="show events from TIME (ISO 8601; no offset means UTC)")
    parser.add_argument("--until", type=time_arg, metavar="TIME",
                        help="show events up to TIME and judge the targets as they were then")


def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Print the report as the logs are read.  Raises ReportError (one line) when a log cannot
    be read: before anything is printed if it cannot be opened."""
    if args.since is not None and args.until is not None and args.since > args.until:
        raise ReportError("--since is after --until")
    counts = Counts()
    printer = Printer(out, args.json, fold=not args.pid)
    window = Window(frozenset(args.pid) if args.pid else None, args.since, args.until)
    tracker = track(read(args.logs, counts), window, AsJson() if args.json else AsText(),
                    printer.begin, printer.done)
    out.write(render_end(tracker.warnings, len(args.logs), counts, printer.printed,
                         printer.outcomes, printer.brief, args.json))
    return 0
