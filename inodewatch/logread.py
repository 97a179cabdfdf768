"""From the daemon's log files to one stream of events, in bounded memory.

Lines.  A LOG is a plain or gzip file (recognised by its magic bytes, not its name), read in
chunks of 64 KiB.  A line longer than LINE_CAP (1 MiB; the daemon's longest, a target.exited
with a long `stale` list, is a few hundred KB) is one bad line: its first MiB is dropped
when the cap is reached and the rest up to the next newline skipped as it is read, so a file
of zeros with no newline at all is read in constant memory.  Blank and whitespace-only lines
are skipped in C (a chunk all blank at once, else a regex search for the next non-blank byte,
from which a line starts), so a gigabyte of newlines costs the time to decompress it.  The
damaged tail of a truncated or corrupt gzip file is one bad line; what came before it is
kept.

Parsing.  A line that is not UTF-8, not a JSON object, or lacks a string `event` or a valid
`timestamp` (or has a non-integer `pid`) is a bad line; so is a line with any value that
could not be printed back as JSON (NaN, a number out of float range such as 1e400, an
integer of more than 4300 digits), nesting too deep for the decoder (Python's recursion
limit: the RecursionError is caught) or a time out of range once in UTC
(9999-12-31T23:59:59-01:00).  Any bad value costs its line only.  (What is kept of a line
is printed back from its own text, never encoded again from the decoded value: any line
that could be decoded can be printed, however deep it nests.)

Order.  One daemon writes its file in the order things happened, so within a file lines are
taken in the order written (a wall clock stepped back does not reorder them).  Files are
merged by timestamp: each file's first event ranks it (logrotate's files given in any order
come out oldest first, and equal timestamps across a rotation keep the files' order), and a
file is opened only when the merge reaches its first event, so rotated files are read one
after the other while overlapping ones (two daemons' logs) are interleaved.  A line older
than the one passed on before it is still passed on, where it is, and counted
(`Counts.out_of_order`).  A LOG that is not a regular file (a pipe, `<(ssh host cat ...)`)
is read once, so it stays open from the start.
"""

from __future__ import annotations

import gzip
import heapq
import json
import math
import os
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, BinaryIO, NamedTuple

from inodewatch.text import escape_control

GZIP_MAGIC = b"\x1f\x8b"
LINE_CAP = 1 << 20
CHUNK = 1 << 16


class ReportError(Exception):
    """A log file cannot be read, or the arguments contradict each other (message is one line)."""


class LogEvent(NamedTuple):
    """One valid line of the log."""

    time: datetime  # aware, UTC
    name: str
    pid: int | None
    fields: Mapping[str, Any]  # the whole object, exactly as logged
    raw: bytes  # the line itself: kept instead of `fields` where memory counts


_new = tuple.__new__  # _new(LogEvent, (...)): without LogEvent.__new__'s Python frame


@dataclass
class Counts:
    """What a read passed on, skipped or found out of place, for the summary."""

    events: int = 0
    bad: int = 0
    out_of_order: int = 0


# --- parsing ------------------------------------------------------------------------------


def parse_time(text: str) -> datetime:
    """ISO 8601 with or without Z or an offset; naive means UTC.  Raises ValueError, also for
    a time that is out of range once in UTC (9999-12-31T23:59:59-01:00)."""
    when = datetime.fromisoformat(text)
    if when.tzinfo is timezone.utc:  # the daemon's own "...Z"
        return when
    if when.tzinfo is None:
        return when.replace(tzinfo=timezone.utc)
    try:
        return when.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError(f"out of range in UTC: {text!r}") from None


def _reject_constant(name: str) -> None:
    # NaN and Infinity are not JSON: accepting them would make --json print invalid JSON.
    raise ValueError(f"not JSON: {name}")


def _finite(text: str) -> float:
    # 1e400 is valid JSON but a float infinity in Python, printed back as Infinity.
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"out of range: {text}")
    return value


