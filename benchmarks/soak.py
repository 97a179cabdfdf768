#!/usr/bin/env python3
"""Soak: one watch daemon, one reloading plugin host, a file operation every 100 ms.

A script run by hand, not a test (not in CI).  As root, from a checkout with the package
installed (``scripts/setup``, or ``pip install -e .``)::

    python3 benchmarks/soak.py [--minutes 10] [--details FILE] [--keep]

It builds the demo (``make -s -C csrc``), works in a fresh temporary directory and runs

* the demo ``csrc/reload --mode hold --interval-ms 50 --lib so.so``: a plugin host that
  every tick dlcloses its handle and dlopens ./so.so again (``run``, then ``soN: version N``
  on stdout, read by a thread that stamps each line on arrival);
* one daemon ``sys.executable -m inodewatch --pid DEMO --log-file events.json`` (default
  ``--interval``), started from the temporary directory as an operator would; the
  operations start only once it is ready (``target.attached`` logged, its inotify fd
  watching so.so's inode and the directory, asleep in poll), as ``latency.py`` waits;
* a driver (this script) that every 100 ms, on a fixed schedule, performs the next
  operation in rotation, alternating so1 / so2 contents (kept in memory):

  1. ``rm so.so; cp soN.so so.so``: unlink, then create + write + close a new file;
  2. ``cp soN.so so.so.new; mv so.so.new so.so``: a fresh copy renamed over so.so;
  3. ``mv so.so so.so.old-K; cp soN.so so.so``: rename away, then a new copy at so.so.

  For each it records the times (``time.time()`` before the first syscall, before and
  after the one that makes so.so diverge -- the unlink or rename -- and when the new file
  is complete), the old inode (the one so.so named before) and the new one.  Every 2 s it
  removes the renamed-away ``so.so.old-K`` files that the demo no longer maps (read from
  ``/proc/DEMO/maps``), so the directory does not grow.

Every 10 s it samples the daemon's VmRSS (``/proc/PID/status``) and the load average; the
daemon's CPU is utime + stime (``/proc/PID/stat``) from the first operation to the end.
The run ends 2 s after the last operation (the demo has reloaded, the daemon's follow-up
re-reads are over); the daemon is stopped with SIGTERM, then the demo.

What the demo really did: ftrace
--------------------------------
Which file the demo held when an operation happened, and which it loaded next, is not a
guess: an ftrace instance of this script's own (tracefs mounted in the temporary directory
when it is not at /sys/kernel/tracing; removed at the end) records, on the ``tai`` trace
clock converted to CLOCK_REALTIME,

* the demo's ``munmap`` (its dlclose: one per tick) and ``openat`` entry and return (its
  dlopen of ./so.so: one per tick; a negative return is a failed load);
* the daemon's ``openat`` calls with their flags: each re-read opens ``/proc/PID/maps``
  (O_RDONLY), reads the maps and the held inodes' ``map_files`` links, then opens
  ``/proc/PID/fd`` (O_DIRECTORY).  So a *look* of the daemon is the span from a maps open
  to the next fd-directory open: what it knows of the mappings is from inside that span.

A load is matched to the file at so.so at its openat: the old one before the operation's
syscall, nothing or a partial file between an unlink / rename-away and the end of the
copy (a failed load: the demo then holds nothing until its next tick), the new one after.
``--no-ftrace`` (or no tracefs) falls back to assuming the demo held the old file and loads
the new one, and to the demo's stdout line arrival for the race evidence (coarse).

Matching, by inode
------------------
Each ``mapping.*`` event is attributed to the latest operation (by the event's own
``timestamp``) whose old inode is the event's ``mapped_ino`` (``old_ino`` for
``mapping.reloaded``); an event no operation explains is *unexpected* (an inode nothing
touched, e.g. libc).  Per operation, when the demo held its old inode:

* expected: at least one divergence event for the old inode -- ``mapping.deleted`` /
  ``mapping.replaced`` for (1) and (2), ``mapping.renamed`` / ``mapping.replaced`` for (3)
  (which of them depends on what the daemon's look caught; the combinations are printed)
  -- and then exactly one ``mapping.reloaded`` old -> the inode the demo loaded next
  (normally this operation's new file; a later one's when the demo skipped this file:
  "superseded");
* *matched*: exactly that, each event once;
* *resolved before seen*: no event at all, and the demo's dlclose of the old file came
  before the end of the daemon's first look that started after the operation: the
  divergence was over before the daemon could see it (a legitimate race; the gaps are
  printed as evidence);
* *missed*: no divergence although the daemon looked while the demo still held the old
  file, or a divergence without its reload;
* *duplicated*: the same event (same name, inodes and paths) twice for one operation;
* *unexpected*: any other event: a kind the operation cannot cause (``mapping.overwritten``
  -- nothing is ever written in place --, ``mapping.missing``, ``fd.*``), a reload to the
  wrong inode, ``watch.overflow`` / ``watch.degraded``, or an inode no operation touched.

When the demo did not hold the operation's old inode (it had skipped that file, or its
previous load failed), no event is expected for it: counted as "not held".
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import platform
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.daemon import Daemon, Event, event_time, inotify_inodes
from harness.demo import CSRC, Demo, build_demo
from harness.ftrace import TraceInstance
from harness.procfs import cpu_seconds, loadavg, mapped_inodes, status_kb, system_busy
from harness.procs import (BenchError, Children, die_with_parent, exits, say, scratch,
                           sigterm_as_interrupt, wait_for)
from harness.results import code_version
from harness.stats import Summary, fmt_ms, percentile

RSS_EVERY = 10.0  # seconds between samples of the daemon's VmRSS
CLEAN_EVERY = 2.0  # seconds between removals of renamed-away files
SETTLE = 2.0  # seconds after the last operation before the daemon is stopped
RSS_GROWTH_LIMIT_KB = 5 * 1024
REACT_MS = 10.0  # a daemon that was woken by the operation has looked within this (ms)
# ftrace's tai clock and time.time() agree to some tens of microseconds: a dlclose this close
# to an operation counts as simultaneous
CLOCK_MARGIN = 0.0001
O_DIRECTORY = 0o200000
O_PATH = 0o10000000

KIND_NAMES = {1: "(1) rm so.so; cp soN.so so.so", 2: "(2) mv so.so.new so.so",
              3: "(3) mv so.so so.so.old-K; cp"}
ALLOWED = {1: {"mapping.deleted", "mapping.replaced"},
           2: {"mapping.deleted", "mapping.replaced"},
           3: {"mapping.renamed", "mapping.replaced"}}
ROUTINE = {"daemon.started", "target.attached", "daemon.stopped"}
Unexpected = tuple[str, Event, "Op | None"]  # (reason, event, the operation it follows)


# --- the trace ----------------------------------------------------------------------------


class Trace:
    """An ftrace instance of our own, drained from trace_pipe by a thread: the demo's
    munmap, mmap and openat (entry and return), the daemon's openat entries (with their
    flags), inotify_add_watch returns and inotify_rm_watch entries."""

    LINE = re.compile(r"-(\d+)\s+\[\d+\]\s+\S+\s+(\d+\.\d+): "
                      r"(sys_openat|sys_munmap|sys_mmap|sys_inotify_add_watch|"
                      r"sys_inotify_rm_watch)(.*)$")

    def __init__(self, workdir: Path, demo: int, daemon: int) -> None:
        self.demo, self.daemon = demo, daemon
        self.demo_unmaps: list[float] = []
        self.demo_maps: list[float] = []  # mmap entries (dlopen mapping the library)
        self.demo_opens: list[float] = []
        self.demo_returns: list[tuple[float, int]] = []
        self.daemon_opens: list[tuple[float, int]] = []  # (time, flags)
        self.daemon_add_errors: list[tuple[float, int]] = []  # inotify_add_watch < 0
        self.daemon_adds = 0
        self.daemon_rms: list[float] = []  # inotify_rm_watch
        self.lost = 0
        self.fd: int | None = None
        self._stop = threading.Event()
        self._buffer = b""
        self._thread: threading.Thread | None = None
        self.instance = TraceInstance(workdir, f"inodewatch-soak-{os.getpid()}", 2048)
        try:
            of_demo, of_daemon = f"common_pid == {demo}", f"common_pid == {daemon}"
            for name, condition in (("sys_enter_openat", f"{of_demo} || {of_daemon}"),
                                    ("sys_exit_openat", of_demo),
                                    ("sys_enter_munmap", of_demo),
                                    ("sys_enter_mmap", of_demo),
                                    ("sys_exit_inotify_add_watch", of_daemon),
                                    ("sys_enter_inotify_rm_watch", of_daemon)):
                self.instance.enable(f"syscalls/{name}", condition)
            self.fd = self.instance.open_pipe()
        except BaseException:
            self.close()
            raise
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _drain(self) -> bool:
        assert self.fd is not None
        try:
            chunk = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return False
        if not chunk:
            return False
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        for raw in lines:
            self._parse(raw.decode(errors="replace"))
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._drain():
                self._stop.wait(0.05)

    @staticmethod
    def _ret(rest: str) -> int:
        ret = int(rest[4:].strip(), 16)
        return ret - (1 << 64) if ret >= 1 << 63 else ret

    def _parse(self, line: str) -> None:
        if "LOST" in line and "EVENTS" in line:
            m = re.search(r"LOST (\d+) EVENTS", line)
            self.lost += int(m.group(1)) if m else 1
            return
        m = self.LINE.search(line)
        if not m:
            return
        pid, call, rest = int(m.group(1)), m.group(3), m.group(4)
        t = self.instance.wall_time(m.group(2))
        exiting = rest.startswith(" -> ")
        if pid == self.demo:
            if call == "sys_munmap":
                self.demo_unmaps.append(t)
            elif call == "sys_mmap":
                self.demo_maps.append(t)
            elif exiting:
                self.demo_returns.append((t, self._ret(rest)))
            else:
                self.demo_opens.append(t)
        elif pid == self.daemon:
            if call == "sys_openat":
                fm = re.search(r"flags: (0x[0-9a-f]+|\d+)", rest)
                self.daemon_opens.append((t, int(fm.group(1), 0) if fm else 0))
            elif call == "sys_inotify_add_watch" and exiting:
                self.daemon_adds += 1
                if (ret := self._ret(rest)) < 0:
                    self.daemon_add_errors.append((t, ret))
            elif call == "sys_inotify_rm_watch":
                self.daemon_rms.append(t)

    def dump(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()
                if k.startswith(("demo_", "daemon_")) and isinstance(v, list)}

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.instance.disable()
        if self.fd is not None:
            while self._drain():
                pass
            os.close(self.fd)
            self.fd = None
        self.instance.close()


# --- the operations -----------------------------------------------------------------------


@dataclass
class Op:
    k: int
    kind: int
    version: int
    planned: float
    t_start: float = 0.0  # before the first syscall
    t_div: float = 0.0  # before the unlink / rename that makes so.so diverge
    t_div_end: float = 0.0  # after it
    t_done: float = 0.0  # the new file complete (written and closed) at so.so
    old_ino: int = 0
    new_ino: int = 0
    aside: str | None = None
    # just before the operation: what the daemon's inotify fd watched (/proc/PID/fdinfo),
    # and fs.inotify.max_user_watches (a system-wide setting other processes may change)
    dir_watched: bool = False
    so_watched: bool = False
    max_watches: int = 0
    # filled in by the analysis
    held: int | None = None  # the inode the demo held at t_div (None: nothing)
    next_load: int | None = None  # the next other inode the demo loaded
    copy_race: float | None = None  # the demo opened the new file this long before the copy ended
    events: list[dict[str, Any]] = field(default_factory=list)  # about the old inode
    new_events: list[dict[str, Any]] = field(default_factory=list)  # about the new inode
    verdict: str = ""
    flags: set[str] = field(default_factory=set)
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def watched(self) -> bool:
        return self.dir_watched and self.so_watched


def write_new(path: Path, data: bytes) -> int:
    """`cp`: create, write, close; the new inode."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o755)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        return os.fstat(fd).st_ino
    finally:
        os.close(fd)


