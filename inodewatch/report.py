"""Post-mortem: from the daemon's JSON-lines logs, per target a timeline and one verdict.

`inodewatch report LOG ... [--json] [--pid PID] [--since T] [--until T]`

Input.  Each LOG is a plain or gzip file (recognised by its magic bytes, not its name), e.g.
logrotate's `events.json.2.gz events.json.1 events.json` in any order.  All events are sorted
by `timestamp`, stably, with the files taken oldest first, so equal timestamps keep log order.
A line that is not UTF-8, not a JSON object, or lacks a string `event` or a valid `timestamp`
(or has a non-integer `pid`) is skipped and counted; so is the damaged tail of a truncated
gzip file (one bad line).  Blank lines are ignored.

Targets.  Every event with a `pid` belongs to one target *life*: a `target.attached` after that
pid's `target.exited` (or `target.lost`), or with another `start_time`, starts a new one (pid
reuse).  A re-attach of the same process (the daemon restarted) continues the life.

Verdicts: one sentence per life (`outcome` names the case in JSON), judged on the life's events
up to --until; --since only trims the timeline shown, so a file replaced before it still counts.

  crashed_after_overwrite  killed by a fault signal (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP,
      SIGSYS: FAULT_SIGNALS) after a file it mapped was overwritten in place:
      "pid 38314 (reload) was killed by SIGSEGV 1.2 s after /opt/demo/so.so (inode 2146358,
      mapped r--p,r-xp,rw-p) was overwritten in place" (perms from an earlier event or `stale`)
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

"At the end of the log" becomes "at T" when --until cut the life short.  The daemon logs no
event when a diverged file is closed or unmapped, so running_stale lists the divergences as
last reported (a re-attach resets them: the daemon reports again what is still diverged; not
one with `restored: true`, whose daemon kept them in its state file and does not repeat them).

Output.  Text: per target a header, its events in the window and the verdict (lives of one
command that ended within a second, nothing diverged, folded into one line: inodewatch.tally);
then the daemon's own warnings (watch.overflow, watch.degraded), the tally of outcomes and a
summary line.  Every value from
the log is passed through escape_control: names are untrusted.  --json: JSON lines, one
`{"type": "target", "pid", "comm", "start_time", "outcome", "verdict", "timeline"}` per target
(timeline: the events in the window exactly as logged), then one `{"type": "summary", "files",
"events", "skipped", "outcomes" ({outcome: lives}), "targets", "warnings"}`.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import sys
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TextIO

from inodewatch import tally
from inodewatch.text import escape_control

GZIP_MAGIC = b"\x1f\x8b"
DIVERGENCE_KINDS = ("deleted", "replaced", "renamed", "missing", "overwritten", "duplicated")
WARNING_LEVELS = ("warning", "error", "critical")
# The signals by which an in-place overwrite shows: the process faults on pages that changed
# under it.  A SIGKILL, a SIGTERM or an exit is someone's decision, never that symptom.
FAULT_SIGNALS = ("SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGTRAP", "SIGSYS")
# What ends a target's life: its exit seen, or found gone by a restarted daemon.
ENDS = ("target.exited", "target.lost")
EPOCH = datetime.min.replace(tzinfo=timezone.utc)


class ReportError(Exception):
    """A log file cannot be read, or the arguments contradict each other (message is one line)."""


@dataclass(frozen=True)
class LogEvent:
    """One valid line of the log."""

    time: datetime  # aware, UTC
    name: str
    pid: int | None
    fields: Mapping[str, Any]  # the whole object, exactly as logged


@dataclass(frozen=True)
class Timeline:
    """The events of one target life, oldest first."""

    pid: int
    events: tuple[LogEvent, ...]
    cut_at: datetime | None = None  # the life went on past --until: judge it at this time

    @property
    def comm(self) -> str | None:
        return _attached(self.events, "comm")

    @property
    def start_time(self) -> str | None:
        return _attached(self.events, "start_time")


@dataclass(frozen=True)
class Verdict:
    outcome: str
    text: str  # terminal-safe


@dataclass(frozen=True)
class TargetReport:
    timeline: Timeline  # judged part of the life (up to --until)
    shown: tuple[LogEvent, ...]  # the part in the --since/--until window
    verdict: Verdict


@dataclass(frozen=True)
class Divergence:
    """One file a target held that no longer matched the disk, as a log event tells it."""

    subject: str  # "mapping" or "fd"
    kind: str
    path: str
    fd: int | None
    ino: int | None
    new_path: str | None
    new_ino: int | None = None  # duplicated: the new version, mapped beside the old one

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


# --- parsing ------------------------------------------------------------------------------


def parse_time(text: str) -> datetime:
    """ISO 8601 with or without Z or an offset; naive means UTC.  Raises ValueError."""
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        return when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc)


def _reject_constant(name: str) -> None:
    # NaN and Infinity are not JSON: accepting them would make --json print invalid JSON.
    raise ValueError(f"not JSON: {name}")


def parse_line(raw: bytes) -> LogEvent | None:
    """One log line as an event, or None when it is not one."""
    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; "[[[[…" recurses
        return None
    if not isinstance(obj, dict):
        return None
    name, stamp, pid = obj.get("event"), obj.get("timestamp"), obj.get("pid")
    if not isinstance(name, str) or not isinstance(stamp, str):
        return None
    if pid is not None and type(pid) is not int:  # bool is an int, but not a pid
        return None
    try:
        when = parse_time(stamp)
    except ValueError:
        return None
    return LogEvent(when, name, pid, obj)


def parse_lines(lines: Iterable[bytes | None]) -> tuple[list[LogEvent], int]:
    """Events and the number of bad lines; None stands for a damaged, unreadable rest."""
    events: list[LogEvent] = []
    bad = 0
    for raw in lines:
        if raw is not None and not raw.strip():
            continue
        event = parse_line(raw) if raw is not None else None
        if event is None:
            bad += 1
        else:
            events.append(event)
    return events, bad


def _log_lines(f: io.BufferedReader) -> Iterator[bytes | None]:
    # peek, not seek: a LOG may be a pipe, e.g. <(ssh host cat events.json)
    if f.peek(len(GZIP_MAGIC))[:len(GZIP_MAGIC)] != GZIP_MAGIC:
        yield from f
        return
    try:
        yield from gzip.GzipFile(fileobj=f, mode="rb")
    except (EOFError, gzip.BadGzipFile, zlib.error):
        # Compression cut short (a crash during logrotate) or a damaged disk: keep the lines
        # before the damage and count the rest as one bad line.
        yield None


def read_log(path: str) -> tuple[list[LogEvent], int]:
    """The events of one file and its number of bad lines.  Raises ReportError."""
    try:
        with open(path, "rb") as f:
            return parse_lines(_log_lines(f))
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ReportError(f"cannot read {escape_control(path)}: {reason}") from None


def read_events(paths: Sequence[str]) -> tuple[list[LogEvent], int]:
    """Every event of all files in time order, and the number of bad lines skipped."""
    files = []
    skipped = 0
    for path in paths:
        events, bad = read_log(path)
        files.append(events)
        skipped += bad
    # Oldest file first, whatever order the shell's glob gave: then the stable sort keeps
    # the log order of events that share a timestamp across a rotation.
    files.sort(key=lambda events: min((e.time for e in events), default=EPOCH))
    merged = [e for events in files for e in events]
    merged.sort(key=lambda e: e.time)
    return merged, skipped


# --- timelines and verdicts ---------------------------------------------------------------


def _str(fields: Mapping[str, Any], key: str) -> str | None:
    value = fields.get(key)
    return value if isinstance(value, str) else None


def _int(fields: Mapping[str, Any], key: str) -> int | None:
    value = fields.get(key)
    return value if type(value) is int else None


def _attached(events: Iterable[LogEvent], key: str) -> str | None:
    """A field of the target's identity, from its latest attach that gives it."""
    values = [_str(e.fields, key) for e in events if e.name == "target.attached"]
    return next((v for v in reversed(values) if v is not None), None)


