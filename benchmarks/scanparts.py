"""Where `inodewatch scan --all`'s time goes on this host, part by part, against the floor.

Run on a big host (e.g. beside ``fleet.py --hosts 5000 --healthy-mode leak --interval-ms 60000
--setup-only``), as root::

    python3 benchmarks/scanparts.py [--python VENV/bin/python3] [--tree DIR] [--rounds 7]

Two kinds of figures, both medians of ``--rounds``:

* whole commands, fresh processes, in turn with the floor (A B C ... then ... C B A): the
  floor ``sh -c 'cat /proc/[0-9]*/maps'``; ``python3 -c pass`` (interpreter start); the scan's
  imports; a Python loop that only reads every maps file (os.open + os.read, no parsing: the
  least a Python scan pays); that loop plus the regex fold (``procfs.read_maps``); the scan in
  one process (``scan_all(workers=1)``) and with its workers (``scan_all()``), without output;
  the command itself (``-m inodewatch scan --all --json``); ``lsof -nP``;
* inside one process, serial, each part of ``scan.examine`` timed around it for every pid
  (listing pids, the raw read of maps, the regex fold, the DiskView, the mapped files' stats,
  the fd table, find_divergence), then the workers' own costs: the result's to_plain +
  marshal and back, and the JSON output.

`--against TREE,TREE`: instead, only the command of each checkout, in turn with the floor:
the medians and the per-round ratios to the floor and to the first tree (before / after).

`--tree`: the checkout whose inodewatch/ is imported (PYTHONPATH), default this one;
`--python`: the interpreter (default /srv/inodewatch-fleet/venv/bin/python3, fleet.py's venv
of the distribution's Python, else this one).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from harness.stats import in_turn

HERE = Path(__file__).resolve().parent
FLEET_PYTHON = "/srv/inodewatch-fleet/venv/bin/python3"

READ_ONLY = """
import os
for n in os.listdir(b"/proc"):
    if n.isdigit():
        try:
            fd = os.open(b"/proc/" + n + b"/maps", os.O_RDONLY)
        except OSError:
            continue
        try:
            while os.read(fd, 1 << 17):
                pass
        except OSError:
            pass
        os.close(fd)
"""

FOLD = """
from inodewatch import procfs
for pid in procfs.list_pids():
    try:
        procfs.read_maps(pid)
    except procfs.ProcError:
        pass