def max_user_watches() -> int:
    return int(Path("/proc/sys/fs/inotify/max_user_watches").read_text())


class Driver:
    def __init__(self, work: Path, contents: dict[int, bytes]) -> None:
        self.work = work
        self.so = work / "so.so"
        self.new = work / "so.so.new"
        self.contents = contents
        self.ops: list[Op] = []
        self.current = os.stat(self.so).st_ino
        self.dir_ino = os.stat(work).st_ino
        self.cleaned = 0
        self.max_entries = 0

    def perform(self, op: Op, daemon_pid: int) -> None:
        data = self.contents[op.version]
        op.old_ino = self.current
        watched = inotify_inodes(daemon_pid)
        op.dir_watched, op.so_watched = self.dir_ino in watched, self.current in watched
        op.max_watches = max_user_watches()
        if op.kind == 1:
            op.t_start = op.t_div = time.time()
            os.unlink(self.so)
            op.t_div_end = time.time()
            op.new_ino = write_new(self.so, data)
            op.t_done = time.time()
        elif op.kind == 2:
            op.t_start = time.time()
            ino = write_new(self.new, data)
            op.t_div = time.time()
            os.rename(self.new, self.so)
            op.t_div_end = op.t_done = time.time()
            op.new_ino = ino
        else:
            op.aside = f"so.so.old-{op.k}"
            op.t_start = op.t_div = time.time()
            os.rename(self.so, self.work / op.aside)
            op.t_div_end = time.time()
            op.new_ino = write_new(self.so, data)
            op.t_done = time.time()
        self.current = op.new_ino
        self.ops.append(op)

    def clean(self, demo_pid: int) -> None:
        """Remove the renamed-away files the demo no longer maps."""
        names = os.listdir(self.work)
        self.max_entries = max(self.max_entries, len(names))
        try:
            held = mapped_inodes(demo_pid)
        except OSError:
            return
        for name in names:
            if name.startswith("so.so.old-"):
                path = self.work / name
                try:
                    if os.stat(path).st_ino not in held:
                        os.unlink(path)
                        self.cleaned += 1
                except FileNotFoundError:
                    pass


