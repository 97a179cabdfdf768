"""Huge maps (issue 13, item 10): one user process maps one file 65,400 times from a
3,985-byte path, so its /proc/PID/maps is ~265 MB; then `inodewatch scan --all --json` and
`lsof -nP` run side by side, alternating A B A B, each to /dev/null.

Per run: wall time, and peak RSS as GNU time reports it (%M: the largest of the command's
processes -- scan --all's forked workers included).
Targets: scan's peak RSS <= 64 MB whatever the maps size; wall <= 1.5x lsof's.

    sudo python3 benchmarks/hugemaps.py [--rounds 5] [--vmas 65400] [--results FILE]

With `--daemon BASE` it measures the daemon instead: per round one daemon (`--pid` of
`--ops` leak-mode demos, all root's, and `--name iwhugemaps`, the holder's name) and one
`rm so.so; cp so2.so so.so` per demo, 0.5 s apart, made while the daemon reads the holder;
per operation its lag (the `mapping.deleted` timestamp minus the time of the rm), per round
the daemon's `watch.gap` lines and its CPU (utime + stime) over `--idle` seconds of steady
state once it has read the holder (and told its deleted file).  Peers,
alternating: A this checkout with the holder, B the tree BASE (another commit, `git worktree
add --detach BASE COMMIT`) with the holder, C this checkout without it.  Section "## Huge
maps, the daemon".

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
import pwd
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness import REPO, RESULTS
from harness.daemon import Daemon, event_time
from harness.demo import SO1, build_demo, demo_args, rm_cp
from harness.procfs import Meter
from harness.procs import BenchError, Children, as_user, exits, scratch, wait_until
from harness.results import commit_of, utc_stamp, write_section
from harness.stats import in_turn
from harness.timed import TIME, Spread, in_rounds

SECTION = "## Huge maps"
DAEMON_SECTION = "## Huge maps, the daemon"
HOLDER_NAME = "iwhugemaps"  # the holder's comm, for --name (python3 would match others)
HOLDER_USER = "nobody"

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


def start_holder(children: Children, base: Path, vmas: int,
                 path_len: int) -> tuple[subprocess.Popen[str], Path]:
    """nobody's process mapping one file `vmas` times from a `path_len`-byte path."""
    where = build_path(base, path_len)
    where.mkdir(parents=True)
    (where / "f.so").write_bytes(b"\x7fELF" + b"\0" * 4092)
    owner = pwd.getpwnam(HOLDER_USER)
    for d in [where, *where.parents]:
        if d == base.parent:
            break
        os.chown(d, owner.pw_uid, owner.pw_gid)
    python = base / HOLDER_NAME
    if not python.exists():
        python.symlink_to("/usr/bin/python3")
    proc = children.spawn([*as_user(HOLDER_USER), str(python), "-c", HOLDER, str(vmas)],
                          signal.SIGKILL, cwd=where, stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline() != "ready\n":
        raise BenchError("the holder could not map its file (vm.max_map_count?)")
    return proc, where / "f.so"


def maps_size(pid: int) -> int:
    with open(f"/proc/{pid}/maps", "rb") as maps:
        return sum(len(chunk) for chunk in iter(lambda: maps.read(1 << 20), b""))


# --- scan --all against lsof ----------------------------------------------------------------


def measure_scans(args: argparse.Namespace) -> tuple[dict[str, Spread], int, int]:
    """Per command, its runs summed up; the holder's maps size and path length."""
    peers = {"inodewatch scan --all --json": [*shlex.split(args.inodewatch), "scan", "--all",
                                              "--json"],
             "lsof -nP": ["lsof", "-nP"]}
    with scratch("iw-hugemaps-", "hugemaps") as base, Children() as children:
        holder, mapped = start_holder(children, base, args.vmas, args.path_len)
        size = maps_size(holder.pid)
        runs = {name: Spread.of(rs) for name, rs in in_rounds(peers, args.rounds).items()}
    return runs, size, len(os.fsencode(mapped))


def report(args: argparse.Namespace, runs: dict[str, Spread], maps_size: int,
           path_len: int) -> str:
    scan, lsof = runs
    ratio = runs[scan].wall / runs[lsof].wall
    lines = [
        SECTION, "",
        f"`sudo python3 benchmarks/hugemaps.py --rounds {args.rounds}` at {commit_of(REPO)}, "
        f"{utc_stamp()}, {platform.node()}, "
        f"{os.cpu_count()} CPUs: one process of `nobody` maps one file {args.vmas:,} times from a "
        f"{path_len:,}-byte path (its maps: {maps_size / 1e6:.0f} MB); each command alternating "
        f"A B, output to /dev/null; peak RSS from GNU time (%M).", "",
        "| command | wall median | wall min - max | peak RSS median | peak RSS max |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, r in runs.items():
        lines.append(f"| `{name}` | {r.wall:.2f} s | {r.wall_min:.2f} - {r.wall_max:.2f} s "
                     f"| {r.rss_mb:.1f} MB | {r.rss_max_mb:.1f} MB |")
    lines += ["",
              f"Targets: scan peak RSS <= 64 MB: {'PASS' if runs[scan].rss_max_mb <= 64 else 'MISS'} "
              f"({runs[scan].rss_max_mb:.1f} MB); wall <= 1.5x lsof's: "
              f"{'PASS' if ratio <= 1.5 else 'MISS'} ({ratio:.2f}x)."]
    return "\n".join(lines) + "\n"


# --- the daemon -------------------------------------------------------------------------------


def start_demos(children: Children, base: Path, ops: int) -> list[tuple[Path, int]]:
    """`ops` leak-mode root demos, each with its plugin: (plugin, pid)."""
    demos = []
    for i in range(ops):
        plugin = base / f"demo{i}" / "so.so"
        plugin.parent.mkdir()
        shutil.copyfile(SO1, plugin)
        proc = children.spawn(demo_args(plugin, "leak", 50), signal.SIGKILL,
                              stdout=subprocess.DEVNULL)
        demos.append((plugin, proc.pid))
    return demos


def daemon_round(tree: Path, work: Path, args: argparse.Namespace,
                 with_holder: bool) -> dict[str, Any]:
    """One daemon, --ops demos and maybe the holder: per operation the lag, and the CPU."""
    with scratch("iw-hugemaps-", "hugemaps", parent=work) as base, Children() as children:
        holder = start_holder(children, base, args.vmas, args.path_len)[0] if with_holder else None
        demos = start_demos(children, base, args.ops)
        time.sleep(0.3)  # every demo has mapped its plugin
        daemon = Daemon(children, [*(a for _, pid in demos for a in ("--pid", str(pid))),
                                   "--name", HOLDER_NAME], base / "events.json", tree,
                        stop_signal=signal.SIGKILL)
        wanted = args.ops + (1 if with_holder else 0)
        if not wait_until(lambda: daemon.log.count("target.attached") >= wanted, 300):
            raise BenchError("the daemon did not attach to every process")
        ops = []
        for plugin, pid in demos:  # while the holder's first read is under way
            ops.append((pid, rm_cp(plugin).t_unlink))
            time.sleep(0.5)

        def deleted() -> dict[int, float]:
            return {e["pid"]: event_time(e) for e in daemon.log.read()
                    if e["event"] == "mapping.deleted"}
        wait_until(lambda: all(pid in deleted() for pid, _ in ops)
                   and (holder is None or holder.pid in deleted()), 60)
        # then the steady state: what watching the holder costs once it has been read
        meter = Meter(daemon.pid)
        time.sleep(args.idle)
        cpu = meter.cpu() / meter.wall()
        told = deleted()
        return {"lags": [told[pid] - t if pid in told else None for pid, t in ops], "cpu": cpu,
                "gaps": daemon.log.count("watch.gap")}


def measure_daemon(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    peers = {"A": (REPO, True), "B": (args.daemon.resolve(), True), "C": (REPO, False)}
    runs: dict[str, list[dict[str, Any]]] = {peer: [] for peer in peers}
    with scratch("iw-hugemaps-daemon-", "hugemaps", mode=0o755) as work:
        for round_ in range(args.rounds):
            for peer in in_turn(list(peers), round_):
                r = daemon_round(peers[peer][0], work, args, peers[peer][1])
                runs[peer].append(r)
                print(f"round {round_ + 1} {peer}: {r}", file=sys.stderr, flush=True)
    return runs


def daemon_report(args: argparse.Namespace, runs: dict[str, list[dict[str, Any]]]) -> str:
    lines = [DAEMON_SECTION, "",
             f"`sudo python3 benchmarks/hugemaps.py --daemon BASE --rounds {args.rounds}` at "
             f"{commit_of(REPO)} (BASE: {commit_of(args.daemon)}), "
             f"{utc_stamp()}, {os.cpu_count()} CPUs: "
             f"per round one daemon watching {args.ops} root demos by --pid and `--name "
             f"{HOLDER_NAME}`, nobody's process mapping one file {args.vmas:,} times from a "
             f"{args.path_len:,}-byte path; one rm+cp per demo, 0.5 s apart; lag = "
             f"mapping.deleted's timestamp - the rm, the rms made during the holder's first read; "
             f"CPU = the daemon's utime+stime over {args.idle:g} s once that read is done. Peers "
             "alternating A B C, C B A.", "",
             "| peer | lag median | lag max | not told in 60 s | daemon CPU (steady) median | watch.gap lines |",
             "| --- | --- | --- | --- | --- | --- |"]
    names = {"A": "this checkout, with the holder", "B": "BASE, with the holder",
             "C": "this checkout, no holder"}
    for peer, rs in runs.items():
        lags = [lag for r in rs for lag in r["lags"] if lag is not None]
        missed = sum(lag is None for r in rs for lag in r["lags"])
        lines.append(f"| {peer}: {names[peer]} | {statistics.median(lags) * 1000:.1f} ms "
                     f"| {max(lags) * 1000:.1f} ms | {missed} of {len(rs) * args.ops} "
                     f"| {statistics.median(r['cpu'] for r in rs) * 100:.1f} % "
                     f"| {sum(r['gaps'] for r in rs)} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--vmas", type=int, default=65400)
    p.add_argument("--path-len", type=int, default=3985)
    p.add_argument("--inodewatch", default=str(REPO / ".venv/bin/inodewatch"),
                   help="the inodewatch command to measure, split as a shell would (default: "
                        "the checkout's venv), e.g. 'env PYTHONPATH=/tmp/old python3 -m inodewatch'")
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--daemon", type=Path, metavar="BASE",
                   help="measure the daemon against the tree BASE (see above)")
    p.add_argument("--ops", type=int, default=6, help="with --daemon: operations per round")
    p.add_argument("--idle", type=float, default=20.0,
                   help="with --daemon: seconds of steady state whose CPU is measured")
    args = p.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("hugemaps: run as root")
    with exits("hugemaps"):
        if args.daemon:
            build_demo()
            text, section = daemon_report(args, measure_daemon(args)), DAEMON_SECTION
        else:
            if not shutil.which("lsof") or not os.access(TIME, os.X_OK):
                raise SystemExit("needs root, lsof and GNU time (apt-get install lsof time)")
            text, section = report(args, *measure_scans(args)), SECTION
    print(text)
    write_section(Path(args.results), text, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
