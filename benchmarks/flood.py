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
import time
from collections import Counter
from pathlib import Path
from typing import Any

from harness import REPO, RESULTS
from harness.daemon import Daemon, Event, event_time
from harness.demo import SO1, build_demo, demo_args, rm_cp
from harness.procfs import Meter
from harness.procs import BenchError, Children, as_user, exits, scratch, wait_until
from harness.results import commit_of, utc_stamp, write_section
from harness.stats import in_turn, percentile

SECTION = "## Floods and the watch budget"
SCENARIOS = ("idle", "names", "opens", "mapped")
MAPPER = "iwfloodmap"  # the comm of the mapping process, and the daemon's --name

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



class Tools:
    """What the rounds share: the flooder (compiled once) and the user's files to map
    (made once: creating 65,000 takes a while)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.flooder = work / "flooder"
        (work / "flooder.c").write_text(FLOODER)
        subprocess.run(["gcc", "-O2", "-o", str(self.flooder), str(work / "flooder.c")],
                       check=True)
        self.mapdir = work / "map"
        (self.mapdir / "files").mkdir(parents=True)
        shutil.copy(REPO / "tests/mapmany.py", self.mapdir / "mapmany.py")
        for path in (self.mapdir, self.mapdir / "files"):
            path.chmod(0o777)


# --- set-up -------------------------------------------------------------------------------


def start_hosts(children: Children, plugins: Path, scenario: str,
                ops: int) -> tuple[list[tuple[Path, int]], Path | None]:
    """`ops` leak-mode root demos, one plugin each ((plugin, pid)); for the open flood also
    a hold-mode host whose plugin is the one to be opened (its path)."""
    demos = []
    for i in range(ops):
        plugin = plugins / f"p{i}.so"
        shutil.copyfile(SO1, plugin)
        demos.append((plugin, children.spawn(demo_args(plugin, "leak", 50), signal.SIGKILL,
                                             stdout=subprocess.DEVNULL).pid))
    waiting = None
    if scenario == "opens":  # a host whose plugin was replaced, its reload not yet done
        waiting = plugins / "waiting.so"
        shutil.copyfile(SO1, waiting)
        host = children.spawn(demo_args(waiting, "hold", 3600000), signal.SIGKILL,
                              stdout=subprocess.DEVNULL)
        demos.append((waiting, host.pid))
    return demos, waiting


def start_mapper(children: Children, tools: Tools, args: argparse.Namespace) -> None:
    """The user's process mapping --files distinct files, named MAPPER."""
    load = children.spawn([*as_user(args.user), "/usr/bin/python3",
                           str(tools.mapdir / "mapmany.py"), str(tools.mapdir / "files"),
                           str(args.files), MAPPER], signal.SIGKILL,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    if load.stdout is None or load.stdout.readline() != b"ready\n":
        raise BenchError("the mapping process did not start")


def await_reload(daemon: Daemon, waiting: Path, host: int) -> None:
    """rm+cp of the waiting host's plugin, seen: the daemon now watches it for opens."""
    rm_cp(waiting)
    if not wait_until(lambda: any(e["event"] == "mapping.replaced" and e["pid"] == host
                                  for e in daemon.log.read()), 10):
        raise BenchError("the waiting host's replacement was not seen")


def start_flood(children: Children, scenario: str, tools: Tools, args: argparse.Namespace,
                plugins: Path, waiting: Path | None) -> subprocess.Popen[str] | None:
    """The user's C loop of the scenario (none for idle and mapped)."""
    if scenario == "names":
        how = ["names", str(plugins), str(args.rate)]
    elif scenario == "opens":
        how = ["opens", str(waiting)]
    else:
        return None
    return children.spawn([*as_user(args.user), str(tools.flooder), *how], signal.SIGKILL,
                          stdout=subprocess.PIPE, text=True)


# --- measure ------------------------------------------------------------------------------


def run_round(tree: Path, scenario: str, args: argparse.Namespace, tools: Tools) -> dict[str, Any]:
    """One daemon of the peer `tree` under the scenario's load, while root replaces one demo's
    plugin after another."""
    with scratch("iwflood.", "flood", mode=0o1777, parent=tools.work) as plugins, \
            Children() as children:
        demos, waiting = start_hosts(children, plugins, scenario, args.ops)
        if scenario == "mapped":
            start_mapper(children, tools, args)
        time.sleep(0.3)  # the demos have mapped their plugins
        pids = [a for _, pid in demos for a in ("--pid", str(pid))]
        daemon = Daemon(children, [*pids, "--name", MAPPER],
                        tools.work / f"events.{time.monotonic_ns()}.json", tree,
                        stop_signal=signal.SIGKILL)
        expected = len(demos) + (scenario == "mapped")
        if not wait_until(lambda: daemon.log.count("target.attached") >= expected, 120):
            raise BenchError(f"the daemon did not attach ({scenario}, {tree})")
        if waiting is not None:
            await_reload(daemon, waiting, demos[-1][1])
            demos.pop()
        load = start_flood(children, scenario, tools, args, plugins, waiting)
        time.sleep(1.0)
        meter = Meter(daemon.pid)
        ops = replace_each(demos, args.seconds / args.ops)
        spent, elapsed = meter.cpu(), meter.wall()
        done = None
        if load is not None:
            load.terminate()
            done = int(load.communicate()[0] or 0)
        time.sleep(2.0)  # the last operation's events
        return figures(daemon.log.read(), ops, spent, elapsed, meter.hwm_kb() / 1024, done)


def replace_each(demos: list[tuple[Path, int]], every: float) -> list[tuple[int, float, int]]:
    """rm+cp of each demo's plugin, `every` s apart: (demo pid, time just before the rm,
    inode removed)."""
    ops = []
    for plugin, pid in demos:
        time.sleep(every / 2)
        done = rm_cp(plugin)
        ops.append((pid, done.t_unlink, done.old_ino))
        time.sleep(every / 2)
    return ops


# --- analyse ------------------------------------------------------------------------------


def figures(events: list[Event], ops: list[tuple[int, float, int]], spent: float,
            elapsed: float, rss_mb: float, done: int | None) -> dict[str, Any]:
    """CPU share, peak RSS, each rm+cp's lag to its mapping.replaced (seen: within 2 s), the
    load achieved and the watch.* events."""
    replaced = {(e["pid"], e["mapped_ino"]): event_time(e) for e in events
                if e["event"] == "mapping.replaced"}
    lags = [replaced[pid, ino] - t for pid, t, ino in ops
            if (pid, ino) in replaced and replaced[pid, ino] - t <= 2]
    return {"cpu": 100 * spent / elapsed, "rss": rss_mb, "lags": lags, "ops": len(ops),
            "rate": done / (elapsed + 1.0) if done is not None else None,
            "watch": dict(Counter(e["event"] + (f"[{e['resource']}]" if "resource" in e else "")
                                  for e in events if e["event"].startswith("watch.")))}


# --- report -------------------------------------------------------------------------------


def row(scenario: str, peer: str, label: str, rs: list[dict[str, Any]],
        files: int) -> tuple[str, float, int, int]:
    """A table row of one scenario and peer; its CPU median, rm+cp fast and done."""
    lags = [lag for r in rs for lag in r["lags"]]
    ops = sum(r["ops"] for r in rs)
    fast = sum(lag <= 0.05 for lag in lags)
    watch: Counter[str] = Counter()
    for r in rs:
        watch.update(r["watch"])
    rates = [r["rate"] for r in rs if r["rate"] is not None]
    achieved = (f"{statistics.median(rates):,.0f}/s" if rates
                else f"{files:,} files" if scenario == "mapped" else "-")
    cpu = statistics.median(r["cpu"] for r in rs)
    shown = ", ".join(f"{k} x{v}" for k, v in sorted(watch.items())) or "-"
    head = (f"| {scenario} | {peer} `{label}` " if lags else f"| {scenario} | {peer} ") + \
        f"| {cpu:.1f} % | {max(r['cpu'] for r in rs):.1f} % " \
        f"| {statistics.median(r['rss'] for r in rs):.0f} MB "
    lag = (f"| {fast} of {ops} | {percentile(lags, 50) * 1000:.1f} ms | {max(lags) * 1000:.1f} ms "
           if lags else f"| 0 of {ops} | - | - ")
    return head + lag + f"| {achieved} | {shown} |", cpu, fast, ops


def report(args: argparse.Namespace, peers: dict[str, Path],
           results: dict[tuple[str, str], list[dict[str, Any]]]) -> str:
    base = args.base_label or commit_of(peers["B"])
    lines = [
        SECTION, "",
        f"`sudo python3 benchmarks/flood.py --base {args.base} --rounds {args.rounds}` at "
        f"{commit_of(REPO)} (A) against {base} (B), "
        f"{utc_stamp()}, {platform.node()}, "
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
            label = commit_of(peers[peer]) if peer == "A" else base
            text, cpu, fast, ops = row(scenario, peer, label, results[scenario, peer], args.files)
            lines.append(text)
            if peer == "A" and scenario in ("names", "opens"):
                ok = cpu <= 20 and fast == ops
                verdicts.append(f"{'PASS' if ok else 'MISS'} {scenario} flood: {cpu:.1f} % of a "
                                f"core (target <= 20 %), {fast} of {ops} rm+cp seen within 50 ms")
    lines += ["", "```", *verdicts, "```"]
    return "\n".join(lines) + "\n"


def measure(args: argparse.Namespace, peers: dict[str, Path]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Every scenario, --rounds rounds of A B / B A."""
    results: dict[tuple[str, str], list[dict[str, Any]]] = {
        (s, p): [] for s in args.scenario for p in peers}
    with scratch("flood.", "flood", mode=0o755) as work:
        tools = Tools(work)
        for scenario in args.scenario:
            for i in range(args.rounds):
                for peer in in_turn("AB", i):
                    r = run_round(peers[peer], scenario, args, tools)
                    results[scenario, peer].append(r)
                    shown = {**r, "lags": [round(x * 1000, 1) for x in r["lags"]]}
                    print(f"{scenario} round {i + 1} {peer}: {json.dumps(shown)}", file=sys.stderr,
                          flush=True)
    return results


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
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()
    args.scenario = args.scenario or list(SCENARIOS)
    if os.geteuid() != 0:
        sys.exit("flood: run as root (the demos are root's, the load another user's)")
    build_demo()
    peers = {"A": REPO, "B": args.base.resolve()}
    with exits("flood"):
        results = measure(args, peers)
    text = report(args, peers, results)
    print(text)
    write_section(Path(args.results), text, SECTION)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # clean up on SIGTERM too
    sys.exit(main())