# --- the analysis -------------------------------------------------------------------------


@dataclass
class Look:
    start: float  # the daemon opens /proc/PID/maps
    end: float  # ... and, done with the mappings, /proc/PID/fd


def daemon_looks(opens: list[tuple[float, int]]) -> list[Look]:
    """Each re-read opens maps, then the fd directory, then stat: a look is the span from
    the last plain open before an fd-directory open to that open."""
    looks, last_plain = [], None
    for t, flags in opens:
        if flags & O_PATH:
            continue
        if flags & O_DIRECTORY:
            if last_plain is not None:
                looks.append(Look(last_plain, t))
            last_plain = None
        else:
            last_plain = t
    return looks


@dataclass
class Load:
    """One tick of the demo: dlclose (munmap), then dlopen (openat, then mmap if it worked)."""

    release: float  # its munmap (the old file let go)
    opened: float
    ret: int
    mapped: bool
    ino: int | None = None  # what it loaded (None: the load failed)


def demo_loads(trace: Trace) -> list[Load]:
    loads: list[Load] = []
    returns, maps, unmaps = trace.demo_returns, trace.demo_maps, trace.demo_unmaps
    for i, t in enumerate(trace.demo_opens):
        r = bisect.bisect_left(returns, (t, -1 << 64))
        t_ret, ret = returns[r] if r < len(returns) else (t, -1)
        nxt = trace.demo_opens[i + 1] if i + 1 < len(trace.demo_opens) else math.inf
        m = bisect.bisect_left(maps, t_ret)
        u = bisect.bisect_left(unmaps, t) - 1
        loads.append(Load(unmaps[u] if u >= 0 else t, t, ret,
                          ret >= 0 and m < len(maps) and maps[m] < nxt))
    return loads


def place_loads(loads: list[Load], ops: list[Op], initial: int,
                lines: list[tuple[float, str]]) -> int:
    """Which inode each load opened: the file at so.so at its openat.  Returns how many
    loads raced a rename within its syscall (either file possible: told apart by the version
    the demo printed for that tick, so1 and so2 alternating)."""
    divs = [op.t_div for op in ops]
    arrivals = [t for t, _ in lines]
    ambiguous = 0
    for load in loads:
        if not load.mapped:
            continue
        t = load.opened
        j = bisect.bisect_right(divs, t) - 1
        if j < 0:
            load.ino = initial
            continue
        op = ops[j]
        if t < op.t_div_end:
            if op.kind == 2:
                ambiguous += 1
                i = bisect.bisect_left(arrivals, t)
                printed = next((text for _, text in lines[i:i + 6] if "version" in text), "")
                new = printed.startswith(f"so{op.version}:") or not printed
                load.ino = op.new_ino if new else op.old_ino
            else:
                load.ino = op.old_ino  # the new file did not exist yet
        else:
            load.ino = op.new_ino
            if op.kind != 2 and t < op.t_done and op.copy_race is None:
                op.copy_race = op.t_done - t  # opened (and mapped) while still being written
    return ambiguous


def event_key(e: dict[str, Any]) -> tuple[Any, ...]:
    return (e["event"], e.get("mapped_ino"), e.get("disk_ino"), e.get("new_path"),
            e.get("old_ino"), e.get("new_ino"), e.get("path"))


def duplicates(events: list[dict[str, Any]], divs: list[float]) -> int:
    """Events logged again for the same state: same name, inodes and paths, and no
    operation in between (after one, the same numbers can be a new state: a freed inode
    number is soon given to the next new file)."""
    seen: dict[tuple[Any, ...], float] = {}
    n = 0
    for e in events:
        key, t = event_key(e), event_time(e)
        if key in seen and bisect.bisect_right(divs, t) == bisect.bisect_right(divs, seen[key]):
            n += 1
        seen[key] = t
    return n


def straddled(t: float, looks: list[Look], loads: list[Load]) -> Load | None:
    """The demo's reload that the daemon's last look before `t` spanned, if any: maps read
    before the dlclose, the map_files links stat'ed after (they may then name the new file)."""
    k = bisect.bisect_right([lk.end for lk in looks], t) - 1
    if k < 0:
        return None
    look = looks[k]
    i = bisect.bisect_right([ld.opened for ld in loads], look.end + 0.0005)
    for ld in loads[max(0, i - 3):i + 1]:
        if ld.release <= look.end and ld.opened + 0.0005 >= look.start:
            return ld
    return None


@dataclass
class Episode:
    """Consecutive operations before which the daemon did not watch so.so or its directory."""

    ops: list[Op]
    cause: str
    detail: str


def blind_causes(ops: list[Op], trace: Trace | None, looks: list[Look], loads: list[Load],
                 baseline_watches: int) -> list[Episode]:
    episodes: list[Episode] = []
    run: list[Op] = []
    for op in ops + [None]:  # type: ignore[list-item]
        if op is not None and not op.watched and (not run or op.k == run[-1].k + 1):
            run.append(op)
            continue
        if run:
            episodes.append(explain_blind(run, ops, trace, looks, loads, baseline_watches))
            run = []
        if op is not None and not op.watched:
            run = [op]
    return episodes


