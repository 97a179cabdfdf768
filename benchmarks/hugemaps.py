"""Huge maps (issue 13, item 10): one user process maps one file 65,400 times from a
3,985-byte path, so its /proc/PID/maps is ~265 MB; then `inodewatch scan --all --json` and
`lsof -nP` run side by side, alternating A B A B, each to /dev/null.

Per run: wall time, and peak RSS as GNU time reports it (%M: the largest of the command's
processes -- scan --all's forked workers included).
Targets: scan's peak RSS <= 64 MB whatever the maps size; wall <= 1.5x lsof's.

    sudo python3 benchmarks/hugemaps.py [--rounds 5] [--vmas 65400] [--results FILE]

The hostile process runs as `nobody` (an unprivileged user, as in the issue) with the
distribution's python3 and ctypes' mmap (the mmap module would hold one fd per mapping).
Each mapping is one page at offset 0 of the same file: neighbours never merge into one VMA.
The section "## Huge maps" of benchmarks/RESULTS.md is replaced (fleet.py keeps it: it sits
below the history it preserves).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SECTION = "## Huge maps"
TIME = "/usr/bin/time"  # GNU time (Debian: apt-get install time)

HOLDER = r"""
import ctypes, os, sys
vmas = int(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
fd = os.open("f.so", os.O_RDONLY)
for i in range(vmas):
    if libc.mmap(None, 4096, 1, 2, fd, 0) in (None, ctypes.c_void_p(-1).value):  # PROT_READ, MAP_PRIVATE
        sys.exit("mmap %d: %s" % (i, os.strerror(ctypes.get_errno())))
print("ready", flush=True)
sys.stdin.read()  # until the benchmark closes our stdin
"""


def build_path(base: Path, length: int) -> Path:
    """A directory under `base` such that `dir/f.so` is exactly `length` bytes long."""
    left = length - len(str(base)) - len("/f.so")  # for "/" + name, component by component
    parts = []
    while left > 0:
        size = min(200, left - 1)
        parts.append("d" * size)
        left -= size + 1
    return base.joinpath(*parts)


def start_holder(base: Path, vmas: int, path_len: int) -> tuple[subprocess.Popen[str], Path]:
    where = build_path(base, path_len)
    where.mkdir(parents=True)
    (where / "f.so").write_bytes(b"\x7fELF" + b"\0" * 4092)
    for d in [where, *where.parents]:
        if d == base.parent:
            break
        os.chown(d, 65534, 65534)
    proc = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             "/usr/bin/python3", "-c", HOLDER, str(vmas)],
                            cwd=where, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline() != "ready\n":
        proc.kill()
        raise SystemExit("the holder could not map its file (vm.max_map_count?)")
    return proc, where / "f.so"


def measure(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one run of `argv`, its output thrown away.  The RSS
    is GNU time's (%M: the largest of the command's processes): our own fork's rusage would
    carry this Python's size from before the exec."""
    with tempfile.NamedTemporaryFile("r") as rss:
        started = time.perf_counter()
        subprocess.run([TIME, "-f", "%M", "-o", rss.name, *argv],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        return wall, int(rss.read().split()[-1]) / 1024


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--vmas", type=int, default=65400)
    p.add_argument("--path-len", type=int, default=3985)
    p.add_argument("--inodewatch", default=str(REPO / ".venv/bin/inodewatch"),
                   help="the inodewatch command to measure, split as a shell would (default: "
                        "the checkout's venv), e.g. 'env PYTHONPATH=/tmp/old python3 -m inodewatch'")
    p.add_argument("--results", default=str(REPO / "benchmarks/RESULTS.md"))
    args = p.parse_args()
    if os.geteuid() != 0 or not shutil.which("lsof") or not os.access(TIME, os.X_OK):
        raise SystemExit("needs root, lsof and GNU time (apt-get install lsof time)")
    peers = {"inodewatch scan --all --json": [*shlex.split(args.inodewatch), "scan", "--all", "--json"],
             "lsof -nP": ["lsof", "-nP"]}
    base = Path(tempfile.mkdtemp(prefix="iw-hugemaps-"))
    holder = None
    try:
        holder, mapped = start_holder(base, args.vmas, args.path_len)
        with open(f"/proc/{holder.pid}/maps", "rb") as maps:
            maps_size = sum(len(chunk) for chunk in iter(lambda: maps.read(1 << 20), b""))
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in peers}
        for round_ in range(args.rounds):
            order = list(peers) if round_ % 2 == 0 else list(reversed(peers))
            for name in order:
                runs[name].append(measure(peers[name]))
                print(f"round {round_ + 1} {name}: {runs[name][-1][0]:.2f} s, {runs[name][-1][1]:.1f} MB",
                      file=sys.stderr)
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        shutil.rmtree(base, ignore_errors=True)
    text = report(args, runs, maps_size, len(os.fsencode(mapped)))
    print(text)
    write_section(Path(args.results), text)
    return 0


def report(args: argparse.Namespace, runs: dict[str, list[tuple[float, float]]], maps_size: int,
           path_len: int) -> str:
    wall = {n: statistics.median(w for w, _ in r) for n, r in runs.items()}
    rss = {n: statistics.median(m for _, m in r) for n, r in runs.items()}
    peak = {n: max(m for _, m in r) for n, r in runs.items()}
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    scan, lsof = runs
    ratio = wall[scan] / wall[lsof]
    lines = [
        SECTION, "",
        f"`sudo python3 benchmarks/hugemaps.py --rounds {args.rounds}` at {commit}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.node()}, "
        f"{os.cpu_count()} CPUs: one process of `nobody` maps one file {args.vmas:,} times from a "
        f"{path_len:,}-byte path (its maps: {maps_size / 1e6:.0f} MB); each command alternating "
        f"A B, output to /dev/null; peak RSS from GNU time (%M).", "",
        "| command | wall median | wall min - max | peak RSS median | peak RSS max |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, r in runs.items():
        walls = [w for w, _ in r]
        lines.append(f"| `{name}` "
                     f"| {wall[name]:.2f} s | {min(walls):.2f} - {max(walls):.2f} s "
                     f"| {rss[name]:.1f} MB | {peak[name]:.1f} MB |")
    lines += ["",
              f"Targets: scan peak RSS <= 64 MB: {'PASS' if peak[scan] <= 64 else 'MISS'} "
              f"({peak[scan]:.1f} MB); wall <= 1.5x lsof's: "
              f"{'PASS' if ratio <= 1.5 else 'MISS'} ({ratio:.2f}x)."]
    return "\n".join(lines) + "\n"


def write_section(results: Path, text: str, section: str = SECTION) -> None:
    """Replace a benchmark's section of RESULTS.md (up to the next "## " or the end)."""
    old = results.read_text() if results.exists() else ""
    if section in old:
        head, rest = old.split(section, 1)
        tail = rest[rest.find("\n## "):] if "\n## " in rest else ""
        new = head + text + tail.lstrip("\n")
    else:
        new = old.rstrip("\n") + "\n\n" + text
    results.write_text(new)


if __name__ == "__main__":
    sys.exit(main())
