"""Measure the daemon's watch-set choice: a busy system library must not wake it.

A target maps libc, like every process.  While the host execs `true` N times (each exec
opens and maps libc) and reads libc N times, we count:
  - the inotify events a naive watch (IN_OPEN|IN_ACCESS|IN_CLOSE_* on libc itself, or
    IN_OPEN on its directory) would have delivered, with a second FileWatcher of our own;
  - the CPU time the real daemon spent, from /proc/PID/stat (utime + stime).

    python3 benchmarks/watchset.py [--execs 1000]
"""

from __future__ import annotations

import argparse
import os
import select
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pyinotify

from harness.daemon import CHECKOUT, Daemon
from harness.demo import SO1, build_demo, demo_args
from harness.procfs import Meter
from harness.procs import BenchError, Children, exits, scratch, wait_until
from inodewatch.watch import FileWatcher

PREFIX = os.environ.get("WATCHSET_PREFIX", "").split()


class Measured(NamedTuple):
    libc: bytes
    elapsed: float
    file_events: int
    dir_events: int
    daemon_cpu: float


def libc_of(pid: int) -> bytes:
    for line in Path(f"/proc/{pid}/maps").read_bytes().splitlines():
        if b"/libc.so" in line or b"/libc-" in line:
            return line.split(None, 5)[5]
    raise BenchError("the target maps no libc")


def drain(watcher: FileWatcher) -> int:
    count = 0
    while select.select([watcher.fileno()], [], [], 0.05)[0]:
        count += len(watcher.read())
    return count


def naive_watchers(libc: bytes) -> tuple[FileWatcher, FileWatcher]:
    """What a naive watch set would be woken by: libc itself, and IN_OPEN on its directory."""
    naive = FileWatcher()
    naive.watch_file(libc, pyinotify.IN_OPEN | pyinotify.IN_ACCESS
                     | pyinotify.IN_CLOSE_NOWRITE | pyinotify.IN_MODIFY)
    naive_dir = FileWatcher()
    naive_dir.watch_directory(os.path.dirname(libc))
    naive_dir._wm.add_watch(f"/proc/self/fd/{os.open(os.path.dirname(libc), os.O_PATH)}",
                            pyinotify.IN_OPEN | pyinotify.IN_ONLYDIR)
    return naive, naive_dir


def measure(children: Children, work: Path, execs: int) -> Measured:
    (work / "so.so").write_bytes(SO1.read_bytes())
    demo = children.spawn(demo_args(work / "so.so", "hold", 100), stdout=subprocess.DEVNULL)
    daemon = Daemon(children, ["--pid", str(demo.pid), "--interval", "3600"],
                    work / "events.json", Path.cwd(), command=[*PREFIX, *CHECKOUT])
    if not wait_until(lambda: demo.pid in daemon.attached(), 20, every=0.02):
        raise BenchError("the daemon did not attach")
    libc = libc_of(demo.pid)
    naive, naive_dir = naive_watchers(libc)
    drain(naive), drain(naive_dir)
    meter = Meter(daemon.pid)
    for _ in range(execs):
        subprocess.run(["true"])
        with open(libc, "rb") as f:
            f.read(4096)
    elapsed = meter.wall()
    # let the daemon finish whatever it was woken for
    meter.sleep_until(meter.t0 + elapsed + 0.5, every=0.5)
    return Measured(libc, elapsed, drain(naive), drain(naive_dir), meter.cpu())


def report(execs: int, m: Measured) -> str:
    return "\n".join([
        f"{execs} execs of true + {execs} reads of {m.libc.decode()} in {m.elapsed:.1f} s",
        f"  naive watch on libc itself (IN_OPEN|IN_ACCESS|IN_CLOSE_NOWRITE): {m.file_events} events",
        f"  naive IN_OPEN watch on its directory: {m.dir_events} events",
        f"  inodewatch (mapped file: writes + link count; directory: create/move only): "
        f"{m.daemon_cpu * 1000:.0f} ms CPU over {m.elapsed:.1f} s "
        f"({100 * m.daemon_cpu / m.elapsed:.2f} % of one core)"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--execs", type=int, default=1000)
    args = parser.parse_args()
    build_demo()
    with exits("watchset"), scratch("watchset.", "watchset") as work, Children() as children:
        measured = measure(children, work, args.execs)
    print(report(args.execs, measured))
    return 0


if __name__ == "__main__":
    sys.exit(main())