def explain_blind(run: list[Op], ops: list[Op], trace: Trace | None, looks: list[Look],
                  loads: list[Load], baseline_watches: int) -> Episode:
    first = run[0]
    what = "directory and so.so" if not (first.dir_watched or first.so_watched) else \
        ("directory" if not first.dir_watched else "so.so's inode")
    if min(op.max_watches for op in run) < baseline_watches:
        low = min(op.max_watches for op in run)
        return Episode(run, "watch limit", f"{what} not watched; fs.inotify.max_user_watches "
                       f"was {low} (at start {baseline_watches}): lowered by another process")
    if trace is None:
        return Episode(run, "unknown", f"{what} not watched (no trace)")
    before = ops[first.k - 1].t_div if first.k > 0 else 0.0
    errors = [(t, r) for t, r in trace.daemon_add_errors if before - 1.0 <= t <= first.t_div]
    if errors:
        return Episode(run, "watch limit", f"{what} not watched; inotify_add_watch failed "
                       f"with {sorted({-r for _, r in errors})} (ENOSPC=28) just before")
    rms = [t for t in trace.daemon_rms if before - 1.0 <= t <= first.t_div]
    if rms:
        r = rms[-1]
        k = bisect.bisect_right([lk.end for lk in looks], r) - 1
        look = looks[k] if k >= 0 else None
        if look is not None:
            gaps = [ld for ld in loads if ld.release <= look.end and ld.opened >= look.start]
            if gaps:
                g = gaps[0]
                return Episode(run, "look between dlclose and dlopen",
                               f"{what} not watched: the daemon removed its watches at "
                               f"{(r - first.t_div) * 1000:+.1f} ms after a look "
                               f"({(look.start - first.t_div) * 1000:+.2f}..{(look.end - first.t_div) * 1000:+.2f} ms) "
                               f"that fell between the demo's dlclose "
                               f"({(g.release - first.t_div) * 1000:+.2f} ms) and dlopen "
                               f"({(g.opened - first.t_div) * 1000:+.2f} ms): nothing mapped")
        return Episode(run, "watches removed", f"{what} not watched: the daemon removed "
                       f"watches at {(r - first.t_div) * 1000:+.1f} ms (cause not identified)")
    return Episode(run, "unknown", f"{what} not watched; no watch removal or failure traced")


def what_demo_did(ops: list[Op], initial: int, trace: Trace | None,
                  lines: list[tuple[float, str]]) -> tuple[list[Load], list[Look], int]:
    """What the demo held at each operation and loaded next (op.held, op.next_load): the
    demo's loads, the daemon's looks, and how many loads raced a rename."""
    if trace is None:
        for op in ops:
            op.held, op.next_load = op.old_ino, op.new_ino
        return [], [], 0
    loads = demo_loads(trace)
    ambiguous = place_loads(loads, ops, initial, lines)
    looks = daemon_looks(trace.daemon_opens)
    opened = [ld.opened for ld in loads]
    for op in ops:
        i = bisect.bisect_left(opened, op.t_div)
        op.held = loads[i - 1].ino if i > 0 else initial
        if i < len(loads) and loads[i].release < op.t_div - CLOCK_MARGIN:
            op.held = None  # the demo had just let go of it (dlclose before the operation)
        # (a load just before the unlink / rename took effect reopens the old file: the
        # divergence goes on until a load of another file)
        op.next_load = next((ld.ino for ld in loads[i:]
                             if ld.ino is not None and ld.ino != op.old_ino), None)
    return loads, looks, ambiguous


def attribute(ops: list[Op], events: list[Event], demo_pid: int) -> list[Unexpected]:
    """Attribute every event to an operation, by inode: a divergence to the latest operation
    whose old inode it names; a reload to the latest one whose old -> next pair it names
    (inode numbers are soon reused, and a late event may come after the next operation),
    else to the latest whose old inode it names; an overwrite to the operation that created
    the file when the demo mapped it before the copy was done.  The events no operation
    explains."""
    unexpected: list[Unexpected] = []
    by_old: dict[int, list[Op]] = {}
    by_new: dict[int, list[Op]] = {}
    for op in ops:
        by_old.setdefault(op.old_ino, []).append(op)
        by_new.setdefault(op.new_ino, []).append(op)
    for e in events:
        name = e["event"]
        if name in ROUTINE:
            continue
        if e.get("pid") not in (None, demo_pid) or not name.startswith("mapping."):
            unexpected.append((f"{name} (not a mapping event of the demo)", e, None))
            continue
        te = event_time(e)
        ino = e.get("old_ino") if name == "mapping.reloaded" else e.get("mapped_ino")
        olds = [op for op in by_old.get(ino, []) if op.t_div <= te]
        news = [op for op in by_new.get(ino, []) if op.t_div <= te]
        if name == "mapping.reloaded":
            pair = [op for op in olds if e.get("new_ino") in (op.next_load, op.new_ino)]
            if pair:
                olds = pair
        if name == "mapping.overwritten" and news and news[-1].copy_race is not None:
            news[-1].new_events.append(e)
        elif olds:
            olds[-1].events.append(e)
        elif news:
            news[-1].new_events.append(e)
        else:
            unexpected.append((f"{name} for an inode no operation touched", e, None))
    return unexpected


