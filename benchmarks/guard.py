#!/usr/bin/env python3
"""What the guard (inodewatch.guard) costs: the added latency of an open, and its CPU.

A benchmark run by hand, not a test.  As root, from a checkout with the package installed::

    python3 benchmarks/guard.py [--opens 20000] [--rate 10000] [--seconds 10]

The guard's owner runs in a process of its own (this script with --serve), as the daemon
will; its Guard starts the helper process that answers.  It guards file A, not file B, two
files of the same size in a fresh temporary directory.

1. Latency: os.open(O_RDONLY) + os.close of A and of B, alternated A B A B, --opens of each,
   timed with perf_counter_ns around the pair of calls; p50 / p99 / max.  Before the guard
   starts, B alone the same number of times: an unguarded open must cost what it did.
   The same again while the owner's main thread is busy (a pure-Python loop that lets go of
   the GIL only for an instant system call: the pattern that starved an answering thread of
   the owner's for seconds, measured before the answers moved to a helper process).
2. CPU: one process opens A --rate times a second for --seconds (paced on perf_counter,
   no sleeping: it spins between opens); the CPU time (utime + stime) of the helper and of
   the owner over that time, as a share of one core, and the rate the opener reached.

Prints a markdown table.  Everything it made is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def serve(path: str, busy: bool) -> None:
    """The owner's process: guard `path`, print the helper's pid, then wait for stdin to
    close (spinning the main thread if `busy`)."""
    from inodewatch.guard import Guard

    guard = Guard()
    st = os.stat(path)
    assert guard.guard(os.fsencode(path), st.st_dev, st.st_ino)
    print(guard.helper_pid, flush=True)
    if busy:
        os.set_blocking(0, False)
        while True:
            for _ in range(10000):
                pass
            try:
                if os.read(0, 1) == b"":
                    break
            except BlockingIOError:  # stdin still open
                continue
    else:
        sys.stdin.read()
    stats = guard.stats()
    guard.close()
    print(stats._asdict(), flush=True)


def start_guard(path: Path, busy: bool = False) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(path)] + (["--busy"] if busy else []),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    helper = int(proc.stdout.readline())
    return proc, helper


def stop_guard(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=60)
    return out.strip()


def cpu_seconds(stat_path: str) -> float:
    fields = Path(stat_path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def open_times(paths: list[bytes], count: int) -> list[list[int]]:
    """Nanoseconds of each open+close, per path, alternating between them."""
    times: list[list[int]] = [[] for _ in paths]
    clock, open_, close, flags = time.perf_counter_ns, os.open, os.close, os.O_RDONLY | os.O_CLOEXEC
    for _ in range(count):
        for index, path in enumerate(paths):
            start = clock()
            close(open_(path, flags))
            times[index].append(clock() - start)
    return times


def quantiles(ns: list[int]) -> str:
    cut = statistics.quantiles(ns, n=100)
    return f"{cut[49] / 1000:.1f} | {cut[98] / 1000:.1f} | {max(ns) / 1000:.0f}"


PACED = r"""
import os, sys, time
path, rate, seconds = os.fsencode(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
step, clock, n = 1.0 / rate, time.perf_counter, 0
start = clock()
end = start + seconds
while (now := clock()) < end:
    if now >= start + n * step:
        os.close(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
        n += 1
print(n / (clock() - start))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--opens", type=int, default=20000)
    parser.add_argument("--rate", type=float, default=10000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--busy", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.busy)
        return 0
    if os.geteuid() != 0:
        print("guard benchmark: needs root (fanotify permission events: CAP_SYS_ADMIN)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="guardbench.") as tmp:
        guarded, free = Path(tmp) / "a.so", Path(tmp) / "b.so"
        for path in (guarded, free):
            path.write_bytes(os.urandom(64 * 1024))
        a, b = os.fsencode(guarded), os.fsencode(free)
        rows = []
        [alone] = open_times([b], args.opens)
        rows.append(("B, unguarded, no guard running", quantiles(alone)))
        for busy in (False, True):
            proc, _ = start_guard(guarded, busy)
            try:
                times_a, times_b = open_times([a, b], args.opens)
            finally:
                stats = stop_guard(proc)
            what = "owner's main thread busy" if busy else "owner idle"
            rows.append((f"A, guarded ({what})", quantiles(times_a)))
            rows.append((f"B, unguarded ({what})", quantiles(times_b)))
        print(f"Open + close of a 64 KB file, {args.opens} of each, alternated (µs):\n")
        print("| open of | p50 | p99 | max |\n| --- | --- | --- | --- |")
        for name, cells in rows:
            print(f"| {name} | {cells} |")

        proc, helper = start_guard(guarded)
        try:
            owner, helper_stat = f"/proc/{proc.pid}/stat", f"/proc/{helper}/stat"
            owner0, helper0, wall0 = cpu_seconds(owner), cpu_seconds(helper_stat), time.monotonic()
            opener = subprocess.run([sys.executable, "-c", PACED, guarded, str(args.rate), str(args.seconds)],
                                    capture_output=True, text=True, check=True)
            owner1, helper1, wall1 = cpu_seconds(owner), cpu_seconds(helper_stat), time.monotonic()
        finally:
            stats = stop_guard(proc)
        wall = wall1 - wall0
        print(f"\nOne process opening A at {args.rate:.0f}/s for {args.seconds:.0f} s "
              f"(reached {float(opener.stdout):.0f}/s):\n")
        print("| CPU of | share of one core |\n| --- | --- |")
        print(f"| the helper (answers) | {100 * (helper1 - helper0) / wall:.1f} % |")
        print(f"| the owner (the daemon's side) | {100 * (owner1 - owner0) / wall:.1f} % |")
        print(f"\nguard stats: {stats}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