def _starts_new_life(life: list[LogEvent], attached: LogEvent) -> bool:
    if any(e.name in ENDS for e in life):
        return True
    known, new = _attached(life, "start_time"), _str(attached.fields, "start_time")
    return known is not None and new is not None and known != new


def build_timelines(events: Iterable[LogEvent]) -> list[Timeline]:
    """One timeline per target life, in the order the lives begin."""
    lives: list[tuple[int, list[LogEvent]]] = []
    current: dict[int, list[LogEvent]] = {}
    for e in events:
        if e.pid is None:
            continue
        life = current.get(e.pid)
        if life is None or (e.name == "target.attached" and _starts_new_life(life, e)):
            life = current[e.pid] = []
            lives.append((e.pid, life))
        life.append(e)
    return [Timeline(pid, tuple(life)) for pid, life in lives]


def divergence(name: str, fields: Mapping[str, Any]) -> Divergence | None:
    """The divergence an event (or an entry of `stale`) reports, if it reports one."""
    subject, _, kind = name.partition(".")
    path = _str(fields, "path")
    if subject not in ("mapping", "fd") or kind not in DIVERGENCE_KINDS or path is None:
        return None
    return Divergence(subject, kind, path, _int(fields, "fd"),
                      _int(fields, "mapped_ino") if kind != "duplicated" else _int(fields, "old_ino"),
                      _str(fields, "new_path"), _int(fields, "new_ino"))


