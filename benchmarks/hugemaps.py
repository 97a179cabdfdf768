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
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from massexit import read_log, stamp, wait_until  # benchmarks/ is on sys.path: run as a script

REPO = Path(__file__).resolve().parent.parent
SECTION = "## Huge maps"
DAEMON_SECTION = "## Huge maps, the daemon"
HOLDER_NAME = "iwhugemaps"  # the holder's comm, for --name (python3 would match others)
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
    python = base / HOLDER_NAME
    if not python.exists():
        python.symlink_to("/usr/bin/python3")
    proc = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             str(python), "-c", HOLDER, str(vmas)],
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
    p.add_argument("--daemon", type=Path, metavar="BASE",
                   help="measure the daemon against the tree BASE (see above)")
    p.add_argument("--ops", type=int, default=6, help="with --daemon: operations per round")
    p.add_argument("--idle", type=float, default=20.0,
                   help="with --daemon: seconds of steady state whose CPU is measured")
    args = p.parse_args()
    if args.daemon:
        return measure_daemon(args)
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
    commit = commit_of(REPO)
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


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def daemon_round(tree: Path, work: Path, args: argparse.Namespace, with_holder: bool) -> dict:
    """One daemon, --ops demos and maybe the holder: per operation the lag, and the CPU."""
    procs: list[subprocess.Popen] = []
    holder = daemon = None
    base = Path(tempfile.mkdtemp(prefix="iw-hugemaps-", dir=work))
    try:
        if with_holder:
            holder, _ = start_holder(base, args.vmas, args.path_len)
        plugins = []
        for i in range(args.ops):
            plugin = base / f"demo{i}" / "so.so"
            plugin.parent.mkdir()
            shutil.copyfile(REPO / "csrc/so1.so", plugin)
            procs.append(subprocess.Popen([str(REPO / "csrc/reload"), "--mode", "leak",
                                           "--interval-ms", "50", "--lib", str(plugin)],
                                          stdout=subprocess.DEVNULL))
            plugins.append(plugin)
        time.sleep(0.3)  # every demo has mapped its plugin
        log = base / "events.json"
        pids = [a for p in procs for a in ("--pid", str(p.pid))]
        daemon = subprocess.Popen([sys.executable, "-m", "inodewatch", *pids, "--name", HOLDER_NAME,
                                   "--log-file", str(log)], cwd=tree)
        wanted = args.ops + (1 if with_holder else 0)
        if not wait_until(lambda: sum(e["event"] == "target.attached" for e in read_log(log)) >= wanted, 300):
            raise SystemExit("hugemaps: the daemon did not attach to every process")
        ops = []
        for plugin, demo in zip(plugins, procs):  # while the holder's first read is under way
            ops.append((demo.pid, time.time()))
            os.unlink(plugin)
            shutil.copyfile(REPO / "csrc/so2.so", plugin)
            time.sleep(0.5)
        deleted = lambda: {e["pid"]: stamp(e) for e in read_log(log) if e["event"] == "mapping.deleted"}
        wait_until(lambda: all(pid in deleted() for pid, _ in ops)
                   and (holder is None or holder.pid in deleted()), 60)
        # then the steady state: what watching the holder costs once it has been read
        cpu_before, started = cpu_seconds(daemon.pid), time.monotonic()
        time.sleep(args.idle)
        cpu = (cpu_seconds(daemon.pid) - cpu_before) / (time.monotonic() - started)
        told = deleted()
        return {"lags": [told[pid] - t if pid in told else None for pid, t in ops], "cpu": cpu,
                "gaps": sum(e["event"] == "watch.gap" for e in read_log(log))}
    finally:
        for proc in [daemon, holder, *procs]:
            if proc is not None:
                proc.kill()
                proc.wait()
        shutil.rmtree(base, ignore_errors=True)


def measure_daemon(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise SystemExit("hugemaps: run as root")
    subprocess.run(["make", "-s", "-C", str(REPO / "csrc")], check=True)
    peers = {"A": (REPO, True), "B": (args.daemon.resolve(), True), "C": (REPO, False)}
    runs: dict[str, list[dict]] = {peer: [] for peer in peers}
    work = Path(tempfile.mkdtemp(prefix="iw-hugemaps-daemon-"))
    os.chmod(work, 0o755)
    try:
        for round_ in range(args.rounds):
            for peer in (list(peers) if round_ % 2 == 0 else list(reversed(peers))):
                r = daemon_round(peers[peer][0], work, args, peers[peer][1])
                runs[peer].append(r)
                print(f"round {round_ + 1} {peer}: {r}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = [DAEMON_SECTION, "",
             f"`sudo python3 benchmarks/hugemaps.py --daemon BASE --rounds {args.rounds}` at "
             f"{commit_of(REPO)} (BASE: {commit_of(args.daemon)}), "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs: "
             f"per round one daemon watching {args.ops} root demos by --pid and `--name "
             f"{HOLDER_NAME}`, nobody's process mapping one file {args.vmas:,} times from a "
             f"{args.path_len:,}-byte path; one rm+cp per demo, 0.5 s apart; lag = "
             f"mapping.deleted's timestamp - the rm, the rms made during the holder's first read; "
             f"CPU = the daemon's utime+stime over {args.idle:g} s once that read is done. Peers "
             "alternating A B C, C B A.", "",
             "| peer | lag median | lag max | not told in 60 s | daemon CPU (steady) median | watch.gap lines |",
             "| --- | --- | --- | --- | --- | --- |"]
    names = {"A": f"this checkout, with the holder", "B": f"BASE, with the holder",
             "C": f"this checkout, no holder"}
    for peer, rs in runs.items():
        lags = [lag for r in rs for lag in r["lags"] if lag is not None]
        missed = sum(lag is None for r in rs for lag in r["lags"])
        lines.append(f"| {peer}: {names[peer]} | {statistics.median(lags) * 1000:.1f} ms "
                     f"| {max(lags) * 1000:.1f} ms | {missed} of {len(rs) * args.ops} "
                     f"| {statistics.median(r['cpu'] for r in rs) * 100:.1f} % "
                     f"| {sum(r['gaps'] for r in rs)} |")
    text = "\n".join(lines) + "\n"
    print(text)
    write_section(Path(args.results), text, DAEMON_SECTION)
    return 0


def commit_of(tree: Path) -> str:
    return subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip() or "?"


def write_section(results: Path, text: str, section: str = SECTION) -> None:
    """Replace a benchmark's section of RESULTS.md (up to the next "## " or the end)."""
    old = results.read_text() if results.exists() else ""
    if f"{section}\n" in old:  # "## Huge maps" is also the start of the daemon's heading
        head, rest = old.split(f"{section}\n", 1)
        tail = rest[rest.find("\n## "):] if "\n## " in rest else ""
        new = head + text + tail.lstrip("\n")
    else:
        new = old.rstrip("\n") + "\n\n" + text
    results.write_text(new)


if __name__ == "__main__":
    sys.exit(main())