"""

IMPORTS = "import argparse, json, inodewatch.cli, inodewatch.scan, inodewatch.render, inodewatch.eventlog"


def commands(python: str) -> list[tuple[str, list[str]]]:
    py = [python, "-c"]
    return [
        ("floor: cat /proc/[0-9]*/maps", ["sh", "-c", "cat /proc/[0-9]*/maps"]),
        ("python3 -c pass", [*py, "pass"]),
        ("+ the scan's imports", [*py, IMPORTS]),
        ("python: read every maps, no parsing", [*py, READ_ONLY]),
        ("python: read_maps (read + regex fold)", [*py, FOLD]),
        ("scan_all(workers=1), no output", [*py, "from inodewatch.scan import scan_all; scan_all(1)"]),
        ("scan_all() (its workers), no output", [*py, "from inodewatch.scan import scan_all; scan_all()"]),
        ("-m inodewatch scan --all --json", [python, "-m", "inodewatch", "scan", "--all", "--json"]),
        ("lsof -nP", ["lsof", "-nP"]),
    ]


def against(python: str, env: dict[str, str], trees: list[str], rounds: int) -> None:
    """`-m inodewatch scan --all --json` of each tree in turn with the floor (A B F, F B A)."""
    floor = ("floor", ["sh", "-c", "cat /proc/[0-9]*/maps"], env)
    cmds = [floor] + [(tree, [python, "-m", "inodewatch", "scan", "--all", "--json"],
                       {**env, "PYTHONPATH": tree}) for tree in trees]
    for _, c, e in cmds:
        wall(c, e)
    times: dict[str, list[float]] = {name: [] for name, _, _ in cmds}
    for rnd in range(rounds):
        for name, c, e in in_turn(cmds, rnd):
            times[name].append(wall(c, e, name))
    base = times[trees[0]]
    print(f"{'scan --all --json of':42} {'median':>9} {'min':>9} {'/ floor':>8} {'/ first':>8} "
          f"{'CPU':>9} {'/ first':>8}")
    for name, _, _ in cmds:
        t = times[name]
        print(f"{name:42} {statistics.median(t) * 1000:7.1f}ms {min(t) * 1000:7.1f}ms "
              f"{statistics.median(a / f for a, f in zip(t, times['floor'])):7.2f}x "
              f"{statistics.median(a / b for a, b in zip(t, base)):7.2f}x "
              f"{statistics.median(CPU[name]) * 1000:7.1f}ms "
              f"{statistics.median(a / b for a, b in zip(CPU[name], CPU[trees[0]])):7.2f}x")


CPU: dict[str, list[float]] = {}  # utime + stime of each command's runs, by its name


def wall(cmd: list[str], env: dict[str, str], name: str = "") -> float:
    """Wall time of one run; its CPU (the tree's utime + stime, from wait4) to CPU[name]."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _, _, usage = os.wait4(proc.pid, 0)
    took = time.perf_counter() - t0
    CPU.setdefault(name, []).append(usage.ru_utime + usage.ru_stime)
    return took


def whole_commands(python: str, env: dict[str, str], rounds: int) -> None:
    cmds = commands(python)
    for _, c in cmds:
        wall(c, env)  # warm-up: page cache, bytecode cache
    times: dict[str, list[float]] = {name: [] for name, _ in cmds}
    for rnd in range(rounds):
        for name, c in in_turn(cmds, rnd):
            times[name].append(wall(c, env))
    floor = statistics.median(times[cmds[0][0]])
    print(f"{'whole command, fresh process':42} {'median':>9} {'min':>9} {'/ floor':>8}")
    for name, _ in cmds:
        m = statistics.median(times[name])
        print(f"{name:42} {m * 1000:7.1f}ms {min(times[name]) * 1000:7.1f}ms {m / floor:7.2f}x")


# The parts of one process's examine(), in its order, each timed around itself (serial).
PARTS = """
import io, marshal, os, sys, time, statistics
from inodewatch import procfs, render, scan
from inodewatch.model import find_divergence
clock = time.perf_counter

def once():
    t = dict.fromkeys(("list pids", "DiskView", "maps: os.read", "maps: regex fold",
                       "mapped files (stat)", "fd table", "find_divergence"), 0.0)
    t0 = clock()
    pids = procfs.list_pids()
    t["list pids"] = clock() - t0
    shared = {}
    lines = 0
    for pid in pids:
        try:
            a = clock()
            disk = procfs.DiskView(pid, shared)
            b = clock()
            fd = os.open(procfs.proc_path(pid, b"maps"), os.O_RDONLY)
            chunks = []
            while chunk := os.read(fd, procfs.MAPS_CHUNK):
                chunks.append(chunk)
            os.close(fd)
            c = clock()
            stream = procfs.MapsStream()
            for chunk in chunks:
                stream.feed(chunk)
            maps = stream.result()
            d = clock()
            mapped = procfs.read_mapped_files(pid, disk, maps)
            e = clock()
            open_files = procfs.read_open_files(pid, disk)
            f = clock()
            find_divergence(mapped, open_files, disk)
            g = clock()
        except (procfs.ProcError, OSError):
            continue
        lines += sum(c.count(b"\\n") for c in chunks)  # outside the timed parts
        for k, v in zip(list(t)[1:], (b - a, c - b, d - c, e - d, f - e, g - f)):
            t[k] += v
    return t, len(pids), lines

runs = [once() for _ in range(ROUNDS)]
n, lines = runs[-1][1], runs[-1][2]
print(f"in one process, serial, {n} pids, {lines} maps lines; median of {ROUNDS}:")
total = 0.0
for k in runs[0][0]:
    m = statistics.median(r[0][k] for r in runs)
    total += m
    print(f"  {k:40} {m * 1000:7.1f} ms  {m / n * 1e6:6.1f} us/process")
print(f"  {'sum':40} {total * 1000:7.1f} ms  {total / n * 1e6:6.1f} us/process")

def timed(fn):
    out = []
    for _ in range(ROUNDS):
        t0 = clock(); r = fn(); out.append(clock() - t0)
    return statistics.median(out), r

ser, summary = timed(lambda: scan.scan_all(1))
par, _ = timed(lambda: scan.scan_all())
print(f"  {'scan_all(1) (+ complete)':40} {ser * 1000:7.1f} ms")
com, _ = timed(lambda: scan.complete(scan._scan_share(procfs.list_pids())))
share0, _ = timed(lambda: scan._scan_share(procfs.list_pids()))
print(f"  {'  of which complete() (findings only)':40} {(com - share0) * 1000:7.1f} ms")
print(f"  {'scan_all() with its workers':40} {par * 1000:7.1f} ms")
share = scan._scan_share(procfs.list_pids())  # what a worker sends: before complete()
enc, data = timed(lambda: marshal.dumps(scan.to_plain(share)))
dec, _ = timed(lambda: scan.from_plain(marshal.loads(data)))
print(f"  {'to_plain + marshal.dumps, all reports':40} {enc * 1000:7.1f} ms  ({len(data)} bytes, "
      f"{len(share.reports)} reports, {len(share.diverged)} with findings)")
print(f"  {'marshal.loads + from_plain':40} {dec * 1000:7.1f} ms")
out = io.StringIO()
err, sys.stderr = sys.stderr, io.StringIO()
js, _ = timed(lambda: render.print_scan_events(summary, out))
sys.stderr = err
print(f"  {'JSON output (print_scan_events)':40} {js * 1000:7.1f} ms")
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--python", default=FLEET_PYTHON if os.path.exists(FLEET_PYTHON) else sys.executable)
    p.add_argument("--tree", default=str(HERE.parent), help="the checkout to import inodewatch from")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--only", choices=("commands", "parts"))
    p.add_argument("--against", metavar="TREE,TREE",
                   help="only the command of each checkout in turn with the floor (A/B)")
    a = p.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = a.tree
    env["PYTHONPYCACHEPREFIX"] = "/tmp/scanparts-pycache"
    procs = sum(1 for e in os.listdir("/proc") if e.isdigit())
    print(f"{procs} processes; {a.python}; inodewatch from {a.tree}; {a.rounds} rounds")
    if a.against:
        against(a.python, env, a.against.split(","), a.rounds)
        return 0
    if a.only != "parts":
        whole_commands(a.python, env, a.rounds)
    if a.only != "commands":
        subprocess.run([a.python, "-c", textwrap.dedent(PARTS).replace("ROUNDS", str(a.rounds))],
                       env=env, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
