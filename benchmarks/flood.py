"""Floods and a user's huge mappings (issue 13, items 11 and 6): the daemon's CPU, memory and
the lag of the operator's own rm+cp while an unprivileged user does her worst.

Per round, for one peer (this checkout, A, or --base, B: a tree of the commit to compare):
  - `--ops` leak-mode demos run as root in one directory of mode 1777, each loading its own
    plugin (a leak-mode host maps only the first file at a path, so each rm+cp is one
    divergence to see), all named by --pid;
  - the daemon starts from the peer's tree (`python3 -m inodewatch --pid ... --name iwfloodmap
    --log-file FILE`, default --interval) and attaches to them;
  - the user (`--user`, default nobody) starts the load of the scenario:
      idle:   nothing (the control);
      names:  a C loop creating, renaming and unlinking files in the demos' directory at
              `--rate` a second (default 30,000), in batches every millisecond;
      opens:  a C loop opening and closing, as fast as one core lets it, a plugin waiting for
              its host's reload (rm+cp done, host in hold mode: the daemon watches that file
              for opens, as its open is the reload);
      mapped: `--files` distinct files (default 65,000) mapped by one process named
              iwfloodmap (tests/mapmany.py), which the daemon follows by --name;
  - after 1 s, for `--seconds` (default 20): the daemon's CPU from /proc/PID/stat (utime +
    stime), and every `--seconds / --ops` s a root `rm so.so; cp so2.so so.so` on the next
    demo; its lag is the timestamp of that demo's mapping.replaced minus time.time() just
    before the rm (seen: within 2 s); at the end the daemon's VmHWM, and the watch.* events.
Rounds alternate A B, B A; the tables give medians over rounds (lags: over every operation).
Targets (issue 13, item 11): <= 20 % of a core under a 30,000/s flood of names and under the
open flood, every rm+cp seen within 50 ms.

    sudo python3 benchmarks/flood.py --base /tmp/iw-base [--rounds 3] [--scenario names]

`--base DIR`: e.g. `mkdir /tmp/iw-base && git archive 1e25d4d | tar -x -C /tmp/iw-base`.  The
section "## Floods and the watch budget" of benchmarks/RESULTS.md is replaced (`--results`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

from hugemaps import write_section

REPO = Path(__file__).resolve().parent.parent
SECTION = "## Floods and the watch budget"
SCENARIOS = ("idle", "names", "opens", "mapped")
MAPPER = "iwfloodmap"  # the comm of the mapping process, and the daemon's --name
TICKS = os.sysconf("SC_CLK_TCK")

FLOODER = r"""
/* names DIR RATE: create, rename, unlink x<N> in DIR, RATE a second in 1 ms batches;
   opens PATH: open and close PATH as fast as possible.  Prints the operations done. */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop;
static void on_term(int s) { (void)s; stop = 1; }

