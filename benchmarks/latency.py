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
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
CSRC = REPO / "csrc"
LOG_POLL = 0.005  # seconds between reads of the daemon's log (does not enter the results)
T = TypeVar("T")


class BenchError(Exception):
    """Something other than latency went wrong (a process died, a wait timed out)."""


def wait_for(predicate: Callable[[], T], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(LOG_POLL)


def event_time(event: dict[str, Any]) -> float:
    """The event's own timestamp (ISO 8601, UTC, microseconds) as seconds since the epoch."""
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


# --- processes ------------------------------------------------------------------------------


class Children:
    """Every process this script starts, so all of them are stopped at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(args, **kwargs)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        if proc.poll() is None:
            try:
                proc.send_signal(sig)
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(reversed(self.procs)):
            self.stop(proc, signal.SIGKILL if proc.args[0].endswith("reload") else signal.SIGTERM)


class Demo:
    """csrc/reload in its own directory; its stdout lines stamped on arrival by a thread."""

    def __init__(self, children: Children, workdir: Path, mode: str, interval_ms: int,
                 lib: Path, ticks: int, **spawn: Any) -> None:
        self.children = children
        # --ticks bounds its life should this script be killed without cleaning up.
        self.proc = children.spawn(
            [str(CSRC / "reload"), "--mode", mode, "--interval-ms", str(interval_ms),
             "--lib", str(lib), "--ticks", str(ticks)],
            cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            **{"stderr": subprocess.DEVNULL, **spawn})
        self.pid = self.proc.pid
        self.lines: list[tuple[float, str]] = []  # (arrival time.time(), line)
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buffer = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            now = time.time()
            if not chunk:
                break
            buffer += chunk
            *done, buffer = buffer.split(b"\n")
            with self._cond:
                self.lines += [(now, line.decode(errors="replace")) for line in done]
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def count(self) -> int:
        with self._cond:
            return len(self.lines)

    def wait_line(self, text: str, after: int, timeout: float) -> int:
        """Index of the first line at index >= after containing `text`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            i = after
            while True:
                while i < len(self.lines):
                    if text in self.lines[i][1]:
                        return i
                    i += 1
                if self.proc.poll() is not None:
                    raise BenchError(f"demo {self.pid} exited ({self.proc.returncode}) "
                                     f"while waiting for {text!r}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BenchError(f"timed out waiting for demo output {text!r}")
                self._cond.wait(min(remaining, 0.1))

    def stop(self) -> None:
        self.children.stop(self.proc, signal.SIGKILL)
        self._thread.join(timeout=2)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class EventLog:
    """The daemon's JSON log, read as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[dict[str, Any]] = []
        self._file: Any = None
        self._partial = b""

    def read(self) -> list[dict[str, Any]]:
        if self._file is None:
            try:
                self._file = open(self.path, "rb")
            except FileNotFoundError:
                return self.events
        data = self._partial + self._file.read()
        *done, self._partial = data.split(b"\n")
        self.events += [json.loads(line) for line in done if line]
        return self.events

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class Watcher:
    """`python -m inodewatch --pid PID --log-file FILE`, started as an operator would."""

    def __init__(self, children: Children, cwd: Path, pid: int, workdir: Path) -> None:
        self.children = children
        self.log = EventLog(workdir / "events.json")
        self.err_path = workdir / "daemon.stderr"
        self.args = [sys.executable, "-m", "inodewatch", "--pid", str(pid),
                     "--log-file", str(self.log.path)]
        with open(self.err_path, "wb") as err:
            self.proc = children.spawn(self.args, cwd=cwd, stdin=subprocess.DEVNULL,
                                       stdout=err, stderr=err)
        self.pid = self.proc.pid

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"daemon exited ({self.proc.returncode}): {self.stderr()!r}")

    def stderr(self) -> str:
        try:
            return self.err_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_event(self, match: Callable[[dict[str, Any]], bool], start: int,
                   timeout: float, give_up: Callable[[], bool] = lambda: False
                   ) -> dict[str, Any] | None:
        """The first event at index >= start that matches, or None after `timeout` (or as
        soon as `give_up()` says it will not come)."""
        deadline = time.monotonic() + timeout
        i = start
        while True:
            events = self.log.read()
            while i < len(events):
                if match(events[i]):
                    return events[i]
                i += 1
            self.check_alive()
            if time.monotonic() > deadline or give_up():
                return None
            time.sleep(LOG_POLL)

    def wait_ready(self, target: int, inodes: set[int], timeout: float) -> None:
        """target.attached logged, the watches in place, and the daemon asleep in poll."""
        def attached() -> bool:
            self.check_alive()
            return any(e["event"] == "target.attached" and e.get("pid") == target
                       for e in self.log.read())
        wait_for(attached, timeout, "target.attached")
        self.wait_idle(inodes, timeout)

    def wait_idle(self, inodes: set[int], timeout: float) -> None:
        def idle() -> bool:
            self.check_alive()
            return inodes <= inotify_inodes(self.pid) and asleep_in_poll(self.pid)
        wait_for(idle, timeout, f"the daemon to watch inodes {sorted(inodes)} and sleep in poll")

    def stop(self) -> None:
        self.children.stop(self.proc, signal.SIGTERM)
        self.log.read()  # everything, up to daemon.stopped
        self.log.close()


def inotify_inodes(pid: int) -> set[int]:
    """Inodes watched by the inotify fds of `pid`, from /proc/PID/fdinfo."""
    found: set[int] = set()
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return found
    for name in names:
        try:
            if os.readlink(f"{fd_dir}/{name}") != "anon_inode:inotify":
                continue
            with open(f"/proc/{pid}/fdinfo/{name}") as f:
                text = f.read()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("inotify "):
                for field in line.split():
                    if field.startswith("ino:"):
                        found.add(int(field[4:], 16))
    return found


def asleep_in_poll(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        with open(f"/proc/{pid}/wchan") as f:
            wchan = f.read()
    except OSError:
        return False
    return state == "S" and (wchan in ("", "0") or "poll" in wchan)


def trace_instance(workdir: Path, name: str) -> tuple[Path | None, Path]:
    """A private ftrace instance: (tracefs mounted here for it, or None; the instance dir).
    tracefs is mounted in `workdir` when it is not at /sys/kernel/tracing."""
    base, mounted = Path("/sys/kernel/tracing"), None
    if not (base / "instances").is_dir():
        base = mounted = workdir / "tracefs"
        base.mkdir()
        subprocess.run(["mount", "-t", "tracefs", "nodev", str(base)], check=True,
                       capture_output=True)
    instance = base / "instances" / name
    try:
        instance.mkdir()
    except BaseException:
        if mounted is not None:
            subprocess.run(["umount", str(mounted)], capture_output=True)
        raise
    return mounted, instance


def remove_trace_instance(mounted: Path | None, instance: Path | None) -> None:
    """Undo trace_instance, as far as it got."""
    if instance is not None:
        try:
            instance.rmdir()
        except OSError:
            pass
    if mounted is not None:
        subprocess.run(["umount", str(mounted)], capture_output=True)


class OpenTrace:
    """The kernel's own stamp of every openat(2) entered by one process: an ftrace instance
    of its own (syscalls/sys_enter_openat, filtered on the pid), on the CLOCK_TAI trace clock,
    converted to CLOCK_REALTIME.  Needs root and tracefs; mounts tracefs in the work
    directory when it is not mounted at /sys/kernel/tracing, and undoes all of it in close()."""

    def __init__(self, workdir: Path, pid: int) -> None:
        self.mounted: Path | None = None
        self.dir: Path | None = None
        self.event: Path | None = None
        try:
            self.mounted, instance = trace_instance(workdir, f"inodewatch-latency-{os.getpid()}")
            self.dir = instance
            (instance / "trace_clock").write_text("tai")
            (instance / "buffer_size_kb").write_text("256")
            self.event = instance / "events" / "syscalls" / "sys_enter_openat"
            (self.event / "filter").write_text(f"common_pid == {pid}")
            (self.event / "enable").write_text("1")
        except BaseException:
            self.close()
            raise
        # The kernel's TAI offset is a whole number of seconds (often 0).
        self.tai_offset = round(time.clock_gettime(time.CLOCK_TAI) - time.time())

    def clear(self) -> None:
        assert self.dir is not None
        (self.dir / "trace").write_text("")

    def opens(self) -> list[float]:
        """time.time() of each openat entered since clear()."""
        assert self.dir is not None
        stamps = []
        for line in (self.dir / "trace").read_text().splitlines():
            if line.startswith("#") or ": sys_openat(" not in line:
                continue
            stamp = line.split(": sys_openat(", 1)[0].rsplit(None, 1)[-1]
            stamps.append(float(stamp) - self.tai_offset)
        return stamps

    def close(self) -> None:
        if self.event is not None:
            try:
                (self.event / "enable").write_text("0")
            except OSError:
                pass
        remove_trace_instance(self.mounted, self.dir)
        self.mounted = self.dir = None


# --- the measurements ---------------------------------------------------------------------


class Bench:
    def __init__(self, root: Path, timeout: float, rng: random.Random) -> None:
        self.root = root
        self.timeout = timeout
        self.rng = rng
        self.children = Children()
        self.daemon_args: list[str] = []
        self.notes: list[str] = []
        self.details: list[dict[str, Any]] = []  # one record per repetition, for --details
        self.phase_jitter = 0.4
        # events the operations should not cause, per case: (event, level) -> count
        self.unexpected: dict[str, Counter[tuple[str, str]]] = {}

    def tally(self, case: str, events: list[dict[str, Any]], expected: set[str]) -> None:
        routine = {"daemon.started", "target.attached", "daemon.stopped", "target.exited"}
        counter = self.unexpected.setdefault(case, Counter())
        for e in events:
            if e["event"] not in routine | expected:
                counter[(e["event"], e.get("level", "?"))] += 1

    def prepare_dir(self, name: str) -> tuple[Path, Path]:
        work = self.root / name
        work.mkdir()
        for lib in ("so1.so", "so2.so"):
            shutil.copyfile(CSRC / lib, work / lib)
        so = work / "so.so"
        shutil.copyfile(work / "so1.so", so)
        return work, so

    # (b) -----------------------------------------------------------------------------------

    def rm_cp(self, reps: int) -> dict[str, list[float]]:
        deleted: list[float] = []
        replaced: list[float] = []
        for i in range(reps):
            work, so = self.prepare_dir(f"leak{i:03d}")
            demo = Demo(self.children, work, "leak", 1000, so, ticks=120)
            watcher = None
            try:
                demo.wait_line("so1: version 1", 0, self.timeout)
                old_ino = os.stat(so).st_ino
                watcher = Watcher(self.children, self.root, demo.pid, work)
                self.daemon_args = watcher.args
                watcher.wait_ready(demo.pid, {old_ino, os.stat(work).st_ino}, self.timeout)
                start = len(watcher.log.read())

                t_unlink = time.time()
                os.unlink(so)
                t_create = time.time()
                shutil.copyfile(work / "so2.so", so)
                new_ino = os.stat(so).st_ino

                ev = watcher.wait_event(
                    lambda e: e["event"] == "mapping.deleted" and e.get("pid") == demo.pid
                    and e.get("mapped_ino") == old_ino, start, self.timeout)
                deleted.append(event_time(ev) - t_unlink if ev else math.inf)
                ev = watcher.wait_event(
                    lambda e: e["event"] == "mapping.replaced" and e.get("pid") == demo.pid
                    and e.get("disk_ino") == new_ino, start, self.timeout)
                replaced.append(event_time(ev) - t_create if ev else math.inf)
                self.details.append({
                    "case": "b", "rep": i, "t_unlink": t_unlink, "t_create": t_create,
                    "old_ino": old_ino, "new_ino": new_ino,
                    "events": [e for e in watcher.log.read()[start:]]})
                if demo.proc.poll() is not None:
                    raise BenchError(f"leak demo died ({demo.proc.returncode})")
            finally:
                if watcher is not None:
                    watcher.stop()
                    self.tally("b", watcher.log.events, {"mapping.deleted", "mapping.replaced"})
                    if err := watcher.stderr():
                        self.notes.append(f"(b) rep {i}: daemon stderr: {err.strip()[:200]!r}")
                demo.stop()
            shutil.rmtree(work)
            progress("b", i + 1, reps)
        return {"deleted": deleted, "replaced": replaced}

    # (c) -----------------------------------------------------------------------------------

    def hold_mv(self, reps: int, interval_ms: int, use_ftrace: bool) -> dict[str, Any]:
        work, so = self.prepare_dir("hold")
        new = work / "so.so.new"
        # enough ticks for a slow run; bounds the demo's life if this script is SIGKILLed
        ticks = int((reps * 3.0 + 300) * 1000 / interval_ms)
        demo = Demo(self.children, work, "hold", interval_ms, so, ticks=ticks)
        watcher = None
        trace = None
        out: dict[str, Any] = {"replaced": [], "reload": [], "reload_atime": [],
                               "reload_stdout": [], "dlopen_after_rename": [],
                               "anchor": Counter(), "demo_first": 0}
        try:
            line = demo.wait_line("so1: version 1", 0, self.timeout)
            if use_ftrace:
                try:
                    trace = OpenTrace(self.root, demo.pid)
                except (OSError, subprocess.CalledProcessError) as exc:
                    self.notes.append(f"(c) no ftrace ({exc}); the dlopen moment falls back "
                                      "to the new file's atime")
            current = os.stat(so).st_ino
            watcher = Watcher(self.children, self.root, demo.pid, work)
            self.daemon_args = watcher.args
            dir_ino = os.stat(work).st_ino
            watcher.wait_ready(demo.pid, {current, dir_ino}, self.timeout)
            for i in range(reps):
                version = 2 if i % 2 == 0 else 1
                new_text = f"so{version}: version {version}"
                shutil.copyfile(work / f"so{version}.so", new)
                created = os.stat(new)
                # A known state: two ticks since the last reload (follow-ups over) ...
                line = demo.wait_line("version", line + 1, self.timeout)
                watcher.wait_idle({current, dir_ino}, self.timeout)
                if trace is not None:
                    trace.clear()  # slow (an RCU grace period): before the phase is set
                # ... and a random phase 0-40 % of a tick after the next fresh one.
                line = demo.wait_line("version", demo.count(), self.timeout)
                time.sleep(self.rng.uniform(0, self.phase_jitter * interval_ms / 1000))
                start = len(watcher.log.read())
                lines_before = demo.count()

                t_rename = time.time()
                os.rename(new, so)

                def demo_reloaded() -> bool:
                    return any(new_text in text for _, text in demo.lines[lines_before:])
                # Once the demo has the new file there is no divergence left to report: stop
                # waiting 1.5 s after that (the daemon's 1 s re-read would have logged it).
                seen_reload_at: list[float] = []

                def give_up() -> bool:
                    if not seen_reload_at and demo_reloaded():
                        seen_reload_at.append(time.monotonic())
                    return bool(seen_reload_at) and time.monotonic() - seen_reload_at[0] > 1.5

                ev_rep = watcher.wait_event(
                    lambda e: e["event"] == "mapping.replaced" and e.get("pid") == demo.pid
                    and e.get("disk_ino") == created.st_ino, start, self.timeout, give_up)
                out["replaced"].append(event_time(ev_rep) - t_rename if ev_rep else math.inf)
                if ev_rep is None:
                    out["demo_first"] += demo_reloaded()
                ev_rel = watcher.wait_event(
                    lambda e: e["event"] == "mapping.reloaded" and e.get("pid") == demo.pid
                    and e.get("new_ino") == created.st_ino, start,
                    self.timeout if ev_rep else 0.0)
                st = os.stat(so)  # at once, though later ticks do not move it under relatime
                line = demo.wait_line(new_text, lines_before, self.timeout)
                current = created.st_ino
                progress("c", i + 1, reps)
                detail: dict[str, Any] = {
                    "case": "c", "rep": i, "t_rename": t_rename, "new_ino": created.st_ino,
                    "atime": st.st_atime_ns / 1e9 if st.st_ino == created.st_ino else None,
                    "line_arrival": demo.lines[line][0],
                    "opens": trace.opens() if trace is not None else None,
                    "events": [e for e in watcher.log.read()[start:]]}
                self.details.append(detail)
                if ev_rel is None:
                    if ev_rep is not None:
                        out["reload"].append(math.inf)
                    continue

                # The dlopen moment, best clock first (see the module docstring).
                t_event = event_time(ev_rel)
                anchors: dict[str, float] = {}
                if trace is not None:
                    opens = [t for t in trace.opens() if t >= t_rename]
                    if opens:
                        anchors["ftrace"] = opens[0]
                if (st.st_ino == created.st_ino and st.st_atime_ns != created.st_atime_ns
                        and st.st_atime_ns / 1e9 >= t_rename - 0.05):
                    anchors["atime"] = st.st_atime_ns / 1e9
                anchors["stdout"] = demo.lines[line][0]
                kind = next(iter(anchors))
                out["anchor"][kind] += 1
                out["reload"].append(t_event - anchors[kind])
                detail["dlopen"] = {"from": kind, "at": anchors[kind]}
                out["dlopen_after_rename"].append(anchors[kind] - t_rename)
                if "atime" in anchors:
                    out["reload_atime"].append(t_event - anchors["atime"])
                out["reload_stdout"].append(t_event - anchors["stdout"])
        finally:
            if trace is not None:
                trace.close()
            if watcher is not None:
                watcher.stop()
                self.tally("c", watcher.log.events,
                           {"mapping.deleted", "mapping.replaced", "mapping.reloaded"})
                if err := watcher.stderr():
                    self.notes.append(f"(c) daemon stderr: {err.strip()[:300]!r}")
            demo.stop()
        return out

    def cleanup(self) -> None:
        self.children.stop_all()


# --- results ------------------------------------------------------------------------------


def progress(case: str, done: int, total: int) -> None:
    if done == total or done % 25 == 0:
        print(f"  ({case}) {done}/{total}", file=sys.stderr, flush=True)


def nearest_rank(sorted_values: list[float], p: float) -> float:
    return sorted_values[max(0, math.ceil(p / 100 * len(sorted_values)) - 1)]


def stats(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {"n": len(s), "min": s[0], "p50": nearest_rank(s, 50), "p99": nearest_rank(s, 99),
            "max": s[-1], "missing": sum(1 for v in s if math.isinf(v))}


def ms(value: float) -> str:
    return "    inf" if math.isinf(value) else f"{value * 1000:7.2f}"


HEADER = f"    {'measurement':<46} {'n':>4} {'min':>7} {'p50':>7} {'p99':>7} {'max':>7}  missing (ms)"


def row(label: str, samples: list[float]) -> str:
    if not samples:
        return f"    {label:<46} {0:>4}  (no samples)"
    st = stats(samples)
    return (f"    {label:<46} {st['n']:>4} {ms(st['min'])} {ms(st['p50'])} {ms(st['p99'])} "
            f"{ms(st['max'])}  {st['missing']}")


def verdict(label: str, samples: list[float], limits: dict[str, float]) -> str:
    if not samples:
        return f"MISS {label}: no samples"
    st = stats(samples)
    parts, ok = [], True
    for key, limit in limits.items():
        good = st[key] <= limit
        ok &= good
        over = "" if good else f" (over by {(st[key] - limit) * 1000:.2f} ms)" \
            if not math.isinf(st[key]) else " (events missing)"
        parts.append(f"{key} {ms(st[key]).strip()} ms {'<=' if good else '>'} "
                     f"{limit * 1000:g} ms{over}")
    extra = f"; max {ms(st['max']).strip()} ms" if "max" not in limits else ""
    return f"{'PASS' if ok else 'MISS'} {label}: {', '.join(parts)}{extra}"


def main() -> int:
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
    cases = set(args.cases.split(","))
    if args.reps < 1 or not cases <= {"b", "c"}:
        parser.error("--reps must be >= 1 and --cases a subset of b,c")
    if os.geteuid() != 0:
        print("latency: note: not root; the daemon may lack access to the demo's map_files",
              file=sys.stderr)

    subprocess.run(["make", "-s", "-C", str(CSRC)], check=True)
    root = Path(tempfile.mkdtemp(prefix="inodewatch-latency-"))
    bench = Bench(root, args.timeout, random.Random(args.seed))
    bench.phase_jitter = args.phase_jitter

    def on_term(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)

    results: dict[str, Any] = {}
    try:
        if "b" in cases:
            print(f"(b) {args.reps} x fresh leak demo + daemon, rm; cp ...", file=sys.stderr)
            results["b"] = bench.rm_cp(args.reps)
        if "c" in cases:
            print(f"(c) {args.reps} x mv over so.so under one hold demo ...", file=sys.stderr)
            results["c"] = bench.hold_mv(args.reps, args.hold_interval_ms, not args.no_ftrace)
    except KeyboardInterrupt:
        print("latency: interrupted; stopping every process started", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"latency: {exc}", file=sys.stderr)
        return 1
    finally:
        bench.cleanup()
        tracefs = root / "tracefs"
        if os.path.ismount(tracefs):
            subprocess.run(["umount", str(tracefs)], capture_output=True)
        if args.keep:
            print(f"latency: kept {root}", file=sys.stderr)
        elif os.path.ismount(tracefs):
            print(f"latency: could not unmount {tracefs}; left {root} in place", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)

    if args.details:
        with open(args.details, "w") as f:
            for record in bench.details:
                f.write(json.dumps(record) + "\n")

    from inodewatch import __version__
    load = open("/proc/loadavg").read().split()[:3]
    print(f"inodewatch {__version__} watch-daemon latency, {args.reps} repetitions per case")
    print(f"  host: Linux {platform.release()}, {os.cpu_count()} CPUs, load average "
          f"{' '.join(load)}, Python {platform.python_version()}")
    print(f"  daemon: {' '.join(bench.daemon_args[:3])} --pid PID --log-file FILE "
          "(default --interval 1.0)")
    print("  latency = the event's own timestamp - time.time() just before the operation;")
    print("  percentiles nearest-rank; 'missing' = events that never came (counted as inf)")
    print(HEADER)
    limits = {"p50": 0.005, "p99": 0.020}
    verdicts = []
    if "b" in results:
        b = results["b"]
        print("  (b) leak mode, rm so.so; cp so2.so so.so (fresh demo + daemon each time)")
        print(row("unlink -> mapping.deleted", b["deleted"]))
        print(row("create (cp starts) -> mapping.replaced", b["replaced"]))
        verdicts.append(verdict("(b) unlink -> mapping.deleted", b["deleted"], limits))
        verdicts.append(verdict("(b) create -> mapping.replaced", b["replaced"], limits))
    if "c" in results:
        c = results["c"]
        print(f"  (c) hold mode, tick {args.hold_interval_ms} ms, mv so.so.new so.so "
              "(one demo + one daemon)")
        print(row("rename -> mapping.replaced", c["replaced"]))
        anchor = c["anchor"]
        judged = {"ftrace": "dlopen (openat, ftrace)", "atime": "dlopen (new file's atime)",
                  "stdout": "demo stdout line"}
        label = judged[anchor.most_common(1)[0][0]] if anchor else "dlopen"
        print(row(f"{label} -> mapping.reloaded", c["reload"]))
        if len(anchor) > 1:
            print("      dlopen moment taken from: " +
                  ", ".join(f"{k} {n}x" for k, n in anchor.most_common()))
        print("      context (not judged):")
        if anchor.get("ftrace"):
            print(row("  new file's atime (coarse clock) -> reloaded", c["reload_atime"]))
        print(row("  demo stdout line arrival -> reloaded", c["reload_stdout"]))
        print(row("  rename -> dlopen (the demo's own wait)", c["dlopen_after_rename"]))
        if c["demo_first"]:
            print(f"      {c['demo_first']} repetitions: the demo reloaded before any "
                  "mapping.replaced (counted missing)")
        verdicts.append(verdict("(c) rename -> mapping.replaced", c["replaced"], limits))
        verdicts.append(verdict("(c) dlopen -> mapping.reloaded", c["reload"], {"p99": 0.050}))
    for case, counter in sorted(bench.unexpected.items()):
        if counter:
            listed = ", ".join(f"{name} ({level}) x{n}" for (name, level), n in counter.most_common())
            print(f"  note: ({case}) events these operations should not cause: {listed}")
    for note in bench.notes:
        print(f"  note: {note}")
    for line in verdicts:
        print(line)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