class Judge:
    """The verdict of each operation, from the events attributed to it and the trace."""

    def __init__(self, ops: list[Op], events: list[Event], trace: Trace | None,
                 looks: list[Look], lines: list[tuple[float, str]],
                 unexpected: list[Unexpected]) -> None:
        self.trace = trace
        self.looks = looks
        self.look_starts = [lk.start for lk in looks]
        self.unmaps = trace.demo_unmaps if trace is not None else []
        self.lines = lines
        self.position = {id(e): i for i, e in enumerate(events)}
        self.divs = [op.t_div for op in ops]
        self.unexpected = unexpected
        self.explained: list[tuple[Event, Op]] = []

    def flag(self, reason: str, e: Event, op: Op) -> None:
        self.unexpected.append((reason, e, op))
        op.flags.add("unexpected")

    def judge(self, op: Op) -> None:
        for e in op.new_events:  # about the file this operation created
            if e["event"] == "mapping.overwritten" and op.copy_race is not None:
                self.explained.append((e, op))  # the demo mapped it while it was being written
            else:
                self.flag(f"{e['event']} for the new file of operation ({op.kind})", e, op)
        div = [e for e in op.events if e["event"] in ALLOWED[op.kind]]
        rel = [e for e in op.events if e["event"] == "mapping.reloaded"]
        for e in op.events:
            if e["event"] not in ALLOWED[op.kind] and e["event"] != "mapping.reloaded":
                self.flag(f"{e['event']} after operation ({op.kind})", e, op)
        if duplicates(op.events, self.divs):
            op.flags.add("duplicated")
        if op.held != op.old_ino:
            op.verdict = "not held"
            for e in div + rel:
                self.flag(f"{e['event']} for an inode the demo did not hold", e, op)
            return
        if op.next_load is not None and op.next_load != op.new_ino:
            op.flags.add("superseded")
        for e in rel:
            if e.get("new_ino") != op.next_load:
                self.flag("mapping.reloaded to an inode the demo did not load next", e, op)
        if rel and div and self.position[id(rel[0])] < self.position[id(div[0])]:
            op.flags.add("reload before divergence")
        if not op.events:
            self.no_event(op)
            return
        if not div or not rel:
            op.flags.add("missed")  # a reload without its divergence, or the reverse
        if len(rel) > 1:
            op.flags.add("duplicated")
        bad = op.flags & {"missed", "duplicated", "unexpected", "reload before divergence"}
        op.verdict = "matched" if not bad else "flawed"
        op.evidence["combo"] = "+".join(sorted({e["event"].split(".")[1] for e in div}))

    def no_event(self, op: Op) -> None:
        """No event at all: a race, or a miss.  Evidence from the trace."""
        if self.trace is not None:
            j = bisect.bisect_left(self.unmaps, op.t_div - CLOCK_MARGIN)
            release = self.unmaps[j] if j < len(self.unmaps) else math.inf
            k = bisect.bisect_left(self.look_starts, op.t_div)
            look = self.looks[k] if k < len(self.looks) else None
            op.evidence = {"release_ms": (release - op.t_div) * 1000,
                           "look_start_ms": ((look.start - op.t_div) * 1000
                                             if look else math.inf),
                           "look_end_ms": (look.end - op.t_div) * 1000 if look else math.inf}
            # A race only if the daemon was watching and looked at once (woken by the
            # operation), yet too late: the demo had already let go of the old file.
            prompt = look is not None and look.start - op.t_div <= REACT_MS / 1000
            raced = prompt and release < look.end  # type: ignore[union-attr]
        else:
            after = [t for t, text in self.lines if t >= op.t_div and text == "run"]
            op.evidence = {"stdout_ms": (after[0] - op.t_div) * 1000 if after else math.inf}
            raced = op.evidence["stdout_ms"] <= 2.0
        if raced and op.watched:
            op.verdict = "resolved before seen"
        else:
            op.verdict = "flawed"
            op.flags.add("missed")
            if not op.watched:
                op.flags.add("not watching")


def analyse(ops: list[Op], initial: int, events: list[Event], demo_pid: int,
            trace: Trace | None, lines: list[tuple[float, str]],
            baseline_watches: int) -> dict[str, Any]:
    loads, looks, ambiguous = what_demo_did(ops, initial, trace, lines)
    judge = Judge(ops, events, trace, looks, lines, attribute(ops, events, demo_pid))
    for op in ops:
        judge.judge(op)
    unexpected = judge.unexpected
    episodes = blind_causes(ops, trace, looks, loads, baseline_watches)
    straddles = {id(e): ld for _, e, _ in unexpected
                 if looks and (ld := straddled(event_time(e), looks, loads)) is not None}
    return {"unexpected": unexpected, "explained": judge.explained, "ambiguous": ambiguous,
            "episodes": episodes, "loads": loads, "looks": looks, "straddles": straddles}


# --- reporting ----------------------------------------------------------------------------


def summary_of(seconds: list[float]) -> str:
    if not seconds:
        return "(none)"
    s = Summary.of(seconds)
    return (f"n {s.n}, min {fmt_ms(s.min)}, p50 {fmt_ms(s.p50)}, p99 {fmt_ms(s.p99)}, "
            f"max {fmt_ms(s.max)} ms")


def header(args: argparse.Namespace, run: dict[str, Any], ops: list[Op], result: dict[str, Any],
           trace: Trace | None) -> list[str]:
    wall = run["t_end"] - run["t_first"]
    out = [f"inodewatch soak: {wall / 60:.1f} min, demo --mode hold --interval-ms "
           f"{args.interval_ms}, an operation every {args.op_ms} ms",
           f"  code: inodewatch {run['version']}",
           f"  host: Linux {platform.release()}, {os.cpu_count()} CPUs, Python "
           f"{platform.python_version()}; load average at start "
           f"{' '.join(map(str, run['load_start']))}, at end {' '.join(map(str, run['load_end']))}"
           f"; 1-min load sampled every {RSS_EVERY:g} s: mean {run['load_mean']:.2f}, max "
           f"{run['load_max']:.2f}; all CPUs busy {run['busy'] * 100:.0f} % of the run",
           f"  daemon: {' '.join(run['daemon_args'][:3])} --pid PID --log-file FILE (default "
           "--interval 1.0)"]
    if trace is not None:
        out.append(f"  ftrace: {len(trace.demo_opens)} demo dlopens, {len(trace.demo_unmaps)} "
                   f"dlcloses, {len(result['looks'])} daemon looks at the maps, "
                   f"{trace.daemon_adds} inotify_add_watch ({len(trace.daemon_add_errors)} "
                   f"failed), {len(trace.daemon_rms)} inotify_rm_watch; lost events: "
                   f"{trace.lost}; loads racing a rename within its syscall: {result['ambiguous']}")
    else:
        out.append(f"  no ftrace ({run.get('no_trace', '--no-ftrace')}): the demo is assumed to "
                   "hold each old file and load each new one; race evidence from stdout "
                   "arrival (coarse)")
    slips = [(op.t_start - op.planned) * 1000 for op in ops]
    errors = ", ".join(f"{n}x {t!r}" for t, n in Counter(run["load_errors"]).most_common())
    out += [f"  operations: {len(ops)} done; start behind schedule: p50 "
            f"{percentile(slips, 50):.2f} ms, max {max(slips):.2f} ms; demo: {run['ticks']} "
            f"ticks, {len(run['load_errors'])} failed loads ({errors})",
            f"  directory: at most {run['max_entries']} entries; {run['cleaned']} renamed-away "
            "files removed once unmapped"]
    low = [op for op in ops if op.max_watches < run["max_watches"]]
    if low:
        out.append(f"  NOTE: fs.inotify.max_user_watches (a system-wide setting) was lowered by "
                   f"another process during {len(low)} operations (min "
                   f"{min(op.max_watches for op in low)}, at start {run['max_watches']})")
    blind = [op for op in ops if not op.watched]
    out += [f"  the daemon's inotify watched so.so's inode and its directory just before "
            f"{len(ops) - len(blind)} of {len(ops)} operations (directory not watched: "
            f"{sum(not op.dir_watched for op in ops)}, so.so's inode not watched: "
            f"{sum(not op.so_watched for op in ops)})", ""]
    return out


