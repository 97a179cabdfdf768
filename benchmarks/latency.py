#!/usr/bin/env python3
"""How fast the watch daemon reports: from a file operation to its event line.

A benchmark run by hand, not a test.  As root, from a checkout with the package installed
(``scripts/setup``, or ``pip install -e .``)::

    python3 benchmarks/latency.py [--reps 200] [--cases b,c] [--seed N] [--keep]

It builds the demo (``make -s -C csrc``), works in a fresh temporary directory, runs the
daemon exactly as an operator would (``sys.executable -m inodewatch --pid PID --log-file F``,
default ``--interval``, started from the temporary directory so the installed package is the
one imported) and removes every process and file it made at the end, also on Ctrl-C.

What is timed
-------------
Every latency is *the event's own ``timestamp`` field* minus a wall-clock time taken just
before the file operation (both CLOCK_REALTIME on this machine).  structlog stamps the event
when the daemon logs it, i.e. right after the re-read of /proc that found it; how fast this
script reads the log therefore adds nothing.  The log is polled every 5 ms only to know when
to go on.

(b) ``rm so.so; cp so2.so so.so`` under the demo in ``--mode leak`` (it never reloads, so
    every repetition gets a fresh demo and a fresh daemon, each in its own directory):

    * unlink -> ``mapping.deleted``: ``time.time()`` just before ``os.unlink``;
    * create -> ``mapping.replaced``: ``time.time()`` just before the copy opens the new
      file (``O_CREAT``), right after the unlink, as the shell line does it.

    The file operations start only once the daemon is ready: ``target.attached`` is in its
    log, its inotify fd (``/proc/PID/fdinfo``) watches both so.so's inode and the directory,
    and it sleeps in poll(2).  (``target.attached`` alone is logged *before* the watches are
    added.)

(c) ``mv`` of a new copy over so.so under one demo in ``--mode hold`` (a tick every 100 ms:
    dlclose, dlopen of the path, call) and one daemon for all repetitions.  Each repetition
    copies the other version (so1/so2 alternate, so the demo's output line changes) to
    ``so.so.new`` and renames it over so.so, then waits for its events, matched by inode:

    * rename -> ``mapping.replaced`` whose ``disk_ino`` is the new file's inode;
    * dlopen -> ``mapping.reloaded`` whose ``new_ino`` is the new file's inode.

    The dlopen moment is the hard part.  Three clocks are read; the first available one is
    judged, the others are printed as context:

    1. **ftrace** (judged): the kernel's own stamp of the demo entering openat(2) for the new
       file, i.e. dlopen starting (it reads, mmaps and closes within ~0.1 ms after): an
       ftrace instance of this script's own, ``syscalls/sys_enter_openat`` filtered on the
       demo's pid, on the ``tai`` trace clock (converted to CLOCK_REALTIME, microseconds).
       The demo opens nothing but its library, once per tick; the first openat after the
       rename is the dlopen of the new file.  Being the *start* of dlopen, this overstates
       the latency by dlopen's own duration at most.  Needs root and tracefs (mounted at
       /sys/kernel/tracing, or mounted here in the temporary directory and unmounted at the
       end); the instance is removed at the end.  ``--no-ftrace`` skips it.
    2. **atime**: the new file was written, then renamed (which sets its ctime), and nothing
       but the demo's dlopen reads it (the daemon only stats).  Under ``relatime`` that first
       read sets its atime.  But the kernel stamps atime with its coarse clock, which lags
       real time by up to a tick or two and never leads it (0-8 ms measured on a 250 Hz
       VM): it overstates the latency by ~4 ms on average.  Used, conservatively, when
       ftrace is not available.
    3. **stdout line arrival**: the demo prints "soN: version N" after dlopen + dlsym +
       call; stamped with time.time() when it arrives from the demo's pipe (a thread blocks
       on it).  Later than the dlopen by the print and by this script's own wake-up, which
       on two busy cores can exceed the daemon's whole reaction: it understates, and can go
       negative.  Only a last resort.

    The daemon sees the reload through IN_OPEN / IN_CLOSE_NOWRITE on the new file (watched
    while it awaits the reload) and re-reads maps then and 2, 10, 30, 100 ms later.

    Each repetition starts in a known state: the previous reload was logged, a demo tick
    has passed since, the daemon watches the inode now at so.so and sleeps in poll, and one
    more tick has begun (so the daemon's follow-up re-reads, up to 100 ms, are over).  The
    rename then happens a random 0-40 % of a tick after that tick's line (seeded,
    ``--phase-jitter``): the daemon has ~60 ms or more before the demo picks the file up.
    (With ``--phase-jitter 1`` the rename may land just before a tick: then the demo can
    reload before the daemon looks at all, or between the daemon's re-read and its new
    watch; those are races, not the latency this benchmark is after.)  A repetition whose
    event never comes (within --timeout, or at all because the demo had the new file
    before the daemon looked) counts as infinitely late and is counted as missing.

Percentiles are nearest-rank (p99 of 200 samples is the 198th smallest).  Targets: p50 <=
5 ms and p99 <= 20 ms for deleted / replaced; the reload seen <= 50 ms after the dlopen,
judged on p99 (the max is printed too).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from harness.daemon import Daemon, Event, event_time
from harness.demo import CSRC, Demo, build_demo, rm_cp
from harness.ftrace import TraceInstance
from harness.procfs import loadavg_text
from harness.procs import BenchError, Children, exits, say, scratch, sigterm_as_interrupt
from harness.stats import Summary, fmt_ms

ROUTINE = {"daemon.started", "target.attached", "daemon.stopped", "target.exited"}
JUDGED_CLOCK = {"ftrace": "dlopen (openat, ftrace)", "atime": "dlopen (new file's atime)",
                "stdout": "demo stdout line"}


class OpenTrace:
    """The kernel's own stamp of every openat(2) entered by one process (an ftrace instance
    of its own, syscalls/sys_enter_openat filtered on the pid), as time.time()."""

    def __init__(self, workdir: Path, pid: int) -> None:
        self.instance = TraceInstance(workdir, f"inodewatch-latency-{os.getpid()}", 256)
        try:
            self.instance.enable("syscalls/sys_enter_openat", f"common_pid == {pid}")
        except BaseException:
            self.instance.close()
            raise

    def clear(self) -> None:
        self.instance.clear()

    def opens(self) -> list[float]:
        """time.time() of each openat entered since clear()."""
        stamps = []
        for line in self.instance.text().splitlines():
            if line.startswith("#") or ": sys_openat(" not in line:
                continue
            stamps.append(self.instance.wall_time(
                line.split(": sys_openat(", 1)[0].rsplit(None, 1)[-1]))
        return stamps

    def close(self) -> None:
        self.instance.close()


# --- the measurements ---------------------------------------------------------------------


class Bench:
    """What both cases share: the work directory, the processes, the notes and details."""

    def __init__(self, root: Path, timeout: float, rng: random.Random,
                 phase_jitter: float) -> None:
        self.root = root
        self.timeout = timeout
        self.rng = rng
        self.phase_jitter = phase_jitter
        self.children = Children()
        self.daemon_args: list[str] = []
        self.notes: list[str] = []
        self.details: list[dict[str, Any]] = []  # one record per repetition, for --details
        # events the operations should not cause, per case: (event, level) -> count
        self.unexpected: dict[str, Counter[tuple[str, str]]] = {}

    def tally(self, case: str, events: list[Event], expected: set[str]) -> None:
        counter = self.unexpected.setdefault(case, Counter())
        for e in events:
            if e["event"] not in ROUTINE | expected:
                counter[(e["event"], e.get("level", "?"))] += 1

    def prepare_dir(self, name: str) -> tuple[Path, Path]:
        work = self.root / name
        work.mkdir()
        for lib in ("so1.so", "so2.so"):
            shutil.copyfile(CSRC / lib, work / lib)
        so = work / "so.so"
        shutil.copyfile(work / "so1.so", so)
        return work, so

    def start_daemon(self, pid: int, work: Path) -> Daemon:
        """The daemon on `pid`, run from the temporary directory (the installed package)."""
        daemon = Daemon(self.children, ["--pid", str(pid)], work / "events.json", self.root,
                        err=work / "daemon.stderr")
        self.daemon_args = daemon.args
        return daemon

    def stop_daemon(self, daemon: Daemon, case: str, expected: set[str], note: str) -> None:
        daemon.stop()
        self.tally(case, daemon.log.events, expected)
        if err := daemon.stderr():
            self.notes.append(f"{note}: daemon stderr: {err.strip()[:300]!r}")

    # (b) -----------------------------------------------------------------------------------

    def rm_cp(self, reps: int) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {"deleted": [], "replaced": []}
        for i in range(reps):
            deleted, replaced = self.leak_rep(i)
            out["deleted"].append(deleted)
            out["replaced"].append(replaced)
            progress("b", i + 1, reps)
        return out

    def leak_rep(self, i: int) -> tuple[float, float]:
        """A fresh leak demo and daemon: unlink -> mapping.deleted, create -> replaced."""
        work, so = self.prepare_dir(f"leak{i:03d}")
        demo = Demo(self.children, work, "leak", 1000, so, ticks=120)
        daemon = None
        try:
            demo.wait_line("so1: version 1", 0, self.timeout)
            old_ino = os.stat(so).st_ino
            daemon = self.start_daemon(demo.pid, work)
            daemon.wait_ready(demo.pid, {old_ino, os.stat(work).st_ino}, self.timeout)
            start = len(daemon.log.read())

            done = rm_cp(so, work / "so2.so")
            ev = daemon.wait_event(
                lambda e: e["event"] == "mapping.deleted" and e.get("pid") == demo.pid
                and e.get("mapped_ino") == old_ino, start, self.timeout)
            deleted = event_time(ev) - done.t_unlink if ev else math.inf
            ev = daemon.wait_event(
                lambda e: e["event"] == "mapping.replaced" and e.get("pid") == demo.pid
                and e.get("disk_ino") == done.new_ino, start, self.timeout)
            replaced = event_time(ev) - done.t_create if ev else math.inf
            self.details.append({
                "case": "b", "rep": i, "t_unlink": done.t_unlink, "t_create": done.t_create,
                "old_ino": old_ino, "new_ino": done.new_ino,
                "events": [e for e in daemon.log.read()[start:]]})
            if demo.proc.poll() is not None:
                raise BenchError(f"leak demo died ({demo.proc.returncode})")
        finally:
            if daemon is not None:
                self.stop_daemon(daemon, "b", {"mapping.deleted", "mapping.replaced"},
                                 f"(b) rep {i}")
            demo.stop()
        shutil.rmtree(work)
        return deleted, replaced

    # (c) -----------------------------------------------------------------------------------

    def hold_mv(self, reps: int, interval_ms: int, use_ftrace: bool) -> dict[str, Any]:
        case = HoldCase(self, reps, interval_ms)
        try:
            case.start(use_ftrace)
            for i in range(reps):
                case.rep(i)
                progress("c", i + 1, reps)
        finally:
            case.close()
        return case.out

    def cleanup(self) -> None:
        self.children.stop_all()


class HoldCase:
    """(c): one hold-mode demo and one daemon for every repetition of `mv` over so.so."""

    def __init__(self, bench: Bench, reps: int, interval_ms: int) -> None:
        self.bench = bench
        self.timeout = bench.timeout
        self.interval_ms = interval_ms
        self.work, self.so = bench.prepare_dir("hold")
        self.new = self.work / "so.so.new"
        # enough ticks for a slow run; bounds the demo's life if this script is SIGKILLed
        ticks = int((reps * 3.0 + 300) * 1000 / interval_ms)
        self.demo = Demo(bench.children, self.work, "hold", interval_ms, self.so, ticks=ticks)
        self.daemon: Daemon | None = None
        self.trace: OpenTrace | None = None
        self.line = 0  # index of the demo's latest line waited for
        self.current = self.dir_ino = 0  # the inode at so.so; the directory's
        self.out: dict[str, Any] = {"replaced": [], "reload": [], "reload_atime": [],
                                    "reload_stdout": [], "dlopen_after_rename": [],
                                    "anchor": Counter(), "demo_first": 0}

    def start(self, use_ftrace: bool) -> None:
        self.line = self.demo.wait_line("so1: version 1", 0, self.timeout)
        if use_ftrace:
            try:
                self.trace = OpenTrace(self.bench.root, self.demo.pid)
            except (OSError, subprocess.CalledProcessError) as exc:
                self.bench.notes.append(f"(c) no ftrace ({exc}); the dlopen moment falls back "
                                        "to the new file's atime")
        self.current = os.stat(self.so).st_ino
        self.daemon = self.bench.start_daemon(self.demo.pid, self.work)
        self.dir_ino = os.stat(self.work).st_ino
        self.daemon.wait_ready(self.demo.pid, {self.current, self.dir_ino}, self.timeout)

    def prepare(self, version: int) -> os.stat_result:
        """The other version copied to so.so.new, then a known state: two ticks since the
        last reload (the follow-ups over), and a random phase 0-40 % of a tick after the
        next fresh one."""
        assert self.daemon is not None
        shutil.copyfile(self.work / f"so{version}.so", self.new)
        created = os.stat(self.new)
        self.line = self.demo.wait_line("version", self.line + 1, self.timeout)
        self.daemon.wait_idle({self.current, self.dir_ino}, self.timeout)
        if self.trace is not None:
            self.trace.clear()  # slow (an RCU grace period): before the phase is set
        self.line = self.demo.wait_line("version", self.demo.count(), self.timeout)
        time.sleep(self.bench.rng.uniform(0, self.bench.phase_jitter * self.interval_ms / 1000))
        return created

    def rep(self, i: int) -> None:
        assert self.daemon is not None
        demo, daemon, out = self.demo, self.daemon, self.out
        version = 2 if i % 2 == 0 else 1
        new_text = f"so{version}: version {version}"
        created = self.prepare(version)
        start = len(daemon.log.read())
        lines_before = demo.count()

        t_rename = time.time()
        os.rename(self.new, self.so)

        def demo_reloaded() -> bool:
            return any(new_text in text for _, text in demo.lines[lines_before:])
        # Once the demo has the new file there is no divergence left to report: stop
        # waiting 1.5 s after that (the daemon's 1 s re-read would have logged it).
        seen_reload_at: list[float] = []

        def give_up() -> bool:
            if not seen_reload_at and demo_reloaded():
                seen_reload_at.append(time.monotonic())
            return bool(seen_reload_at) and time.monotonic() - seen_reload_at[0] > 1.5

        ev_rep = daemon.wait_event(
            lambda e: e["event"] == "mapping.replaced" and e.get("pid") == demo.pid
            and e.get("disk_ino") == created.st_ino, start, self.timeout, give_up)
        out["replaced"].append(event_time(ev_rep) - t_rename if ev_rep else math.inf)
        if ev_rep is None:
            out["demo_first"] += demo_reloaded()
        ev_rel = daemon.wait_event(
            lambda e: e["event"] == "mapping.reloaded" and e.get("pid") == demo.pid
            and e.get("new_ino") == created.st_ino, start, self.timeout if ev_rep else 0.0)
        st = os.stat(self.so)  # at once, though later ticks do not move it under relatime
        self.line = demo.wait_line(new_text, lines_before, self.timeout)
        self.current = created.st_ino
        detail: dict[str, Any] = {
            "case": "c", "rep": i, "t_rename": t_rename, "new_ino": created.st_ino,
            "atime": st.st_atime_ns / 1e9 if st.st_ino == created.st_ino else None,
            "line_arrival": demo.lines[self.line][0],
            "opens": self.trace.opens() if self.trace is not None else None,
            "events": [e for e in daemon.log.read()[start:]]}
        self.bench.details.append(detail)
        if ev_rel is not None:
            self.time_reload(event_time(ev_rel), created, st, t_rename, detail)
        elif ev_rep is not None:
            out["reload"].append(math.inf)

    def time_reload(self, t_event: float, created: os.stat_result, st: os.stat_result,
                    t_rename: float, detail: dict[str, Any]) -> None:
        """The dlopen moment, best clock first (see the module docstring)."""
        out = self.out
        anchors: dict[str, float] = {}
        if self.trace is not None:
            opens = [t for t in self.trace.opens() if t >= t_rename]
            if opens:
                anchors["ftrace"] = opens[0]
        if (st.st_ino == created.st_ino and st.st_atime_ns != created.st_atime_ns
                and st.st_atime_ns / 1e9 >= t_rename - 0.05):
            anchors["atime"] = st.st_atime_ns / 1e9
        anchors["stdout"] = self.demo.lines[self.line][0]
        kind = next(iter(anchors))
        out["anchor"][kind] += 1
        out["reload"].append(t_event - anchors[kind])
        detail["dlopen"] = {"from": kind, "at": anchors[kind]}
        out["dlopen_after_rename"].append(anchors[kind] - t_rename)
        if "atime" in anchors:
            out["reload_atime"].append(t_event - anchors["atime"])
        out["reload_stdout"].append(t_event - anchors["stdout"])

    def close(self) -> None:
        if self.trace is not None:
            self.trace.close()
        if self.daemon is not None:
            self.bench.stop_daemon(self.daemon, "c", {"mapping.deleted", "mapping.replaced",
                                                      "mapping.reloaded"}, "(c)")
        self.demo.stop()


# --- results ------------------------------------------------------------------------------


def progress(case: str, done: int, total: int) -> None:
    if done == total or done % 25 == 0:
        print(f"  ({case}) {done}/{total}", file=sys.stderr, flush=True)


HEADER = f"    {'measurement':<46} {'n':>4} {'min':>7} {'p50':>7} {'p99':>7} {'max':>7}  missing (ms)"


def row(label: str, samples: list[float]) -> str:
    if not samples:
        return f"    {label:<46} {0:>4}  (no samples)"
    st = Summary.of(samples)
    return (f"    {label:<46} {st.n:>4} {fmt_ms(st.min, width=7)} {fmt_ms(st.p50, width=7)} "
            f"{fmt_ms(st.p99, width=7)} {fmt_ms(st.max, width=7)}  {st.missing}")


def verdict(label: str, samples: list[float], limits: dict[str, float]) -> str:
    if not samples:
        return f"MISS {label}: no samples"
    st = Summary.of(samples)._asdict()
    parts, ok = [], True
    for key, limit in limits.items():
        good = st[key] <= limit
        ok &= good
        over = "" if good else f" (over by {(st[key] - limit) * 1000:.2f} ms)" \
            if not math.isinf(st[key]) else " (events missing)"
        parts.append(f"{key} {fmt_ms(st[key])} ms {'<=' if good else '>'} "
                     f"{limit * 1000:g} ms{over}")
    extra = f"; max {fmt_ms(st['max'])} ms" if "max" not in limits else ""
    return f"{'PASS' if ok else 'MISS'} {label}: {', '.join(parts)}{extra}"


def case_b(b: dict[str, list[float]], limits: dict[str, float]) -> tuple[list[str], list[str]]:
    lines = ["  (b) leak mode, rm so.so; cp so2.so so.so (fresh demo + daemon each time)",
             row("unlink -> mapping.deleted", b["deleted"]),
             row("create (cp starts) -> mapping.replaced", b["replaced"])]
    return lines, [verdict("(b) unlink -> mapping.deleted", b["deleted"], limits),
                   verdict("(b) create -> mapping.replaced", b["replaced"], limits)]


def case_c(c: dict[str, Any], interval_ms: int,
           limits: dict[str, float]) -> tuple[list[str], list[str]]:
    anchor = c["anchor"]
    label = JUDGED_CLOCK[anchor.most_common(1)[0][0]] if anchor else "dlopen"
    lines = [f"  (c) hold mode, tick {interval_ms} ms, mv so.so.new so.so "
             "(one demo + one daemon)",
             row("rename -> mapping.replaced", c["replaced"]),
             row(f"{label} -> mapping.reloaded", c["reload"])]
    if len(anchor) > 1:
        lines.append("      dlopen moment taken from: " +
                     ", ".join(f"{k} {n}x" for k, n in anchor.most_common()))
    lines.append("      context (not judged):")
    if anchor.get("ftrace"):
        lines.append(row("  new file's atime (coarse clock) -> reloaded", c["reload_atime"]))
    lines.append(row("  demo stdout line arrival -> reloaded", c["reload_stdout"]))
    lines.append(row("  rename -> dlopen (the demo's own wait)", c["dlopen_after_rename"]))
    if c["demo_first"]:
        lines.append(f"      {c['demo_first']} repetitions: the demo reloaded before any "
                     "mapping.replaced (counted missing)")
    return lines, [verdict("(c) rename -> mapping.replaced", c["replaced"], limits),
                   verdict("(c) dlopen -> mapping.reloaded", c["reload"], {"p99": 0.050})]


def report(args: argparse.Namespace, bench: Bench, results: dict[str, Any]) -> list[str]:
    from inodewatch import __version__
    lines = [
        f"inodewatch {__version__} watch-daemon latency, {args.reps} repetitions per case",
        f"  host: Linux {platform.release()}, {os.cpu_count()} CPUs, load average "
        f"{loadavg_text()}, Python {platform.python_version()}",
        f"  daemon: {' '.join(bench.daemon_args[:3])} --pid PID --log-file FILE "
        "(default --interval 1.0)",
        "  latency = the event's own timestamp - time.time() just before the operation;",
        "  percentiles nearest-rank; 'missing' = events that never came (counted as inf)",
        HEADER]
    limits = {"p50": 0.005, "p99": 0.020}
    verdicts: list[str] = []
    for part, judged in ([case_b(results["b"], limits)] if "b" in results else []) + \
            ([case_c(results["c"], args.hold_interval_ms, limits)] if "c" in results else []):
        lines += part
        verdicts += judged
    for case, counter in sorted(bench.unexpected.items()):
        if counter:
            listed = ", ".join(f"{name} ({level}) x{n}" for (name, level), n in counter.most_common())
            lines.append(f"  note: ({case}) events these operations should not cause: {listed}")
    lines += [f"  note: {note}" for note in bench.notes]
    return lines + verdicts


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=200, help="repetitions per case (default 200)")
    parser.add_argument("--cases", default="b,c", help="which cases: b, c or b,c (default)")
    parser.add_argument("--hold-interval-ms", type=int, default=100,
                        help="the hold-mode demo's tick (default 100)")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for one event before counting it missing")
    parser.add_argument("--seed", type=int, default=1, help="seed of the rename phase jitter")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--phase-jitter", type=float, default=0.4, metavar="FRACTION",
                        help="(c) rename a random 0..FRACTION of a tick after a demo tick "
                             "(default 0.4)")
    parser.add_argument("--details", metavar="FILE",
                        help="write one JSON line per repetition (times, events) to FILE")
    parser.add_argument("--no-ftrace", action="store_true",
                        help="do not stamp the demo's dlopen with ftrace (use the file's atime)")
    args = parser.parse_args()
    args.cases = set(args.cases.split(","))
    if args.reps < 1 or not args.cases <= {"b", "c"}:
        parser.error("--reps must be >= 1 and --cases a subset of b,c")
    return args


def main() -> int:
    args = parse_args()
    if os.geteuid() != 0:
        say("latency", "note: not root; the daemon may lack access to the demo's map_files")
    build_demo()
    sigterm_as_interrupt()
    results: dict[str, Any] = {}
    with scratch("inodewatch-latency-", "latency", keep=args.keep) as root:
        bench = Bench(root, args.timeout, random.Random(args.seed), args.phase_jitter)
        try:
            with exits("latency"):
                if "b" in args.cases:
                    print(f"(b) {args.reps} x fresh leak demo + daemon, rm; cp ...", file=sys.stderr)
                    results["b"] = bench.rm_cp(args.reps)
                if "c" in args.cases:
                    print(f"(c) {args.reps} x mv over so.so under one hold demo ...",
                          file=sys.stderr)
                    results["c"] = bench.hold_mv(args.reps, args.hold_interval_ms,
                                                 not args.no_ftrace)
        finally:
            bench.cleanup()
    if args.details:
        with open(args.details, "w") as f:
            for record in bench.details:
                f.write(json.dumps(record) + "\n")
    print("\n".join(report(args, bench, results)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
