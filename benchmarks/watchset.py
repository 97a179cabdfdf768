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
import tempfile
import time
from pathlib import Path

import pyinotify

from inodewatch.watch import FileWatcher

REPO = Path(__file__).resolve().parent.parent
PREFIX = os.environ.get("WATCHSET_PREFIX", "").split()
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def libc_of(pid: int) -> bytes:
    for line in Path(f"/proc/{pid}/maps").read_bytes().splitlines():
        if b"/libc.so" in line or b"/libc-" in line:
            return line.split(None, 5)[5]
    sys.exit("watchset: the target maps no libc")


def drain(watcher: FileWatcher) -> int:
    count = 0
    while select.select([watcher.fileno()], [], [], 0.05)[0]:
        count += len(watcher.read())
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--execs", type=int, default=1000)
    args = parser.parse_args()
    subprocess.run(["make", "-s", "-C", str(REPO / "csrc")], check=True)
    work = Path(tempfile.mkdtemp(prefix="watchset."))
    (work / "so.so").write_bytes((REPO / "csrc/so1.so").read_bytes())
    demo = subprocess.Popen([str(REPO / "csrc/reload"), "--mode", "hold", "--interval-ms", "100",
                             "--lib", str(work / "so.so")], stdout=subprocess.DEVNULL)
    log = work / "events.json"
    daemon = subprocess.Popen([*PREFIX, sys.executable, "-m", "inodewatch", "--pid", str(demo.pid),
                               "--log-file", str(log), "--interval", "3600"])
    try:
        deadline = time.monotonic() + 20
        while b"target.attached" not in (log.read_bytes() if log.exists() else b""):
            if time.monotonic() > deadline:
                sys.exit("watchset: the daemon did not attach")
            time.sleep(0.02)
        libc = libc_of(demo.pid)
        naive = FileWatcher()
        naive.watch_file(libc, pyinotify.IN_OPEN | pyinotify.IN_ACCESS
                         | pyinotify.IN_CLOSE_NOWRITE | pyinotify.IN_MODIFY)
        naive_dir = FileWatcher()
        naive_dir.watch_directory(os.path.dirname(libc))
        naive_dir._wm.add_watch(f"/proc/self/fd/{os.open(os.path.dirname(libc), os.O_PATH)}",
                                pyinotify.IN_OPEN | pyinotify.IN_ONLYDIR)
        drain(naive), drain(naive_dir)
        before = cpu_seconds(daemon.pid)
        start = time.monotonic()
        for _ in range(args.execs):
            subprocess.run(["true"])
            with open(libc, "rb") as f:
                f.read(4096)
        elapsed = time.monotonic() - start
        time.sleep(0.5)  # let the daemon finish whatever it was woken for
        spent = cpu_seconds(daemon.pid) - before
        file_events, dir_events = drain(naive), drain(naive_dir)
    finally:
        for proc in (daemon, demo):
            proc.terminate()
            proc.wait()
    print(f"{args.execs} execs of true + {args.execs} reads of {libc.decode()} in {elapsed:.1f} s")
    print(f"  naive watch on libc itself (IN_OPEN|IN_ACCESS|IN_CLOSE_NOWRITE): {file_events} events")
    print(f"  naive IN_OPEN watch on its directory: {dir_events} events")
    print(f"  inodewatch (mapped file: writes + link count; directory: create/move only): "
          f"{spent * 1000:.0f} ms CPU over {elapsed:.1f} s "
          f"({100 * spent / elapsed:.2f} % of one core)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