int main(int argc, char **argv) {
    long n = 0;
    signal(SIGTERM, on_term);
    if (argc == 4 && argv[1][0] == 'n') {
        double rate = atof(argv[3]);
        char a[4096], b[4096];
        struct timespec start, now, tick = {0, 1000000};
        clock_gettime(CLOCK_MONOTONIC, &start);
        while (!stop) {
            clock_gettime(CLOCK_MONOTONIC, &now);
            double due = ((now.tv_sec - start.tv_sec) + (now.tv_nsec - start.tv_nsec) / 1e9) * rate;
            if (n >= due) { nanosleep(&tick, NULL); continue; }
            snprintf(a, sizeof a, "%s/x%ld", argv[2], n % 1000);
            snprintf(b, sizeof b, "%s.new", a);
            int fd = open(a, O_CREAT | O_WRONLY, 0644);
            if (fd >= 0) close(fd);
            rename(a, b);
            unlink(b);
            n++;
        }
    } else if (argc == 3 && argv[1][0] == 'o') {
        while (!stop) {
            int fd = open(argv[2], O_RDONLY);
            if (fd >= 0) close(fd);
            n++;
        }
    } else {
        return 2;
    }
    printf("%ld\n", n);
    return 0;
}
"""


def stamp(event: dict) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()


def read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    data = path.read_bytes()
    return [json.loads(line) for line in data[:data.rfind(b"\n") + 1].splitlines() if line]


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def as_user(user: str) -> list[str]:
    import pwd
    entry = pwd.getpwnam(user)
    return ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups", "--"]


def run_round(tree: Path, scenario: str, args: argparse.Namespace, work: Path, flooder: Path,
              mapdir: Path) -> dict:
    plugins = Path(tempfile.mkdtemp(prefix="iwflood.", dir=work))
    plugins.chmod(0o1777)
    procs: list[subprocess.Popen] = []
    demos = []
    for i in range(args.ops):
        plugin = plugins / f"p{i}.so"
        shutil.copyfile(REPO / "csrc/so1.so", plugin)
        demos.append((plugin, subprocess.Popen(
            [str(REPO / "csrc/reload"), "--mode", "leak", "--interval-ms", "50", "--lib",
             str(plugin)], stdout=subprocess.DEVNULL)))
    procs += [d for _, d in demos]
    load = None
    log = work / f"events.{time.monotonic_ns()}.json"
    try:
        if scenario == "opens":  # a host whose plugin was replaced, its reload not yet done
            waiting = plugins / "waiting.so"
            shutil.copyfile(REPO / "csrc/so1.so", waiting)
            host = subprocess.Popen([str(REPO / "csrc/reload"), "--mode", "hold", "--interval-ms",
                                     "3600000", "--lib", str(waiting)], stdout=subprocess.DEVNULL)
            procs.append(host)
        if scenario == "mapped":
            load = subprocess.Popen([*as_user(args.user), "/usr/bin/python3",
                                     str(mapdir / "mapmany.py"), str(mapdir / "files"),
                                     str(args.files), MAPPER],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            if load.stdout is None or load.stdout.readline() != b"ready\n":
                sys.exit("flood: the mapping process did not start")
        time.sleep(0.3)  # the demos have mapped their plugins
        pids = [a for p in procs for a in ("--pid", str(p.pid))]
        daemon = subprocess.Popen([sys.executable, "-m", "inodewatch", *pids, "--name", MAPPER,
                                   "--log-file", str(log)], cwd=tree)
        procs.append(daemon)
        expected = len(pids) // 2 + (scenario == "mapped")
        if not wait_until(lambda: sum(e["event"] == "target.attached"
                                      for e in read_log(log)) >= expected, 120):
            sys.exit(f"flood: the daemon did not attach ({scenario}, {tree})")
        if scenario == "opens":
            os.unlink(waiting)
            shutil.copyfile(REPO / "csrc/so2.so", waiting)
            if not wait_until(lambda: any(e["event"] == "mapping.replaced" and e["pid"] == host.pid
                                          for e in read_log(log)), 10):
                sys.exit("flood: the waiting host's replacement was not seen")
        if scenario == "names":
            load = subprocess.Popen([*as_user(args.user), str(flooder), "names", str(plugins),
                                     str(args.rate)], stdout=subprocess.PIPE, text=True)
        elif scenario == "opens":
            load = subprocess.Popen([*as_user(args.user), str(flooder), "opens", str(waiting)],
                                    stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)
        before, started = cpu_seconds(daemon.pid), time.monotonic()
        every = args.seconds / args.ops
        ops = []  # (demo pid, time just before the rm, inode removed)
        for plugin, demo in demos:
            time.sleep(every / 2)
            ino = os.stat(plugin).st_ino
            ops.append((demo.pid, time.time(), ino))
            os.unlink(plugin)
            shutil.copyfile(REPO / "csrc/so2.so", plugin)
            time.sleep(every / 2)
        spent, elapsed = cpu_seconds(daemon.pid) - before, time.monotonic() - started
        done = None
        if load is not None and scenario in ("names", "opens"):
            load.terminate()
            done = int(load.communicate()[0] or 0)
        time.sleep(2.0)  # the last operation's events
        rss = peak_rss_mb(daemon.pid)
        events = read_log(log)
    finally:
        for proc in reversed(procs):
            proc.kill()
            proc.wait()
        if load is not None and load.poll() is None:
            load.kill()
            load.wait()
        shutil.rmtree(plugins)
    replaced = {(e["pid"], e["mapped_ino"]): stamp(e) for e in events
                if e["event"] == "mapping.replaced"}
    lags = [replaced[pid, ino] - t for pid, t, ino in ops
            if (pid, ino) in replaced and replaced[pid, ino] - t <= 2]
    return {"cpu": 100 * spent / elapsed, "rss": rss, "lags": lags, "ops": len(ops),
            "rate": done / (elapsed + 1.0) if done is not None else None,
            "watch": dict(Counter(e["event"] + (f"[{e['resource']}]" if "resource" in e else "")
                                  for e in events if e["event"].startswith("watch.")))}


def commit(tree: Path) -> str:
    out = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    return out or tree.name


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(args: argparse.Namespace, peers: dict[str, Path],
           results: dict[tuple[str, str], list[dict]]) -> str:
    lines = [
        SECTION, "",
        f"`sudo python3 benchmarks/flood.py --base {args.base} --rounds {args.rounds}` at "
        f"{commit(REPO)} (A) against {args.base_label or commit(peers['B'])} (B), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.node()}, "
        f"{os.cpu_count()} CPUs, load average at the end "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}: the user `{args.user}` floods the "
        f"directory (mode 1777) of {args.ops} root demos named by --pid, while root replaces "
        f"their plugins one by one (rm + cp) over {args.seconds:.0f} s; the daemon's CPU over "
        "those seconds (utime + stime), its VmHWM, and each rm+cp's lag to its "
        "`mapping.replaced` (the event's own timestamp); rounds alternate A B, B A. Method: "
        "the docstring of `benchmarks/flood.py`.", "",
        "| scenario | peer | CPU (median of rounds) | CPU max | VmHWM | rm+cp seen within 50 ms "
        "| lag p50 | lag max | load achieved | watch.* events (all rounds) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    verdicts = []
    for scenario in args.scenario:
        for peer in ("A", "B"):
            rs = results[scenario, peer]
            lags = [lag for r in rs for lag in r["lags"]]
            ops = sum(r["ops"] for r in rs)
            fast = sum(lag <= 0.05 for lag in lags)
            watch = Counter()
            for r in rs:
                watch.update(r["watch"])
            rates = [r["rate"] for r in rs if r["rate"] is not None]
            achieved = (f"{statistics.median(rates):,.0f}/s" if rates
                        else f"{args.files:,} files" if scenario == "mapped" else "-")
            cpu = statistics.median(r["cpu"] for r in rs)
            lines.append(
                f"| {scenario} | {peer} `{commit(peers[peer]) if peer == 'A' else args.base_label or commit(peers[peer])}` "
                f"| {cpu:.1f} % | {max(r['cpu'] for r in rs):.1f} % "
                f"| {statistics.median(r['rss'] for r in rs):.0f} MB "
                f"| {fast} of {ops} | {pct(lags, 0.5) * 1000:.1f} ms | {max(lags) * 1000:.1f} ms "
                f"| {achieved} | {', '.join(f'{k} x{v}' for k, v in sorted(watch.items())) or '-'} |"
                if lags else
                f"| {scenario} | {peer} | {cpu:.1f} % | {max(r['cpu'] for r in rs):.1f} % "
                f"| {statistics.median(r['rss'] for r in rs):.0f} MB | 0 of {ops} | - | - "
                f"| {achieved} | {', '.join(f'{k} x{v}' for k, v in sorted(watch.items())) or '-'} |")
            if peer == "A" and scenario in ("names", "opens"):
                ok = cpu <= 20 and fast == ops
                verdicts.append(f"{'PASS' if ok else 'MISS'} {scenario} flood: {cpu:.1f} % of a "
                                f"core (target <= 20 %), {fast} of {ops} rm+cp seen within 50 ms")
    lines += ["", "```", *verdicts, "```"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="peer B: a tree of another commit")
    parser.add_argument("--base-label", help="how to name peer B (default: its git commit)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scenario", action="append", choices=SCENARIOS)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--ops", type=int, default=20)
    parser.add_argument("--rate", type=float, default=30_000)
    parser.add_argument("--files", type=int, default=65_000)
    parser.add_argument("--user", default="nobody")
    parser.add_argument("--results", default=str(REPO / "benchmarks/RESULTS.md"))
    args = parser.parse_args()
    args.scenario = args.scenario or list(SCENARIOS)
    if os.geteuid() != 0:
        sys.exit("flood: run as root (the demos are root's, the load another user's)")
    subprocess.run(["make", "-s", "-C", str(REPO / "csrc")], check=True)
    peers = {"A": REPO, "B": args.base.resolve()}
    work = Path(tempfile.mkdtemp(prefix="flood."))
    work.chmod(0o755)
    results: dict[tuple[str, str], list[dict]] = {(s, p): [] for s in args.scenario for p in peers}
    try:
        flooder = work / "flooder"
        (work / "flooder.c").write_text(FLOODER)
        subprocess.run(["gcc", "-O2", "-o", str(flooder), str(work / "flooder.c")], check=True)
        mapdir = work / "map"  # the user's files, made once: creating 65,000 takes a while
        (mapdir / "files").mkdir(parents=True)
        shutil.copy(REPO / "tests/mapmany.py", mapdir / "mapmany.py")
        for path in (mapdir, mapdir / "files"):
            path.chmod(0o777)
        for scenario in args.scenario:
            for i in range(args.rounds):
                for peer in ("AB" if i % 2 == 0 else "BA"):
                    r = run_round(peers[peer], scenario, args, work, flooder, mapdir)
                    results[scenario, peer].append(r)
                    shown = {**r, "lags": [round(x * 1000, 1) for x in r["lags"]]}
                    print(f"{scenario} round {i + 1} {peer}: {json.dumps(shown)}", file=sys.stderr,
                          flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = report(args, peers, results)
    print(text)
    write_section(Path(args.results), text, SECTION)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # clean up on SIGTERM too
    sys.exit(main())
