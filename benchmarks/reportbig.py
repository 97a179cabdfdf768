"""`inodewatch report` on a big log (issue 13, item 13): 3 million valid events, gzipped,
against peers that read the same file, alternating A B A B, output to /dev/null.

    python3 benchmarks/reportbig.py [--events 3000000] [--rounds 3] [--results FILE]
    python3 benchmarks/reportbig.py --inodewatch "env PYTHONPATH=/tmp/old python3 -m inodewatch"

The log is made by this script (seeded, kept in the temporary directory only for the run):
a daemon watching --hosts plugin hosts at once, each a target life with the daemon's own
event shapes -- target.attached (cmdline, uid, mnt_ns; some in a mount namespace of their
own), hold-mode reloads (mapping.deleted + mapping.replaced, then mapping.reloaded), renames,
fd.deleted, in-place overwrites followed by a SIGSEGV, clean exits with `stale` lists, a new
pid in the place of every host that ended -- and the daemon's own watch.gap, watch.overflow,
watch.degraded and a restart (daemon.stopped, daemon.started, every host attached again).

Per run: wall time, peak RSS (GNU time's %M: the largest process of the command, so of a
pipeline its largest member), and events per second (the log's events / wall).  Peers, each
reading every line of the same gzip file:
  `zcat LOG | jq -c .event | sort | uniq -c`   parses every event as JSON, then counts names
  `zgrep -c . LOG`                             decompresses and scans every line, no parsing
Targets: report peak RSS <= 300 MB, >= 100,000 events a second.
The section "## report on 3 million events" of benchmarks/RESULTS.md is replaced.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import shlex
import shutil
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from harness import REPO, RESULTS
from harness.procs import exits, scratch
from harness.results import commit_of, utc_stamp, write_section
from harness.timed import TIME, Spread, in_rounds

SECTION = "## report on 3 million events"
PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
HOST_NS = 4026531841
START = datetime(2026, 11, 27, 9, 0, 0, tzinfo=timezone.utc)


class Log:
    """Writes daemon-shaped JSON lines with a clock of its own."""

    def __init__(self, f, rng: random.Random) -> None:
        self.f = f
        self.rng = rng
        self.now = START
        self.count = 0

    def say(self, level: str, event: str, **fields: object) -> None:
        # a busy fleet: 5 events a second on average, 3 million in about a week
        self.now += timedelta(microseconds=self.rng.randrange(20, 400_000))
        stamp = self.now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        self.f.write(json.dumps({"timestamp": stamp, "level": level, "event": event, **fields}) + "\n")
        self.count += 1


class Host:
    """One plugin host slot: a target life at a time, a new pid when it ends."""

    def __init__(self, log: Log, slot: int, pid: int) -> None:
        self.log = log
        self.slot = slot
        self.new_life(pid)

    def new_life(self, pid: int) -> None:
        rng = self.log.rng
        self.pid = pid
        self.comm = rng.choice(["reload", "nginx", "php-fpm8.2", "worker"])
        self.owner = {"uid": rng.choice([0, 0, 33, 1000 + self.slot % 50]),
                      "mnt_ns": HOST_NS if rng.random() > 0.05 else 4026532000 + self.slot}
        self.start_time = self.log.now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        self.lib = f"/srv/app/host{self.slot:04d}/plugins/so.so"
        self.ino = rng.randrange(2_000_000, 3_000_000)
        self.stale: list[dict[str, object]] = []

    def attach(self, **extra: object) -> None:
        self.log.say("info", "target.attached", pid=self.pid, **self.owner, comm=self.comm,
                     exe=f"/srv/app/bin/{self.comm}",
                     cmdline=[f"/srv/app/bin/{self.comm}", "--mode", "hold", "--lib", self.lib,
                              "--interval-ms", "5000"],
                     start_time=self.start_time, selector=f"name={self.comm}", **extra)

    def mapping(self, level: str, event: str, **fields: object) -> dict[str, object]:
        entry = {"path": self.lib, "mapped_dev": "fe:00", "mapped_ino": self.ino,
                 "perms": "r--p,r-xp,r--p,rw-p", **fields}
        self.log.say(level, event, pid=self.pid, **self.owner, **entry)
        return {"event": event, **entry}

    def step(self, next_pid: int) -> bool:
        """One thing happens to the host; True when its life ended (a new pid follows)."""
        rng, log = self.log.rng, self.log
        roll = rng.random()
        if roll < 0.70:  # the operator replaces the plugin, the host reloads it
            new = self.ino + rng.randrange(1, 50)
            self.mapping("warning", "mapping.deleted")
            self.mapping("warning", "mapping.replaced", disk_dev="fe:00", disk_ino=new)
            log.say("info", "mapping.reloaded", pid=self.pid, **self.owner, path=self.lib,
                    old_ino=self.ino, new_ino=new)
            self.ino = new
        elif roll < 0.78:  # rename away, a new copy, a reload
            self.mapping("warning", "mapping.renamed", new_path=self.lib + ".old")
            new = self.ino + 1
            log.say("info", "mapping.reloaded", pid=self.pid, **self.owner, path=self.lib,
                    old_ino=self.ino, new_ino=new)
            self.ino = new
        elif roll < 0.86:  # a rotated log file still open
            log.say("warning", "fd.deleted", pid=self.pid, **self.owner, fd=rng.randrange(3, 40),
                    path=f"/var/log/app/host{self.slot:04d}.log", mapped_dev="fe:00",
                    mapped_ino=rng.randrange(10**6, 2 * 10**6))
        elif roll < 0.90:  # replaced, not reloaded yet: stale until it ends
            self.stale.append(self.mapping("warning", "mapping.deleted"))
        elif roll < 0.95:  # a clean exit
            log.say("info", "target.exited", pid=self.pid, **self.owner, exit_code=0, signal=None,
                    core_dumped=False, status_source="proc_connector", stale=self.stale)
            self.new_life(next_pid)
            self.attach()
            return True
        else:  # cp over the mapped file: SIGSEGV
            entry = self.mapping("critical", "mapping.overwritten", size_before=15472,
                                 size_after=23696)
            log.say("warning", "target.exited", pid=self.pid, **self.owner, exit_code=None,
                    signal=rng.choice(["SIGSEGV", "SIGBUS"]), core_dumped=False,
                    status_source="proc_connector", stale=[*self.stale, entry])
            self.new_life(next_pid)
            self.attach()
            return True
        return False


def make_log(path: Path, events: int, hosts: int, seed: int) -> int:
    rng = random.Random(seed)
    with gzip.open(path, "wt", compresslevel=6) as f:
        log = Log(f, rng)
        pid = 10_000
        log.say("info", "daemon.started", version="0.1.0", targets=[], mnt_ns=HOST_NS)
        fleet = []
        for slot in range(hosts):
            fleet.append(Host(log, slot, pid))
            fleet[-1].attach()
            pid += 1
        restarted = False
        while log.count < events:
            roll = rng.random()
            if roll < 0.0001:
                log.say("warning", "watch.gap", gap_s=round(rng.uniform(2, 30), 3),
                        detail="the daemon did not run (stopped, paused or overloaded)")
            elif roll < 0.0002:
                log.say("warning", "watch.overflow", detail="inotify queue overflowed; "
                        "re-reading every target")
            elif not restarted and log.count > events // 2:
                restarted = True
                log.say("info", "daemon.stopped", reason="SIGTERM", targets=[h.pid for h in fleet])
                log.say("info", "daemon.started", version="0.1.0", targets=[], mnt_ns=HOST_NS)
                for host in fleet:
                    host.attach(reattached=True)
            elif fleet[rng.randrange(hosts)].step(pid):
                pid += 1
        log.say("info", "daemon.stopped", reason="SIGTERM", targets=[h.pid for h in fleet])
        return log.count


def peers(command: list[str], log: Path) -> dict[str, list[str]]:
    """inodewatch report (text and JSON) and two peers reading every line of the same file."""
    quoted = shlex.quote(str(log))
    return {
        "inodewatch report LOG": [*command, "report", str(log)],
        "inodewatch report --json LOG": [*command, "report", "--json", str(log)],
        "zcat LOG | jq -c .event | sort | uniq -c": [
            "sh", "-c", f"zcat {quoted} | jq -c .event | sort | uniq -c"],
        "zgrep -c . LOG": ["zgrep", "-c", ".", str(log)],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=3_000_000)
    p.add_argument("--hosts", type=int, default=2000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--inodewatch", default=f"env PYTHONPATH={REPO} {PYTHON} -m inodewatch",
                   help="the inodewatch command to measure, split as a shell would (default: the "
                        "checkout under the distribution's python3, as an operator has it; "
                        "report needs no package beyond the standard library), e.g. "
                        "'env PYTHONPATH=/tmp/old /usr/bin/python3 -m inodewatch'")
    p.add_argument("--results", default=str(RESULTS))
    args = p.parse_args()
    if not os.access(TIME, os.X_OK) or not shutil.which("jq"):
        raise SystemExit("needs GNU time and jq (apt-get install time jq)")
    with scratch("iw-reportbig-", "reportbig") as work:
        log = work / "events.json.1.gz"
        started = time.perf_counter()
        events = make_log(log, args.events, args.hosts, args.seed)
        print(f"made {events:,} events, {log.stat().st_size / 1e6:.1f} MB gzip, "
              f"in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        load = os.getloadavg()
        with exits("reportbig"):
            runs = {name: Spread.of(rs) for name, rs in
                    in_rounds(peers(shlex.split(args.inodewatch), log), args.rounds, True).items()}
        text = report(args, runs, events, log.stat().st_size, (load, os.getloadavg()))
    print(text)
    write_section(Path(args.results), text, SECTION)
    return 0


def report(args: argparse.Namespace, runs: dict[str, Spread], events: int,
           size: int, loads: tuple[tuple[float, ...], tuple[float, ...]]) -> str:
    lines = [
        SECTION, "",
        f"`python3 benchmarks/reportbig.py --events {args.events} --hosts {args.hosts} "
        f"--rounds {args.rounds}` at {commit_of(REPO)}, {utc_stamp()}, "
        f"{platform.node()}, {os.cpu_count()} CPUs (load average {loads[0][0]:.2f} at the start, "
        f"{loads[1][0]:.2f} at the end), `{args.inodewatch}`: "
        f"{events:,} events of {args.hosts:,} plugin hosts at once (reloads, renames, overwrites "
        f"and crashes, exits and new pids, a daemon restart), one gzip file of "
        f"{size / 1e6:.1f} MB; each command alternating A B, output to /dev/null; peak RSS from "
        f"GNU time (%M, a pipeline's largest process).", "",
        "| command | wall median | wall min - max | events / s | peak RSS median | peak RSS max |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in runs.items():
        cell = name.replace("|", "\\|")  # a pipeline's bars, inside a table
        lines.append(f"| `{cell}` | {r.wall:.2f} s | {r.wall_min:.2f} - {r.wall_max:.2f} s "
                     f"| {events / r.wall:,.0f} | {r.rss_mb:.1f} MB | {r.rss_max_mb:.1f} MB |")
    text_run, json_run = "inodewatch report LOG", "inodewatch report --json LOG"
    worst_rss = max(runs[text_run].rss_max_mb, runs[json_run].rss_max_mb)
    slowest = max(runs[text_run].wall, runs[json_run].wall)
    lines += ["",
              f"Targets: peak RSS <= 300 MB: {'PASS' if worst_rss <= 300 else 'MISS'} "
              f"({worst_rss:.1f} MB); >= 100,000 events a second: "
              f"{'PASS' if events / slowest >= 100_000 else 'MISS'} ({events / slowest:,.0f})."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