def verdict_table(ops: list[Op]) -> tuple[list[str], Counter[str]]:
    """Per operation kind, the verdicts and flags; and the totals."""
    out = [f"  {'operation':<34} {'done':>5} {'matched':>7} {'resolved':>8} {'not':>5} "
           f"{'flawed':>6}: {'missed':>6} {'dupl.':>5} {'unexp.':>6}   matched but superseded",
           f"  {'':<34} {'':>5} {'exactly':>7} {'b. seen':>8} {'held':>5}"]
    totals: Counter[str] = Counter()
    for kind in (1, 2, 3, 0):
        sel = [op for op in ops if kind in (0, op.kind)]
        row: Counter[str] = Counter()
        for op in sel:
            row["v:" + op.verdict] += 1
            for f in ("missed", "duplicated", "unexpected"):
                row[f] += f in op.flags
            row["superseded"] += op.verdict == "matched" and "superseded" in op.flags
        label = KIND_NAMES.get(kind, "total")
        out.append(f"  {label:<34} {len(sel):>5} {row['v:matched']:>7} "
                   f"{row['v:resolved before seen']:>8} {row['v:not held']:>5} "
                   f"{row['v:flawed']:>6}: {row['missed']:>6} {row['duplicated']:>5} "
                   f"{row['unexpected']:>6}   {row['superseded']}")
        if kind == 0:
            totals = row
    out += ["  (each operation is matched, resolved before seen, not held or flawed; a flawed "
            "one is flagged missed, duplicated and/or unexpected)", ""]
    return out, totals


def latencies(ops: list[Op], result: dict[str, Any], trace: Trace | None) -> list[str]:
    """The divergence combinations seen, and the latencies of matched operations."""
    out = ["  divergence events per matched operation (what the daemon's looks caught):"]
    for kind in (1, 2, 3):
        combos = Counter(op.evidence.get("combo") for op in ops
                         if op.kind == kind and op.verdict == "matched")
        out.append(f"    {KIND_NAMES[kind]:<34} " +
                   ", ".join(f"{c} x{n}" for c, n in combos.most_common()))
    first_div, reload_lat = [], []
    for op in ops:
        if op.verdict != "matched":
            continue
        div = [event_time(e) for e in op.events if e["event"] in ALLOWED[op.kind]]
        first_div.append(min(div) - op.t_div)
        rel = [event_time(e) for e in op.events if e["event"] == "mapping.reloaded"]
        nl = [ld.opened for ld in result["loads"]
              if ld.ino == op.next_load and ld.opened >= op.t_div]
        if rel and nl and nl[0] <= rel[0]:
            reload_lat.append(rel[0] - nl[0])
    out.append(f"  latency, the operation's syscall -> first divergence event: "
               f"{summary_of(first_div)}")
    if trace is not None:
        out.append(f"  latency, the demo's dlopen (openat) -> mapping.reloaded: "
                   f"{summary_of(reload_lat)}")
    return out


def races(ops: list[Op], trace: Trace | None) -> list[str]:
    found = [op for op in ops if op.verdict == "resolved before seen"]
    if not found:
        return []
    out = ["", f"  resolved before seen: {len(found)} operations without any event: the daemon "
           f"watched and looked within {REACT_MS:g} ms, but the demo had let go of the old "
           "file before that look was done with the mappings:"]

    def of(key: str) -> str:
        return summary_of([op.evidence[key] / 1000 for op in found])
    if trace is None:
        return out + ["    operation -> the demo's next 'run' line: " + of("stdout_ms")]
    out += ["    operation -> the demo's dlclose: " + of("release_ms"),
            "    operation -> the daemon's first look (maps opened): " + of("look_start_ms"),
            "    operation -> that look done with the mappings: " + of("look_end_ms")]
    for op in found[:3]:
        out.append(f"    e.g. op {op.k} ({op.kind}): dlclose {op.evidence['release_ms']:+.2f} ms, "
                   f"daemon look {op.evidence['look_start_ms']:+.2f}.."
                   f"{op.evidence['look_end_ms']:+.2f} ms")
    return out


def blind_episodes(ops: list[Op], episodes: list[Episode]) -> list[str]:
    if not episodes:
        return []
    blind = sum(not op.watched for op in ops)
    out = ["", f"  the daemon was not watching before {blind} operations, in {len(episodes)} "
           "episodes; by cause:"]
    for cause, n in Counter(ep.cause for ep in episodes).most_common():
        n_ops = sum(len(ep.ops) for ep in episodes if ep.cause == cause)
        n_bad = sum(op.verdict == "flawed" for ep in episodes if ep.cause == cause
                    for op in ep.ops)
        out.append(f"    {n:>4} episodes, {n_ops} operations ({n_bad} of them flawed): {cause}")
    return out + [f"    e.g. ops {ep.ops[0].k}-{ep.ops[-1].k}: {ep.detail}" for ep in episodes[:6]]


def flawed_ops(ops: list[Op]) -> list[str]:
    flawed = [op for op in ops if op.verdict == "flawed"]
    if not flawed:
        return []
    out = ["", f"  flawed operations ({len(flawed)}; {sum(not op.watched for op in flawed)} of "
           "them right after the daemon had stopped watching; first 8):"]
    for op in flawed[:8]:
        evs = ", ".join(f"{e['event']}@{(event_time(e) - op.t_div) * 1000:+.1f}ms"
                        for e in op.events) or "no event"
        extra = " ".join(f"{k} {fmt_ms(v / 1000)}" for k, v in op.evidence.items()
                         if isinstance(v, float))
        out.append(f"    op {op.k} ({op.kind}) {sorted(op.flags)} old {op.old_ino} -> new "
                   f"{op.new_ino}, demo held {op.held}, loaded next {op.next_load}, daemon "
                   f"{'watching' if op.watched else 'NOT watching'}: {evs} {extra}")
    return out