# One decoder for every line, its scanner called directly: json.loads with arguments builds a
# decoder at each call, and decode() costs two regex matches more (half the time of a line).
_SCAN = json.JSONDecoder(parse_float=_finite, parse_constant=_reject_constant).scan_once
_JSON_SPACE = " \t\n\r"


def parse_line(raw: bytes) -> LogEvent | None:
    """One log line as an event, or None when it is not one (see the module docstring)."""
    try:
        text = raw.decode("utf-8")
        start = len(text) - len(text.lstrip(_JSON_SPACE)) if text[:1] in _JSON_SPACE else 0
        obj, end = _SCAN(text, start)
    except (ValueError, RecursionError, StopIteration):  # UnicodeDecodeError is a ValueError;
        return None  # "[[[[…" recurses; StopIteration: no value at all
    if end != len(text) and text[end:].strip(_JSON_SPACE):
        return None  # more after the value
    if type(obj) is not dict:
        return None
    name, stamp, pid = obj.get("event"), obj.get("timestamp"), obj.get("pid")
    if type(name) is not str or type(stamp) is not str:
        return None
    if pid is not None and type(pid) is not int:  # bool is an int, but not a pid
        return None
    try:
        when = parse_time(stamp)
    except ValueError:
        return None
    return _new(LogEvent, (when, name, pid, obj, raw))


def parse_events(lines: Iterable[bytes | None], counts: Counts) -> Iterator[LogEvent]:
    """The events among non-blank lines, counting the bad ones; None stands for an unreadable
    piece (a line past the cap, a damaged rest)."""
    for raw in lines:
        event = parse_line(raw) if raw is not None else None
        if event is None:
            counts.bad += 1
        else:
            yield event


# --- lines --------------------------------------------------------------------------------


_NONBLANK = re.compile(rb"\S")


def bounded_lines(read: Callable[[int], bytes]) -> Iterator[bytes | None]:
    """The non-blank lines of a stream (`read(n)` as io's), each from its first non-blank
    byte (space, tab, CR, VT or FF before it are dropped); None for a line longer than
    LINE_CAP from there, which is never held whole."""
    carry = b""  # the start of a line begun in an earlier chunk, at most LINE_CAP bytes
    skipping = False  # inside a line past the cap: drop everything up to its newline
    search = _NONBLANK.search
    while chunk := read(CHUNK):
        start = 0
        if skipping or carry:
            newline = chunk.find(b"\n")
            if newline < 0:
                if not skipping:
                    if len(carry) + len(chunk) > LINE_CAP:
                        yield None
                        carry, skipping = b"", True
                    else:
                        carry += chunk
                continue
            if carry:
                line, carry = carry + chunk[:newline], b""
                yield line if len(line) <= LINE_CAP else None
            skipping = False
            start = newline + 1
        elif chunk.isspace():  # a run of blank lines: 16 times faster than the search
            continue
        while (found := search(chunk, start)) is not None:
            begin = found.start()
            end = chunk.find(b"\n", begin)
            if end < 0:
                carry = chunk[begin:]
                break
            yield chunk[begin:end]
            start = end + 1
    if carry:
        yield carry  # the last line, without a newline


def _file_lines(f: BinaryIO) -> Iterator[bytes | None]:
    # peek, not seek: a LOG may be a pipe, e.g. <(ssh host cat events.json)
    if f.peek(len(GZIP_MAGIC))[:len(GZIP_MAGIC)] != GZIP_MAGIC:  # type: ignore[attr-defined]
        yield from bounded_lines(f.read)
        return
    try:
        yield from bounded_lines(gzip.GzipFile(fileobj=f, mode="rb").read)
    except (EOFError, gzip.BadGzipFile, zlib.error):
        # Compression cut short (a crash during logrotate) or a damaged disk: keep the lines
        # before the damage and count the rest as one bad line.
        yield None


