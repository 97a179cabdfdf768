#!/usr/bin/env python3
"""What `inodewatch --guard` costs: the added latency of an open, and the CPU it takes.

A benchmark run by hand, not a test.  As root (fanotify permission events), from a checkout::

    sudo python3 benchmarks/guard.py [--opens 20000] [--rate 10000] [--seconds 10] [--rounds 2]

The real daemon on the real demo: `inodewatch --pid DEMO --guard`, started as an operator
would, guards the library the demo maps (A, a copy of so1.so); B is a file of the same size
beside it that nobody maps.  Per round (--rounds, the daemon started afresh each time):

1. Latency: os.open(O_RDONLY) + os.close of A and of B, alternated A B A B, --opens of each,
   timed with perf_counter_ns around the pair of calls; p50 / p99 / max (nearest rank).
   Before the daemon starts, B alone the same number of times: an unguarded open must cost
   what it did without the guard.
2. CPU: one process opens A --rate times a second for --seconds (paced on perf_counter, no
   sleeping: it spins between opens); the CPU time of the guard's helper (it answers) and of
   the daemon over that time, as a share of one core, and the rate the opener reached.

Prints one markdown table per measurement, a column per round, then the medians.
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from harness.daemon import Daemon
from harness.demo import SO1, SO2, Demo, build_demo
from harness.procfs import cpu_seconds
from harness.procs import BenchError, Children, exits, scratch, sigterm_as_interrupt, wait_for
from harness.stats import percentile

WHO = "guard benchmark"
READY_TIMEOUT = 30.0

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


def quantiles(ns: list[int]) -> tuple[float, float, float]:
    """p50, p99, max in µs."""
    return percentile(ns, 50) / 1000, percentile(ns, 99) / 1000, max(ns) / 1000


def refused(path: Path) -> bool:
    """Whether an open for writing of `path` is refused now (the guard's mark is in place).
    The probe is one mapping.write_refused in the log; the file is never changed."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CLOEXEC))
    except OSError as exc:
        if exc.errno in (errno.ETXTBSY, errno.EPERM):
            return True
        raise
    return False


def guarded_daemon(children: Children, root: Path, demo: Demo, lib: Path, n: int) -> tuple[Daemon, int]:
    """The daemon guarding the demo's library: (it, its helper's pid), once A is guarded."""
    daemon = Daemon(children, ["--pid", str(demo.pid), "--guard"], root / f"events{n}.json",
                    cwd=Path(__file__).resolve().parent.parent, err=root / f"daemon{n}.err")
    started = daemon.wait_event(lambda e: e["event"] == "guard.started", 0, READY_TIMEOUT)
    if started is None:
        raise BenchError(f"no guard.started: {daemon.stderr()[-500:]!r}")
    wait_for(lambda: refused(lib), READY_TIMEOUT, "the demo's library guarded")
    return daemon, started["helper_pid"]


def one_round(children: Children, root: Path, demo: Demo, lib: Path, free: Path, n: int,
              args: argparse.Namespace) -> dict[str, object]:
    a, b = os.fsencode(lib), os.fsencode(free)
    [alone] = open_times([b], args.opens)
    daemon, helper = guarded_daemon(children, root, demo, lib, n)
    try:
        times_a, times_b = open_times([a, b], args.opens)
        before = cpu_seconds(daemon.pid), cpu_seconds(helper), time.monotonic()
        opener = subprocess.run([sys.executable, "-c", PACED, str(lib), str(args.rate), str(args.seconds)],
                                capture_output=True, text=True, check=True)
        after = cpu_seconds(daemon.pid), cpu_seconds(helper), time.monotonic()
        daemon.check_alive()
    finally:
        daemon.stop()
    wall = after[2] - before[2]
    return {"B, no daemon": quantiles(alone), "A, guarded": quantiles(times_a),
            "B, beside it (unguarded)": quantiles(times_b),
            "helper": 100 * (after[1] - before[1]) / wall, "daemon": 100 * (after[0] - before[0]) / wall,
            "rate": float(opener.stdout)}


def report(rounds: list[dict[str, object]], args: argparse.Namespace) -> None:
    heads = " | ".join(f"round {i + 1}" for i in range(len(rounds)))
    print(f"Open + close of a {SO1.stat().st_size:,}-byte library, {args.opens} of each, alternated, "
          f"µs (p50 / p99 / max):\n")
    print(f"| open of | {heads} | median p50 |\n|---|{'---|' * len(rounds)}---|")
    for name in ("B, no daemon", "A, guarded", "B, beside it (unguarded)"):
        cells = [r[name] for r in rounds]
        shown = " | ".join(f"{p50:.1f} / {p99:.1f} / {top:.0f}" for p50, p99, top in cells)
        print(f"| {name} | {shown} | {statistics.median(c[0] for c in cells):.1f} |")
    print(f"\nOne process opening A at {args.rate:.0f}/s for {args.seconds:.0f} s, share of one core:\n")
    print(f"| | {heads} | median |\n|---|{'---|' * len(rounds)}---|")
    for name, unit in (("helper", "%"), ("daemon", "%"), ("rate", "/s")):
        values = [float(r[name]) for r in rounds]
        print(f"| {name} | " + " | ".join(f"{v:.1f} {unit}" for v in values)
              + f" | {statistics.median(values):.1f} {unit} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--opens", type=int, default=20000)
    parser.add_argument("--rate", type=float, default=10000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print(f"{WHO}: needs root (fanotify permission events: CAP_SYS_ADMIN)", file=sys.stderr)
        return 2
    sigterm_as_interrupt()
    with exits(WHO), scratch("guardbench.", WHO) as root, Children() as children:
        build_demo()
        lib, free = root / "so.so", root / "free.so"
        shutil.copyfile(SO1, lib)
        free.write_bytes(os.urandom(lib.stat().st_size))
        shutil.copyfile(SO2, root / "so2.so")
        demo = Demo(children, root, "leak", 1000, lib, ticks=100_000)
        demo.wait_line("so1: version 1", 0, READY_TIMEOUT)
        rounds = [one_round(children, root, demo, lib, free, n, args) for n in range(args.rounds)]
        report(rounds, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