def odd_events(result: dict[str, Any]) -> list[str]:
    """Overwrites explained by a copy the demo mapped early, and the unexpected events."""
    out = []
    explained = result["explained"]
    if explained:
        out += ["", f"  mapping.overwritten for a new file the demo had mapped before the copy "
                f"was done (a real write into a mapped file; not counted as unexpected): "
                f"{len(explained)}"]
        for e, op in explained[:3]:
            out.append(f"    e.g. op {op.k} ({op.kind}): the demo's dlopen "
                       f"{op.copy_race * 1000:.2f} ms before the copy ended; event "
                       f"{(event_time(e) - op.t_div) * 1000:+.1f} ms")
    unexpected, straddles = result["unexpected"], result["straddles"]
    if unexpected:
        out += ["", f"  unexpected events: {len(unexpected)}"]
        for reason, n in Counter(r for r, _, _ in unexpected).most_common():
            out.append(f"    {n:>5} x {reason}")
        out.append(f"    ({len(straddles)} of them logged by a re-read that spanned the demo's "
                   "dlclose + dlopen: maps read before, map_files stat'ed after)")
        for reason, e, op in unexpected[:8]:
            at = f" (op {op.k}, {(event_time(e) - op.t_div) * 1000:+.1f} ms)" if op else ""
            ld = straddles.get(id(e))
            st = (f" [look spanned the demo's dlclose {(ld.release - op.t_div) * 1000:+.2f} ms"
                  f" / dlopen {(ld.opened - op.t_div) * 1000:+.2f} ms]") if ld and op else ""
            out.append(f"    e.g.{at}{st}: {json.dumps(e)[:260]}")
    return out


def resources(run: dict[str, Any], events: list[Event]) -> tuple[list[str], int]:
    """The daemon's RSS and CPU; and its RSS growth (kB)."""
    out = [f"  daemon stderr: {run['daemon_stderr'][:300]!r}"] if run["daemon_stderr"] else []
    rss_kb = [kb for _, kb in run["rss"]]
    growth = rss_kb[-1] - rss_kb[0]
    wall = run["t_end"] - run["t_first"]
    cpu = run["cpu_end"] - run["cpu_start"]
    return out + [
        "", f"  daemon RSS (VmRSS, {len(rss_kb)} samples every {RSS_EVERY:g} s): start "
        f"{rss_kb[0] / 1024:.1f} MB, end {rss_kb[-1] / 1024:.1f} MB, max "
        f"{max(rss_kb) / 1024:.1f} MB, growth {growth / 1024:+.2f} MB",
        f"  daemon CPU (utime + stime): {cpu:.1f} s over {wall:.0f} s = {cpu / wall * 100:.1f} % "
        f"of one core; {len(events)} events logged", ""], growth


def verdicts(run: dict[str, Any], totals: Counter[str], unexpected: int, growth: int) -> list[str]:
    out = []
    died = run.get("died")
    if died:
        out += ["", f"  THE DAEMON DIED (exit {died['returncode']}) after operation {died['k']}; "
                "operations from 0.5 s before were not judged.  Its stderr ends:"]
        out += [f"    {line}" for line in died["stderr"].strip().splitlines()[-8:]]
    judged = [
        ("the daemon stayed up", not died, f"died after operation {died['k']}" if died else
         "until stopped"),
        ("nothing missed (except the races resolved before seen: "
         f"{totals['v:resolved before seen']})", totals["missed"] == 0,
         f"{totals['missed']} operations missed"),
        ("nothing duplicated", totals["duplicated"] == 0, f"{totals['duplicated']} operations"),
        ("no unexpected events", not unexpected, f"{unexpected} events"),
        (f"daemon RSS growth <= {RSS_GROWTH_LIMIT_KB // 1024} MB", growth <= RSS_GROWTH_LIMIT_KB,
         f"{growth / 1024:+.2f} MB"),
    ]
    return out + [f"{'PASS' if ok else 'MISS'} {label}: {detail}" for label, ok, detail in judged]


def report(args: argparse.Namespace, run: dict[str, Any], ops: list[Op],
           result: dict[str, Any], events: list[Event], trace: Trace | None) -> int:
    table, totals = verdict_table(ops)
    used, growth = resources(run, events)
    out = [*header(args, run, ops, result, trace), *table, *latencies(ops, result, trace),
           *races(ops, trace), *blind_episodes(ops, result["episodes"]), *flawed_ops(ops),
           *odd_events(result), *used,
           *verdicts(run, totals, len(result["unexpected"]), growth)]
    print("\n".join(out), flush=True)
    return 0


# --- the run ------------------------------------------------------------------------------