def _cannot_read(path: str, exc: OSError) -> ReportError:
    return ReportError(f"cannot read {escape_control(path)}: {exc.strerror or exc}")


def log_events(path: str, counts: Counts) -> Iterator[LogEvent]:
    """The events of one file, in the order written.  Raises ReportError (opening or reading)."""
    try:
        with open(path, "rb") as f:
            yield from parse_events(_file_lines(f), counts)
    except OSError as exc:  # from open() or a read; never from the consumer, which runs
        raise _cannot_read(path, exc) from None  # between our yields, not inside them


# --- files in time order ------------------------------------------------------------------


@dataclass
class _Source:
    path: str
    first: datetime | None  # the time of its first event; None: it has none
    stream: Iterator[LogEvent] | None = None  # kept open: a pipe cannot be read again
    head: LogEvent | None = None  # the kept stream's first event, already taken from it


def _survey(path: str, counts: Counts) -> _Source:
    """Open a LOG to find its first event.  A regular file is closed again (read anew when the
    merge reaches it, its bad lines counted then, unless it has no event at all); any other
    file stays open, positioned after that event."""
    try:
        regular = os.path.isfile(path)
    except OSError:
        regular = False
    own = Counts() if regular else counts
    stream = log_events(path, own)
    head = next(stream, None)
    if not regular:
        return _Source(path, head.time if head else None, stream, head)
    stream.close()
    if head is None:
        counts.bad += own.bad  # read whole already: never again
    return _Source(path, head.time if head else None)


def read(paths: Sequence[str], counts: Counts) -> Iterator[LogEvent]:
    """Every event of all files, merged in time order (see the module docstring).  Raises
    ReportError: every file is opened before the first event is given."""
    events = log_events(paths[0], counts) if len(paths) == 1 else _merge(paths, counts)
    last: datetime | None = None
    for event in events:
        counts.events += 1
        if last is not None and event.time < last:
            counts.out_of_order += 1
        else:
            last = event.time
        yield event


def _merge(paths: Sequence[str], counts: Counts) -> Iterator[LogEvent]:
    sources = [_survey(path, counts) for path in paths]
    ranked = sorted((s for s in sources if s.first is not None), key=_first)  # stable: ties keep
    heap: list[tuple[datetime, int, int, LogEvent, Iterator[LogEvent]]] = []  # the argument order
    waiting: list[tuple[int, _Source]] = []  # regular files, opened when the merge reaches them
    for rank, source in enumerate(ranked):
        if source.stream is not None and source.head is not None:
            heap.append((source.head.time, rank, 0, source.head, source.stream))
        else:
            waiting.append((rank, source))
    heapq.heapify(heap)
    waiting.reverse()  # pop() takes the earliest
    seq = 0  # ties within a file keep its order; the tuples never compare events
    while heap or waiting:
        # Open every file whose first event is not later than the next one to pass on.
        while waiting and (not heap or _first(waiting[-1][1]) <= heap[0][0]):
            rank, source = waiting.pop()
            stream = log_events(source.path, counts)
            if (event := next(stream, None)) is not None:
                seq += 1
                heapq.heappush(heap, (event.time, rank, seq, event, stream))
        if not waiting and len(heap) == 1:
            # One file left: the rest of it as written, without the heap.
            _, _, _, event, stream = heap.pop()
            yield event
            yield from stream
            return
        if heap:
            _, rank, _, event, stream = heap[0]
            yield event
            if (after := next(stream, None)) is not None:
                seq += 1
                heapq.heapreplace(heap, (after.time, rank, seq, after, stream))
            else:
                heapq.heappop(heap)


def _first(source: _Source) -> datetime:
    assert source.first is not None
    return source.first


def read_events(paths: Sequence[str]) -> tuple[list[LogEvent], int]:
    """Every event of all files in time order, and the number of bad lines (small logs)."""
    counts = Counts()
    events = list(read(paths, counts))
    return events, counts.bad