def _who(t: Timeline) -> str:
    return f"pid {t.pid} ({escape_control(t.comm)})" if t.comm is not None else f"pid {t.pid}"


def format_time(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _delay(start: datetime, end: datetime) -> str:
    seconds = (end - start).total_seconds()
    return f"{seconds:.1f} s" if seconds >= 1 else f"{seconds:.3f} s"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


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


def _perms(t: Timeline, ino: int | None, stale: list[Mapping[str, Any]]) -> str | None:
    """How the overwritten inode was mapped: the overwrite event itself does not say."""
    if ino is None:
        return None
    found = None
    for fields in [e.fields for e in t.events if e.name.startswith("mapping.")] + stale:
        if _int(fields, "mapped_ino") == ino and _str(fields, "perms"):
            found = _str(fields, "perms")
    return found


def _stale(fields: Mapping[str, Any]) -> tuple[list[Mapping[str, Any]], list[Divergence]]:
    """An end's `stale` list: its well-formed entries, and the divergences they name."""
    raw_stale = fields.get("stale")
    stale_fields = [s for s in raw_stale if isinstance(s, dict)] if isinstance(raw_stale, list) else []
    return stale_fields, [d for s in stale_fields
                          if isinstance(s.get("event"), str) and (d := divergence(s["event"], s)) is not None]


def _exit_verdict(t: Timeline, exited: LogEvent) -> Verdict:
    who, fields = _who(t), exited.fields
    stale_fields, stale = _stale(fields)
    signal = _str(fields, "signal")
    if signal:
        killed = f"{who} was killed by {escape_control(signal)}"
        if fields.get("core_dumped") is True:
            killed += " (core dumped)"
        overwrites = [(e, d) for e in t.events
                      if e.name == "mapping.overwritten" and e.time <= exited.time
                      and (d := divergence(e.name, e.fields)) is not None]
        if not overwrites or signal not in FAULT_SIGNALS:
            return Verdict("killed", killed + _stale_clause(stale))
        # The last overwrite before the death: the likeliest cause, and the shortest delay.
        event, over = overwrites[-1]
        details = [f"inode {over.ino}"] if over.ino is not None else []
        if (perms := _perms(t, over.ino, stale_fields)) is not None:
            details.append(f"mapped {escape_control(perms)}")
        file = escape_control(over.path) + (f" ({', '.join(details)})" if details else "")
        rest = [d for d in stale if d.file != over.file or d.kind != "overwritten"]
        return Verdict("crashed_after_overwrite",
                       f"{killed} {_delay(event.time, exited.time)} after {file} was overwritten "
                       f"in place{_stale_clause(rest)}")
    code = _int(fields, "exit_code")
    if code is not None:
        return Verdict("exited", f"{who} exited with status {code}{_stale_clause(stale)}")
    how = (" (seen through a pidfd, without the proc connector)"
           if _str(fields, "status_source") == "pidfd" else "")
    return Verdict("exit_unknown", f"{who} exited with an unknown status{how}{_stale_clause(stale)}")


def _lost_verdict(t: Timeline, lost: LogEvent) -> Verdict:
    return Verdict("lost", f"{_who(t)} ended while the daemon was not running, how is unknown"
                           f"{_stale_clause(_stale(lost.fields)[1])}")


def live_divergences(events: Iterable[LogEvent]) -> dict[Divergence, datetime]:
    """What was still diverged after these events, as last reported, and when."""
    live: dict[Divergence, datetime] = {}
    for e in events:
        if e.name == "target.attached" and e.fields.get("restored") is not True:
            live.clear()  # a (re-)attach reports afresh whatever is diverged
        elif e.name == "mapping.reloaded":
            path, old = _str(e.fields, "path"), _int(e.fields, "old_ino")
            live = {d: w for d, w in live.items()
                    if not (d.subject == "mapping" and d.path == path and d.ino == old)}
        elif (d := divergence(e.name, e.fields)) is not None:
            live[d] = e.time
    return live


def _reload_text(t: Timeline, reloaded: LogEvent) -> str:
    fields = reloaded.fields
    path, old = _str(fields, "path"), _int(fields, "old_ino")
    text = (f"reloaded {_text(fields.get('path'))} "
            f"(inode {_text(fields.get('old_ino'))} -> {_text(fields.get('new_ino'))})")
    for e in t.events:
        d = divergence(e.name, e.fields) if e.time <= reloaded.time else None
        if d is not None and d.subject == "mapping" and (d.path, d.ino) == (path, old):
            # The first report of the held inode diverging: when the operator replaced it.
            return f"{text} {_delay(e.time, reloaded.time)} after it was {d.label}"
    return text


def verdict(t: Timeline) -> Verdict:
    """What happened to this target, in one terminal-safe sentence (see the module docstring)."""
    exits = [e for e in t.events if e.name in ENDS]
    if exits and exits[-1].name == "target.lost":
        return _lost_verdict(t, exits[-1])
    if exits:
        return _exit_verdict(t, exits[-1])
    who = _who(t)
    end = "at the end of the log" if t.cut_at is None else f"at {format_time(t.cut_at)}"
    live = live_divergences(t.events)
    twice = [d for d in live if d.kind == "duplicated"]
    if twice:  # two versions of one library at once: a state of its own
        return Verdict("running_duplicated", f"{who} was still running two versions of "
                       + ", ".join(f"{escape_control(d.path)} (inode {d.ino} and {_text(d.new_ino)})"
                                   for d in twice) + f" at once {end}")
    if live:
        what = ("running old code" if any(d.subject == "mapping" for d in live)
                else "holding stale files open")
        ordered = sorted(live.items(), key=lambda item: item[1])
        return Verdict("running_stale", f"{who} was still {what} {end}: "
                       + ", ".join(_describe_files(ordered)))
    reloads: dict[str | None, LogEvent] = {}
    for e in t.events:
        if e.name == "mapping.reloaded":
            reloads[_str(e.fields, "path")] = e  # the last reload of each file tells its state
    if reloads:
        done = "; ".join(_reload_text(t, e) for e in reloads.values())
        return Verdict("reloaded", f"{who} {done}; still running {end}")
    return Verdict("running", f"{who} was still running {end}; nothing diverged")


def select(events: Sequence[LogEvent], pids: Iterable[int] | None = None,
           since: datetime | None = None, until: datetime | None = None) -> list[TargetReport]:
    """The targets to report: those (of `pids`) with events in the window, each judged on its
    life up to `until`."""
    wanted = set(pids) if pids else None
    reports = []
    for life in build_timelines(events):
        if wanted is not None and life.pid not in wanted:
            continue
        shown = tuple(e for e in life.events
                      if (since is None or e.time >= since) and (until is None or e.time <= until))
        if not shown:
            continue
        judged = life
        if until is not None and life.events[-1].time > until:
            judged = Timeline(life.pid, tuple(e for e in life.events if e.time <= until), cut_at=until)
        reports.append(TargetReport(judged, shown, verdict(judged)))
    return reports


def daemon_warnings(events: Iterable[LogEvent], since: datetime | None = None,
                    until: datetime | None = None) -> list[LogEvent]:
    """The daemon's own warnings in the window (overflow, degraded): they qualify verdicts."""
    return [e for e in events if e.pid is None and e.fields.get("level") in WARNING_LEVELS
            and (since is None or e.time >= since) and (until is None or e.time <= until)]


# --- rendering ----------------------------------------------------------------------------


def _text(value: Any) -> str:
    """Any logged value as inert text: a hostile or damaged log may put anything anywhere."""
    if value is None:
        return "?"
    return escape_control(value if isinstance(value, str) else json.dumps(value))


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
    if kind == "duplicated":
        return (f"{path}: inode {_text(f.get('old_ino'))} and inode {_text(f.get('new_ino'))} "
                f"both mapped [{_text(f.get('perms'))}]")
    if kind == "replaced":
        return (f"{path}: inode {_text(f.get('mapped_ino'))} held, "
                f"path now names inode {_text(f.get('disk_ino'))}")
    if kind in DIVERGENCE_KINDS:
        perms = f" [{_text(f.get('perms'))}]" if "perms" in f else ""
        return f"{path}: inode {_text(f.get('mapped_ino'))} {kind}{perms}"
    # Anything else (watch.*, daemon.*, events of a newer version): its fields as they are.
    skip = {"timestamp", "level", "event", "pid"}
    return " ".join(f"{escape_control(k)}={_text(v)}" for k, v in f.items()
                    if k not in skip and not k.endswith("_bytes"))


def _line(e: LogEvent) -> str:
    return f"  {format_time(e.time)}  {escape_control(e.name):<19}  {describe(e)}"


def summary_line(files: int, events: int, skipped: int) -> str:
    return (f"read {_plural(files, 'file')}, {_plural(events, 'event')}, "
            f"skipped {_plural(skipped, 'bad line')}")


def render_text(reports: Sequence[TargetReport], warnings: Sequence[LogEvent],
                summary: str, out: TextIO, tail: Sequence[str] = ()) -> None:
    for r in reports:
        print(_who(r.timeline), file=out)
        for e in r.shown:
            print(_line(e), file=out)
        print(f"  verdict: {r.verdict.text}", file=out)
        print(file=out)
    if not reports:
        print("no target events", file=out)
    if warnings:
        print("daemon warnings:", file=out)
        for e in warnings:
            print(_line(e), file=out)
    for line in tail:
        print(line, file=out)
    print(summary, file=out)


def render_json(reports: Sequence[TargetReport], warnings: Sequence[LogEvent],
                counts: Mapping[str, int], out: TextIO) -> None:
    # ensure_ascii: the lines stay plain ASCII, no raw control or bidi character in them.
    for r in reports:
        print(json.dumps({
            "type": "target",
            "pid": r.timeline.pid,
            "comm": r.timeline.comm,
            "start_time": r.timeline.start_time,
            "outcome": r.verdict.outcome,
            "verdict": r.verdict.text,
            "timeline": [e.fields for e in r.shown],
        }), file=out)
    print(json.dumps({"type": "summary", **counts, "targets": len(reports),
                      "warnings": [e.fields for e in warnings]}), file=out)


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
    """Print the report.  Raises ReportError (one line) when a log cannot be read."""
    if args.since is not None and args.until is not None and args.since > args.until:
        raise ReportError("--since is after --until")
    events, skipped = read_events(args.logs)
    reports = select(events, args.pid, args.since, args.until)
    warnings = daemon_warnings(events, args.since, args.until)
    counts = tally.outcomes(reports)
    if args.json:
        render_json(reports, warnings, {"files": len(args.logs), "events": len(events),
                                        "skipped": skipped, "outcomes": counts}, out)
    else:
        shown, folded = tally.fold(reports)  # brief lives of one command: one line
        render_text(shown, warnings, summary_line(len(args.logs), len(events), skipped), out,
                    [*tally.folded_lines(folded), tally.tally_line(counts)])
    return 0