class Soak:
    """The processes of one run (the demo, the daemon, the trace) and its driver."""

    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args = args
        self.root = root
        work = root / "demo"
        work.mkdir()
        contents = {v: (CSRC / f"so{v}.so").read_bytes() for v in (1, 2)}
        (work / "so.so").write_bytes(contents[1])
        os.chmod(work / "so.so", 0o755)
        self.driver = Driver(work, contents)
        self.initial = self.driver.current
        self.children = Children()
        self.demo: Demo | None = None
        self.daemon: Daemon | None = None
        self.trace: Trace | None = None
        self.run: dict[str, Any] = {}
        self.lines: list[tuple[float, str]] = []

    def start(self) -> None:
        """The demo, its first tick, the daemon and the trace; then the daemon ready."""
        args = self.args
        # the demo's life is bounded should this script be SIGKILLed (PDEATHSIG too)
        ticks = int((args.minutes * 60 * 2 + 300) * 1000 / args.interval_ms)
        demo = self.demo = Demo(self.children, self.driver.work, "hold", args.interval_ms,
                                Path("so.so"), ticks, stderr=subprocess.STDOUT,
                                preexec_fn=die_with_parent)
        wait_for(lambda: any("version" in t for _, t in demo.snapshot()), args.timeout,
                 "the demo's first tick")
        daemon = self.daemon = Daemon(self.children, ["--pid", str(demo.pid)],
                                      self.root / "events.json", self.root,
                                      err=self.root / "daemon.stderr")
        self.run["daemon_args"] = daemon.args
        if not args.no_ftrace:
            try:
                self.trace = Trace(self.root, demo.pid, daemon.pid)
            except (OSError, subprocess.CalledProcessError) as exc:
                self.run["no_trace"] = str(exc)
                say("soak", f"no ftrace ({exc}); falling back to stdout timing")
        daemon.wait_ready(demo.pid, {self.initial, self.driver.dir_ino}, args.timeout)

    def check_alive(self) -> None:
        assert self.daemon is not None and self.demo is not None
        self.daemon.check_alive()
        if self.demo.proc.poll() is not None:
            raise BenchError(f"demo exited ({self.demo.proc.returncode})")

    def drive(self) -> None:
        """An operation every --op-ms on a fixed schedule; the samples on the way."""
        assert self.daemon is not None and self.demo is not None
        from inodewatch import __version__
        args, run, daemon = self.args, self.run, self.daemon
        run.update(load_start=loadavg(), max_watches=max_user_watches(),
                   version=f"{__version__}, commit {code_version()}",
                   busy0=system_busy(), cpu_start=cpu_seconds(daemon.pid))
        run["rss"] = [(time.time(), status_kb(daemon.pid, "VmRSS"))]
        run["loads"] = [run["load_start"][0]]
        period = args.op_ms / 1000
        t_first = run["t_first"] = time.time() + period
        total = int(args.minutes * 60 / period)
        due = {"rss": t_first + RSS_EVERY, "clean": t_first + CLEAN_EVERY,
               "progress": t_first + 60}
        say("soak", f"{total} operations over {args.minutes:g} min in {self.root}")
        for k in range(total):
            planned = t_first + k * period
            delay = planned - time.time()
            if delay > 0:
                time.sleep(delay)
            self.driver.perform(Op(k, k % 3 + 1, 2 if k % 2 == 0 else 1, planned), daemon.pid)
            if daemon.proc.poll() is not None:  # it died: judge what came before, and say so
                run["died"] = {"k": k, "at": time.time(), "returncode": daemon.proc.returncode,
                               "stderr": daemon.stderr()[-3000:]}
                say("soak", f"the daemon died ({daemon.proc.returncode}) after operation {k}")
                return
            self.on_the_way(k, total, due)

    def on_the_way(self, k: int, total: int, due: dict[str, float]) -> None:
        """Between operations: clean renamed-away files, sample RSS and load, progress."""
        assert self.daemon is not None and self.demo is not None
        now, run = time.time(), self.run
        if now >= due["clean"]:
            due["clean"] = now + CLEAN_EVERY
            self.driver.clean(self.demo.pid)
            self.check_alive()
        if now >= due["rss"]:
            due["rss"] += RSS_EVERY
            run["rss"].append((now, status_kb(self.daemon.pid, "VmRSS")))
            run["cpu_end"] = cpu_seconds(self.daemon.pid)
            run["loads"].append(loadavg()[0])
        if now >= due["progress"]:
            due["progress"] += 60
            say("soak", f"{k + 1}/{total} operations, {len(self.daemon.log.read())} events, "
                f"daemon VmRSS {run['rss'][-1][1]} kB")

    def finish(self) -> None:
        """The end of the run: its last samples, then the daemon stopped."""
        assert self.daemon is not None and self.demo is not None
        run = self.run
        if "died" not in run:
            time.sleep(SETTLE)
            self.check_alive()
            run["t_end"] = time.time()
            run["cpu_end"] = cpu_seconds(self.daemon.pid)
            run["rss"].append((run["t_end"], status_kb(self.daemon.pid, "VmRSS")))
        else:
            run["t_end"] = run["died"]["at"]
            run.setdefault("cpu_end", run["cpu_start"])
            # what it could not finish is not judged: operations from 0.5 s before
            self.driver.ops = [op for op in self.driver.ops if op.t_div < run["t_end"] - 0.5]
            run["cutoff"] = run["t_end"] - 0.5
        run["loads"].append(loadavg()[0])
        run["load_end"] = loadavg()
        busy0, busy1 = run.pop("busy0"), system_busy()
        run["busy"] = (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1])
        run["load_mean"] = sum(run["loads"]) / len(run["loads"])
        run["load_max"] = max(run["loads"])
        self.driver.clean(self.demo.pid)
        self.daemon.stop()

    def close(self) -> None:
        if self.trace is not None:
            self.trace.close()
        if self.demo is not None:
            self.lines = self.demo.snapshot()
            self.demo.stop()
        self.children.stop_all()
        if self.daemon is not None:
            self.daemon.log.close()
        self.run["daemon_stderr"] = self.daemon.stderr().strip() if self.daemon else ""


def measure(args: argparse.Namespace, root: Path) -> Soak:
    soak = Soak(args, root)
    try:
        soak.start()
        soak.drive()
        soak.finish()
    finally:
        soak.close()
    run, lines = soak.run, soak.lines
    run["ticks"] = sum(1 for _, t in lines if t == "run")
    run["load_errors"] = [t for _, t in lines if t.startswith("reload:")]
    run["cleaned"] = soak.driver.cleaned
    run["max_entries"] = soak.driver.max_entries
    return soak


def write_details(path: str, ops: list[Op], trace: Trace | None, result: dict[str, Any],
                  lines: list[tuple[float, str]]) -> None:
    with open(path, "w") as f:
        for op in ops:
            record = {k: v for k, v in op.__dict__.items() if k != "flags"}
            record["flags"] = sorted(op.flags)
            f.write(json.dumps(record) + "\n")
    if trace is not None:
        with open(path + ".trace.json", "w") as f:
            json.dump({**trace.dump(), "looks": [(lk.start, lk.end) for lk in result["looks"]],
                       "demo_lines": lines}, f)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the run (default 10)")
    parser.add_argument("--interval-ms", type=int, default=50, help="the demo's tick (default 50)")
    parser.add_argument("--op-ms", type=int, default=100,
                        help="time between operations (default 100)")
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds for set-up waits")
    parser.add_argument("--details", metavar="FILE",
                        help="write one JSON line per operation (times, inodes, events, verdict)")
    parser.add_argument("--no-ftrace", action="store_true", help="do not trace the demo / daemon")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if os.geteuid() != 0:
        say("soak", "note: not root; the daemon may lack access to the demo's map_files, and "
            "ftrace is unavailable")
    build_demo()
    sigterm_as_interrupt()
    with exits("soak"), scratch("inodewatch-soak-", "soak", keep=args.keep) as root:
        soak = measure(args, root)
    assert soak.demo is not None and soak.daemon is not None
    run, ops = soak.run, soak.driver.ops
    events = [e for e in soak.daemon.log.events
              if "cutoff" not in run or event_time(e) < run["cutoff"]]
    result = analyse(ops, soak.initial, events, soak.demo.pid, soak.trace, soak.lines,
                     run["max_watches"])
    if args.details:
        write_details(args.details, ops, soak.trace, result, soak.lines)
    return report(args, run, ops, result, events, soak.trace)


if __name__ == "__main__":
    sys.exit(main())
