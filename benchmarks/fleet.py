#!/usr/bin/env python3
"""A fleet of plugin hosts: full-host scan against lsof / needrestart / checkrestart, and
what the watch daemon costs (idle, under churn) and how fast it reports, with N hosts.

A benchmark run by hand, not a test.  As root, from a checkout with the package installed
(``scripts/setup``, or ``pip install -e .``)::

    python3 benchmarks/fleet.py [--hosts 500] [--rounds 9] [--idle 60] [--churn 60]
    python3 benchmarks/fleet.py --hosts 50 --rounds 2 --idle 10 --churn 10 --results /tmp/q.md
    python3 benchmarks/fleet.py --hosts 500,1500,5000   # a sweep: see fleetsweep.py
    python3 benchmarks/fleet.py --hosts 500 --peers TREE,TREE   # daemons side by side: fleetpeers.py

It installs what is missing (``apt-get install lsof needrestart debian-goodies``), builds
``csrc/`` (``make -s -C csrc``), runs everything below and writes the tables to
``benchmarks/RESULTS.md`` (``--results``), printing the same text.  Every process it starts
is stopped at the end and ``/srv/inodewatch-fleet`` is removed, also on Ctrl-C / SIGTERM;
the hosts also die with the script (PR_SET_PDEATHSIG) and stop by themselves (``--ticks``).

The fleet
---------
``/srv/inodewatch-fleet/bin/reload`` (a copy of ``csrc/reload``, so ``--exe`` selects the
fleet and nothing else) runs N times, host i loading its own copy of ``so1.so`` at
``/srv/inodewatch-fleet/hostNNN/so.so``: outside /tmp, because needrestart and checkrestart
ignore /tmp by design.  90 % are ``--mode hold`` hosts with a 5 s tick (``--interval-ms``):
quiet but alive, each tick a dlclose + dlopen of the same, unchanged file.

The other 10 % (``--divergent``) run ``--mode leak``: a hold host would dlopen the new file
at its next tick and the divergence would be gone before some scans ran; a leak host keeps
its first mapping for good, so the divergence lasts the whole run.  Once every host maps its
so.so, one third of them each get:

* ``rm so.so``                      -> **deleted**:  the mapped inode has no link left;
* ``cp so2.so so.so.new; mv so.so.new so.so`` -> **mv-over**: the mapped inode has no link
  left *and* the path names another inode;
* ``mv so.so old.so``               -> **renamed**:  the mapped inode is intact under a new
  name.

Ground truth ("needs a restart: runs code that is no longer on disk"):
deleted and mv-over hosts -- yes (stale); renamed hosts -- no: they run an inode that is
still on disk, unchanged (the file was only renamed), and a one-shot scan cannot even tell
(maps shows ``old.so``, intact); healthy hosts -- no.  A tool is scored on the fleet's hosts
only: found = stale hosts it names, missed = stale hosts it does not, false positives =
healthy or renamed hosts it names.  For inodewatch the event kinds are checked too:
deleted -> ``mapping.deleted``; mv-over -> ``mapping.deleted`` + ``mapping.replaced``.

Full-host scans
---------------
``inodewatch scan --all --json`` -- the console script of a non-editable install in a fresh
venv, ``/srv/inodewatch-fleet/venv`` (``pip install`` of a copy of the checkout), as an
operator runs it; Python's start-up is part of its cost -- against ``lsof -nP``, ``needrestart -b -r l`` and
``checkrestart``, each run as a child with stdout/stderr to a file; ``os.wait4`` gives its
rusage: CPU = utime + stime (children it waited for included, e.g. checkrestart's lsof and
dpkg-query), peak RSS = ru_maxrss (the largest process of that tree).  Wall time from just
before Popen to wait4's return.  Per round and per other tool, a pair "inodewatch, tool" is
run, in alternating order (A B in even rounds, B A in odd ones), so slow drift hits both;
the ratio tool / inodewatch is taken per pair, and the median of those ratios is judged
(the ratio of the medians is printed too).

With ``--baseline REV``, after the rounds, ``--baseline-pairs`` (30) pairs of this code's
``scan --all --json`` and commit REV's (``git archive REV``, installed the same way in
``venv-base``), in alternating order: the median of the per-pair wall ratios says what this
code's additions cost (judged <= 1.10; the CPU ratio is printed too, steadier on a busy
machine), and the two must report the same (pid, event) findings on the fleet.

What each tool says is read from its real output:

* inodewatch: the JSON events (``pid``, ``event``);
* lsof: lines of a fleet pid with FD ``DEL`` or a name ending in ``(deleted)`` under the
  fleet's directory;
* needrestart: as root, ``-b`` prints services (``NEEDRESTART-SVC``), sessions and
  containers -- ``NEEDRESTART-PID`` lines only in user mode -- so the batch output is
  parsed as is (what an operator's automation would see), *and* one extra, untimed
  ``needrestart -v -b -r l`` gives its per-process diagnosis (``#PID uses deleted PATH``,
  ``uses obsolete PATH``) on stderr;
* checkrestart: its default output names programs of packages only; one extra, untimed
  ``checkrestart -v`` lists ``Process PROG (PID: N)`` with its deleted files.

The watch daemon
----------------
``inodewatch --exe /srv/inodewatch-fleet/bin/reload --log-file F`` (the venv's)
(default ``--interval``) attached to all N hosts.  Once every host is attached and the
daemon sleeps in poll, after a 3 s settle:

* idle, ``--idle`` seconds: CPU = utime + stime from /proc/PID/stat, over the window;
  VmRSS sampled each second, VmHWM at the end;
* churn, ``--churn`` seconds: a child creating, writing (64 bytes), closing and unlinking
  ``--tmp-rate`` (10,000) files per second in a directory under /tmp, and a child opening
  and reading (64 KiB) the .so files of /usr/lib/x86_64-linux-gnu, ``--lib-rate`` (2,000)
  per second (both rate-limited in 10 ms slots; achieved rates printed).  Meanwhile 5
  healthy hold hosts, at random moments, get ``rm so.so; cp so2.so so.so``; each must yield
  ``mapping.deleted`` (from the unlink) and ``mapping.replaced`` (from the copy's create);
  latency = the event's own ``timestamp`` - ``time.time()`` just before the operation, as
  in latency.py (the log is read after the window: the stamps are the daemon's).
* latency at scale, ``--reps`` operations: the same ``rm; cp`` on distinct healthy hosts,
  one at a time, each after a random 0-1 s pause, so the operation falls anywhere in the
  daemon's 1 s re-read cycle, as an operator's would (latency.py (b) waits for the daemon
  to sleep in poll first; here whether it did is recorded per operation and printed).

Timestamps are CLOCK_REALTIME on both sides.  Percentiles nearest-rank.

Environment: inodewatch is measured as installed -- a venv made by ``python3 -m venv`` with
the distribution's ``/usr/bin/python3`` (``--python``; this script's own interpreter if there
is none) and ``pip install``, so its ``site`` sees only the venv's packages, not the .pth hooks
of an interpreter's own site-packages (this machine's pyenv Python runs an editable finder and a
sandbox hook importing certifi in every process: ~55 ms).  The start-up target compares
``inodewatch --version`` with the same venv's ``python3 -c pass``.  The checkout itself
(``sys.executable -m inodewatch``) is measured too, as context.  Every command runs with
Python's bytecode cache on (PYTHONDONTWRITEBYTECODE removed, PYTHONPYCACHEPREFIX under the
fleet's directory) and once, untimed, before it is measured.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

from harness import REPO
from harness.daemon import CHECKOUT, Daemon, Event, EventLog, asleep_in_poll, event_time
from harness.demo import CSRC, build_demo, demo_args, rm_cp
from harness.procfs import Meter, cpu_seconds, loadavg_text, status_kb
from harness.procs import (BenchError, Children, die_with_parent, exits,
                           sigterm_as_interrupt, wait_for, wait_until)
from harness.procs import say as say_as
from harness.results import code_version, utc_stamp, write_head
from harness.stats import Summary, fmt_ms, in_turn, percentile
from harness.timed import TIME, Run, timed

ROOT = Path("/srv/inodewatch-fleet")
VENV = ROOT / "venv"
DISTRO_PYTHON = "/usr/bin/python3"
VENV_PYTHON = str(VENV / "bin" / "python3")
INODEWATCH = str(VENV / "bin" / "inodewatch")
BASE_VENV = ROOT / "venv-base"  # --baseline REV: that commit, installed the same way
BASE_INODEWATCH = str(BASE_VENV / "bin" / "inodewatch")
# Every command runs with bytecode caching on, in a private cache: this machine sets
# PYTHONDONTWRITEBYTECODE and the package is an editable checkout without __pycache__, so
# each inodewatch run would otherwise compile its modules again (~15 ms), which an installed
# package never does.  Each command runs once, untimed, before it is measured.
RUN_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
RUN_ENV["PYTHONPYCACHEPREFIX"] = str(ROOT / "pycache")

TARGETS = {
    "needrestart_ratio": 10.0, "checkrestart_ratio": 3.0, "lsof_ratio": 1.0,
    "lsof_ratio_aim": 1.5, "version_ratio": 2.5, "idle_cpu": 0.01, "churn_cpu": 0.05,
    "rss_mb": 60.0, "p99_ms": 20.0, "baseline_ratio": 1.10,
}



# --- small helpers ------------------------------------------------------------------------


def say(msg: str) -> None:
    say_as("fleet", f"{time.strftime('%H:%M:%S')} {msg}")


def measured(args: list[str]) -> Run:
    """One run of `args` as every command of the fleet runs: from ROOT, bytecode cache on."""
    return timed(args, ROOT, RUN_ENV)


def ensure_tools(python: str) -> list[str]:
    """Install lsof / needrestart / checkrestart (and the distribution's venv module, when
    inodewatch is to be installed with its python3) when missing; their versions."""
    want = {"lsof": "lsof", "needrestart": "needrestart", "checkrestart": "debian-goodies",
            TIME: "time"}
    missing = sorted({pkg for cmd, pkg in want.items() if shutil.which(cmd) is None})
    if python == DISTRO_PYTHON and subprocess.run(
            [python, "-c", "import ensurepip, venv"], capture_output=True).returncode != 0:
        missing.append("python3-venv")
    if missing:
        say(f"installing {' '.join(missing)} with apt-get")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    versions = []
    for pkg in ("lsof", "needrestart", "debian-goodies"):
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", pkg],
                             capture_output=True, text=True)
        versions.append(f"{pkg} {out.stdout.strip() or '?'}")
    return versions


HISTORY = "## Profile, fixes, before and after"





# --- the fleet ----------------------------------------------------------------------------


@dataclass
class Host:
    index: int
    dir: Path
    mode: str                      # hold | leak
    kind: str = "healthy"          # healthy | deleted | replaced | renamed
    proc: subprocess.Popen[bytes] | None = None
    ino: int = 0                   # the inode it maps

    @property
    def so(self) -> Path:
        return self.dir / "so.so"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def stale(self) -> bool:
        return self.kind in ("deleted", "replaced")




class Fleet:
    def __init__(self, n: int, divergent: float, interval_ms: int, life_s: float,
                 rng: random.Random, healthy_mode: str = "hold") -> None:
        self.n = n
        self.interval_ms = interval_ms
        self.ticks = max(2, math.ceil(life_s * 1000 / interval_ms))
        self.rng = rng
        self.binary = ROOT / "bin" / "reload"
        width = max(3, len(str(n - 1)))
        n_div = round(n * divergent)
        div = set(rng.sample(range(n), n_div))
        self.hosts = [Host(i, ROOT / f"host{i:0{width}d}", "leak" if i in div else healthy_mode)
                      for i in range(n)]
        # one third each, in a shuffled order
        kinds = ["deleted", "replaced", "renamed"]
        for j, i in enumerate(rng.sample(sorted(div), n_div)):
            self.hosts[i].kind = kinds[j % 3]
        self.children = Children()

    @staticmethod
    def clear_root() -> None:
        if not ROOT.exists():
            return
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.readlink(f"/proc/{entry}/exe").startswith(str(ROOT) + "/"):
                        raise BenchError(f"{ROOT} is in use by pid {entry} (another run?)")
                except OSError:
                    pass
        say(f"removing {ROOT} left by an earlier run")
        shutil.rmtree(ROOT)

    def build(self) -> None:
        self.clear_root()
        (ROOT / "bin").mkdir(parents=True)
        shutil.copy2(CSRC / "reload", self.binary)
        for lib in ("so1.so", "so2.so"):
            shutil.copyfile(CSRC / lib, ROOT / "bin" / lib)
        say(f"starting {self.n} hosts ({sum(h.mode == 'leak' for h in self.hosts)} leak, "
            f"tick {self.interval_ms} ms, --ticks {self.ticks})")
        for h in self.hosts:
            h.dir.mkdir()
            shutil.copyfile(ROOT / "bin" / "so1.so", h.so)
            h.ino = os.stat(h.so).st_ino
            h.proc = self.children.spawn(
                demo_args(h.so, h.mode, self.interval_ms, self.ticks, self.binary),
                signal.SIGKILL, cwd=h.dir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, preexec_fn=die_with_parent)
        wait_for(self.all_mapped, 60 + self.n * 0.05, "every host to map its so.so")
        self.diverge()

    def all_mapped(self) -> bool:
        for h in self.hosts:
            if h.proc is not None and h.proc.poll() is not None:
                raise BenchError(f"host {h.index} exited ({h.proc.returncode})")
            try:
                if f" {h.so}\n".encode() not in Path(f"/proc/{h.pid}/maps").read_bytes():
                    return False
            except OSError:
                return False
        return True

    def diverge(self) -> None:
        """The divergent hosts' operations, once every host maps its so.so."""
        for h in self.hosts:
            if h.kind == "deleted":
                os.unlink(h.so)
            elif h.kind == "replaced":
                new = h.dir / "so.so.new"
                shutil.copyfile(ROOT / "bin" / "so2.so", new)
                os.rename(new, h.so)
            elif h.kind == "renamed":
                os.rename(h.so, h.dir / "old.so")
        counts = Counter(h.kind for h in self.hosts)
        say("fleet ready: " + ", ".join(f"{k} {counts[k]}" for k in
                                        ("healthy", "deleted", "replaced", "renamed")))

    def by_pid(self) -> dict[int, Host]:
        return {h.pid: h for h in self.hosts if h.proc is not None}

    def check_alive(self) -> None:
        dead = [h for h in self.hosts if h.proc is not None and h.proc.poll() is not None]
        if dead:
            raise BenchError(f"{len(dead)} hosts exited, e.g. host {dead[0].index} "
                             f"({dead[0].proc.returncode if dead[0].proc else '?'})")


    def stop(self) -> None:
        self.children.stop_all()


# --- scans --------------------------------------------------------------------------------


def findings_inodewatch(run: Run, fleet: dict[int, Host]) -> dict[int, set[str]]:
    found: dict[int, set[str]] = {}
    for line in run.out.splitlines():
        if not line.strip():
            continue
        e = json.loads(line)
        if e.get("pid") in fleet:
            found.setdefault(e["pid"], set()).add(e["event"])
    return found


def findings_lsof(run: Run, fleet: dict[int, Host]) -> dict[int, set[str]]:
    found: dict[int, set[str]] = {}
    prefix = str(ROOT) + "/"
    for raw in run.out.decode(errors="replace").splitlines():
        f = raw.split()
        if len(f) < 5 or not f[1].isdigit() or int(f[1]) not in fleet:
            continue
        if prefix in raw and (f[3] == "DEL" or raw.endswith("(deleted)")):
            found.setdefault(int(f[1]), set()).add("DEL" if f[3] == "DEL" else "(deleted)")
    return found


NR_DIAG = re.compile(r"#(\d+) uses (deleted|obsolete binary|obsolete|non-existing) (.*)$")


def findings_needrestart_batch(run: Run, fleet: dict[int, Host]) -> tuple[dict[int, set[str]], list[str]]:
    """NEEDRESTART-PID (user mode) names pids; SVC / SESS / CONT lines name no fleet pid."""
    found: dict[int, set[str]] = {}
    lines = []
    for raw in run.out.decode(errors="replace").splitlines():
        if raw.startswith(("NEEDRESTART-PID:", "NEEDRESTART-SVC:", "NEEDRESTART-SESS:",
                           "NEEDRESTART-CONT:")):
            lines.append(raw)
        if raw.startswith("NEEDRESTART-PID:"):
            for pid in re.findall(r"\d+", raw.split("=", 1)[-1]):
                if int(pid) in fleet:
                    found.setdefault(int(pid), set()).add("NEEDRESTART-PID")
    return found, lines


def findings_needrestart_verbose(run: Run, fleet: dict[int, Host]) -> dict[int, set[str]]:
    found: dict[int, set[str]] = {}
    for raw in (run.err + run.out).decode(errors="replace").splitlines():
        m = NR_DIAG.search(raw)
        if m and int(m.group(1)) in fleet:
            found.setdefault(int(m.group(1)), set()).add(f"uses {m.group(2)}")
    return found


def findings_checkrestart_verbose(run: Run, fleet: dict[int, Host]) -> dict[int, set[str]]:
    found: dict[int, set[str]] = {}
    pid = None
    prefix = str(ROOT) + "/"
    for raw in run.out.decode(errors="replace").splitlines():
        m = re.search(r"\(PID: (\d+)\)", raw)
        if m:
            pid = int(m.group(1))
            continue
        if raw.startswith("\t") and pid in fleet and raw.strip().startswith(prefix):
            found.setdefault(pid, set()).add("deleted file in use")
        elif not raw.startswith(("\t", "List of deleted")):
            pid = None
    return found


@dataclass
class Score:
    found: int
    missed: int
    fp_healthy: int
    fp_renamed: int
    kinds: dict[str, Counter[str]] = field(default_factory=dict)

    @property
    def exact(self) -> bool:
        return self.missed == 0 and self.fp_healthy == 0 and self.fp_renamed == 0


def score(found: dict[int, set[str]], fleet: dict[int, Host]) -> Score:
    stale = {p for p, h in fleet.items() if h.stale}
    named = set(found)
    kinds: dict[str, Counter[str]] = {}
    for p, events in found.items():
        kinds.setdefault(fleet[p].kind, Counter())[" + ".join(sorted(events))] += 1
    return Score(len(named & stale), len(stale - named),
                 sum(1 for p in named if fleet[p].kind == "healthy"),
                 sum(1 for p in named if fleet[p].kind == "renamed"), kinds)


def inodewatch_kinds_exact(found: dict[int, set[str]], fleet: dict[int, Host]) -> bool:
    want = {"deleted": {"mapping.deleted"}, "replaced": {"mapping.deleted", "mapping.replaced"}}
    return all(found.get(p) == want[h.kind] for p, h in fleet.items() if h.stale)




# --- daemon -------------------------------------------------------------------------------


@dataclass
class Op:
    host: Host
    t_unlink: float
    t_create: float
    old_ino: int
    new_ino: int
    asleep: bool
    deleted: float = math.inf
    replaced: float = math.inf


def replace(host: Host, daemon_pid: int) -> Op:
    """rm; cp on `host`, noting whether the daemon slept in poll just before."""
    asleep = asleep_in_poll(daemon_pid)
    return Op(host, *rm_cp(host.so, ROOT / "bin" / "so2.so"), asleep)


def match_ops(ops: list[Op], events: list[Event]) -> None:
    for op in ops:
        for e in events:
            if e.get("pid") != op.host.pid:
                continue
            if (e["event"] == "mapping.deleted" and e.get("mapped_ino") == op.old_ino
                    and math.isinf(op.deleted)):
                op.deleted = event_time(e) - op.t_unlink
            elif (e["event"] == "mapping.replaced" and e.get("disk_ino") == op.new_ino
                  and math.isinf(op.replaced)):
                op.replaced = event_time(e) - op.t_create


def wait_ops(log: EventLog, ops: list[Op], since: int, timeout: float,
             check: Callable[[], None]) -> None:
    """Until every operation has both its events, or `timeout`.  `since`: the log's length
    before the operations; each poll matches only the events new since the last (matching
    the whole log every 5 ms, 5,000 target.attached and more, took this process ~40 % of a
    core and put ~1 ms on the daemon's measured p50 at 5,000 hosts)."""
    cursor = since

    def done() -> bool:
        nonlocal cursor
        events = log.read()
        match_ops(ops, events[cursor:])
        cursor = len(events)
        if all(not math.isinf(o.deleted) and not math.isinf(o.replaced) for o in ops):
            return True
        check()
        return False
    wait_until(done, timeout, every=0.005)


def churn_script(kind: str, rate: int, target: str) -> str:
    """A rate-limited churn loop (10 ms slots) that prints what it did at SIGTERM."""
    if kind == "tmp":
        body = (f"d = {target!r}\n"
                "def one(i):\n"
                "    p = d + '/f' + str(i % 1000)\n"
                "    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)\n"
                "    os.write(fd, b'x' * 64)\n"
                "    os.close(fd)\n"
                "    os.unlink(p)\n")
    else:
        body = (f"libs = {target!r}\n"
                "def one(i):\n"
                "    with open(libs[i % len(libs)], 'rb') as f:\n"
                "        f.read(65536)\n")
    return ("import os, signal, sys, time\n" + body +
            "stop = False\n"
            "def on_term(*_):\n"
            "    global stop\n"
            "    stop = True\n"
            "signal.signal(signal.SIGTERM, on_term)\n"
            f"per_slot = max(1, {rate} // 100)\n"
            "t0 = time.monotonic(); n = 0; slot = 0\n"
            "while not stop:\n"
            "    for _ in range(per_slot):\n"
            "        one(n); n += 1\n"
            "    slot += 1\n"
            "    delay = t0 + slot * 0.01 - time.monotonic()\n"
            "    if delay > 0:\n"
            "        time.sleep(delay)\n"
            "dt = time.monotonic() - t0\n"
            "print(n, dt, flush=True)\n")




# --- the scans' records -------------------------------------------------------------------


IW_SCAN = [INODEWATCH, "scan", "--all", "--json"]
BASE_SCAN = [BASE_INODEWATCH, "scan", "--all", "--json"]
# Context, not judged: the same scan from the checkout, with this interpreter's site.
CHECKOUT_SCAN = [*CHECKOUT, "scan", "--all", "--json"]
TOOLS = {"lsof": ["lsof", "-nP"], "needrestart": ["needrestart", "-b", "-r", "l"],
         "checkrestart": ["checkrestart"]}


def med(xs: list[float]) -> float:
    return statistics.median(xs)


class Scans(NamedTuple):
    runs: dict[str, list[Run]]  # per tool (and inodewatch), one per pair
    ratios: dict[str, list[float]]  # tool / inodewatch wall, per pair
    checkout: list[Run]  # the checkout's scan, once a round (context)
    base_pairs: list[tuple[Run, Run]]  # (baseline, this code)
    nprocs: list[int]  # processes on the host before each pair
    nr_v: Run | None  # needrestart -v, untimed
    cr_v: Run | None  # checkrestart -v, untimed


class Findings(NamedTuple):
    per_round: dict[str, list[dict[int, set[str]]]]
    consistent: dict[str, bool]  # the same every round
    scores: dict[str, Score]
    nr_lines: list[str]  # needrestart's batch lines (round 1)


def scan_findings(s: Scans, fleet: dict[int, Host]) -> Findings:
    """What each tool said of the fleet, checked on every round, against the ground truth."""
    assert s.nr_v is not None and s.cr_v is not None
    per_round = {
        "inodewatch": [findings_inodewatch(r, fleet) for r in s.runs["inodewatch"]],
        "lsof": [findings_lsof(r, fleet) for r in s.runs["lsof"]],
        "needrestart": [findings_needrestart_batch(r, fleet)[0] for r in s.runs["needrestart"]],
    }
    found = {
        "inodewatch": per_round["inodewatch"][0],
        "lsof": per_round["lsof"][0],
        "needrestart": per_round["needrestart"][0],
        "needrestart -v": findings_needrestart_verbose(s.nr_v, fleet),
        "checkrestart -v": findings_checkrestart_verbose(s.cr_v, fleet),
    }
    return Findings(per_round, {k: all(v == vs[0] for v in vs) for k, vs in per_round.items()},
                    {k: score(v, fleet) for k, v in found.items()},
                    findings_needrestart_batch(s.runs["needrestart"][0], fleet)[1])


# --- the watch daemon ---------------------------------------------------------------------


ROUTINE = {"daemon.started", "target.attached", "mapping.deleted", "mapping.replaced",
           "mapping.reloaded"}


class Watch:
    """The watch daemon on every host: attach, idle, churn, latency at scale."""

    def __init__(self, bench: Bench, command: str = INODEWATCH, logdir: Path = ROOT / "daemon"
                 ) -> None:
        self.bench = bench
        self.args = bench.args
        self.fleet = bench.fleet
        self.pids = self.fleet.by_pid()
        self.unexpected: Counter[str] = Counter()
        logdir.mkdir()
        self.t0 = time.monotonic()
        self.daemon = Daemon(bench.children, ["--exe", str(self.fleet.binary)],
                             logdir / "events.json", ROOT, err=logdir / "stderr",
                             command=[command], env=RUN_ENV)
        say(f"daemon: {' '.join(self.daemon.args)}")
        self.log = self.daemon.log
        self.dpid = self.daemon.pid

    def check(self) -> None:
        self.daemon.check_alive()
        self.fleet.check_alive()

    def replace(self, host: Host) -> Op:
        return replace(host, self.dpid)

    def attach(self) -> None:
        """Every host attached, the daemon asleep in poll, 3 s settled: what it reported."""
        def attached() -> bool:
            self.check()
            return set(self.pids) <= self.daemon.attached()
        wait_for(attached, 60 + self.fleet.n * 0.2, f"target.attached for all {self.fleet.n}")
        self.bench.versions["the daemon's start"] = code_version()  # it has imported its modules
        self.t_attached = time.monotonic() - self.t0
        wait_for(lambda: (self.check(), asleep_in_poll(self.dpid))[1], 60,
                 "the daemon to sleep in poll")
        time.sleep(3)
        at_attach: dict[int, set[str]] = {}
        for e in self.log.read():
            if e.get("pid") in self.pids and e["event"].startswith("mapping."):
                at_attach.setdefault(e["pid"], set()).add(e["event"])
        self.attach_score = score(at_attach, self.pids)
        self.attach_kinds = inodewatch_kinds_exact(at_attach, self.pids)

    def idle(self) -> None:
        """CPU, max VmRSS (sampled each second) and VmHWM over --idle seconds."""
        say(f"daemon idle {self.args.idle:g} s")
        start = len(self.log.read())
        meter = Meter(self.dpid)
        meter.sleep_until(meter.t0 + self.args.idle, self.check)
        self.idle_cpu, self.idle_rss, self.idle_hwm = meter.cpu(), meter.max_rss_kb, meter.hwm_kb()
        self.idle_events = self.log.read()[start:]
        self.unexpected.update(e["event"] for e in self.idle_events)

    def churn(self) -> None:
        """--churn seconds of /tmp files and library opens, and rm; cp on 5 hosts."""
        a, rng = self.args, self.bench.rng
        healthy = [h for h in self.fleet.hosts if h.kind == "healthy"]
        rng.shuffle(healthy)
        churn_hosts, self.lat_hosts = healthy[:5], healthy[5:5 + a.reps]
        churners = self.start_churners()
        start = len(self.log.read())
        meter = Meter(self.dpid)
        when = sorted(rng.uniform(0.1, 0.9) * a.churn for _ in churn_hosts)
        self.churn_ops = []
        for h, at in zip(churn_hosts, when):
            meter.sleep_until(meter.t0 + at)
            self.churn_ops.append(self.replace(h))
        meter.sleep_until(meter.t0 + a.churn, self.check)
        self.churn_cpu, self.churn_wall = meter.cpu(), meter.wall()
        self.churn_rss, self.churn_hwm = meter.max_rss_kb, meter.hwm_kb()
        self.rates = self.stop_churners(churners)
        wait_ops(self.log, self.churn_ops, start, a.timeout, self.check)
        self.unexpected.update(e["event"] for e in self.log.read()[start:]
                               if e["event"] not in ROUTINE)

    def start_churners(self) -> list[tuple[str, int, subprocess.Popen[bytes]]]:
        a = self.args
        churn_dir = self.bench.churn_dir = Path(tempfile.mkdtemp(prefix="inodewatch-fleet-churn-",
                                                                 dir="/tmp"))
        libdir = Path("/usr/lib/x86_64-linux-gnu")
        libs = sorted(str(p) for p in libdir.glob("*.so*") if p.is_file())[:200]
        libc = next((str(p) for p in libdir.glob("libc.so.6")), None)
        if libc and libc not in libs:
            libs.insert(0, libc)
        churners = []
        for kind, rate, target in (("tmp", a.tmp_rate, str(churn_dir)), ("lib", a.lib_rate, libs)):
            churners.append((kind, rate, self.bench.children.spawn(
                [sys.executable, "-c", churn_script(kind, rate, target)], cwd=ROOT,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)))
        say(f"daemon under churn {a.churn:g} s ({a.tmp_rate}/s files in {churn_dir}, "
            f"{a.lib_rate}/s opens of {len(libs)} libraries; rm+cp on 5 hosts)")
        return churners

    def stop_churners(self, churners: list[tuple[str, int, subprocess.Popen[bytes]]]
                      ) -> list[tuple[str, int, int, float]]:
        """(kind, rate asked, done, seconds) of each churner, stopped."""
        rates = []
        for kind, rate, p in churners:
            p.send_signal(signal.SIGTERM)
            out, _ = p.communicate(timeout=10)
            self.bench.children.forget(p)
            try:
                n, dt = out.split()
                rates.append((kind, rate, int(n), float(dt)))
            except ValueError:
                rates.append((kind, rate, 0, 1.0))
        if self.bench.churn_dir is not None:
            shutil.rmtree(self.bench.churn_dir, ignore_errors=True)
        self.bench.churn_dir = None
        return rates

    def latency(self) -> None:
        """--reps rm; cp on distinct healthy hosts, random 0-1 s apart, one at a time."""
        say(f"latency: {len(self.lat_hosts)} x rm; cp on distinct hosts, daemon watching "
            f"{self.fleet.n}")
        self.lat_ops: list[Op] = []
        for i, h in enumerate(self.lat_hosts):
            time.sleep(self.bench.rng.uniform(0, 1.0))
            since = len(self.log.read())
            op = self.replace(h)
            self.lat_ops.append(op)
            wait_ops(self.log, [op], since, self.args.timeout, self.check)
            if (i + 1) % 25 == 0:
                say(f"  {i + 1}/{len(self.lat_hosts)}")
        self.lat_hwm = status_kb(self.dpid, "VmHWM")
        self.lat_cpu_total = cpu_seconds(self.dpid)

    def stop(self) -> None:
        self.daemon.stop()
        self.unexpected.update(e["event"] for e in self.log.events if e["event"] not in
                               ROUTINE | {"daemon.stopped", "target.exited"})

    # report ---------------------------------------------------------------------------

    def table(self) -> list[str]:
        a, n_stale = self.args, sum(h.stale for h in self.fleet.hosts)
        sc = self.attach_score
        md = [
            "## Watch daemon", "",
            f"`inodewatch {' '.join(self.daemon.args[1:-1])} FILE` (the venv's) "
            f"(default `--interval` 1 s), all {self.fleet.n} hosts attached after "
            f"{self.t_attached:.1f} s.  At attach it reported {sc.found}/{n_stale} stale "
            f"hosts, {sc.fp_healthy + sc.fp_renamed} others, event kinds "
            f"{'exact' if self.attach_kinds else 'NOT exact'} (renamed-away hosts: seen only "
            "under their new name, as by a scan).", "",
            "| phase | seconds | CPU used | % of one core | max VmRSS | VmHWM at end |",
            "| --- | --- | --- | --- | --- | --- |",
            f"| idle | {a.idle:g} | {self.idle_cpu:.2f} s | {self.idle_cpu / a.idle * 100:.2f} % | "
            f"{self.idle_rss / 1024:.1f} MB | {self.idle_hwm / 1024:.1f} MB |",
            f"| churn | {self.churn_wall:.1f} | {self.churn_cpu:.2f} s | "
            f"{self.churn_cpu / self.churn_wall * 100:.2f} % | {self.churn_rss / 1024:.1f} MB | "
            f"{self.churn_hwm / 1024:.1f} MB |",
            "", f"Whole life of the daemon (start, attach, idle, churn, latency): "
            f"{self.lat_cpu_total:.2f} s CPU; VmHWM {self.lat_hwm / 1024:.1f} MB.", "",
            "Churn achieved: " + ", ".join(f"{kind} {n / dt:,.0f}/s (asked {rate:,}/s)"
                                           for kind, rate, n, dt in self.rates) +
            f"; events during idle: {len(self.idle_events)}.", "",
            "### Divergences made during the churn", "",
            "| host | daemon asleep in poll before | unlink -> mapping.deleted | "
            "create -> mapping.replaced |", "| --- | --- | --- | --- |"]
        return md + [f"| {op.host.dir.name} | {'yes' if op.asleep else 'no'} | "
                     f"{fmt_ms(op.deleted)} ms | {fmt_ms(op.replaced)} ms |"
                     for op in self.churn_ops]

    def latency_table(self) -> list[str]:
        md = ["", "### Latency at scale", "",
              f"{len(self.lat_ops)} x `rm so.so; cp so2.so so.so` on distinct healthy hosts, "
              f"one at a time, random 0-1 s apart, while the daemon watches all "
              f"{self.fleet.n}.", "",
              "| measurement | n | min | p50 | p99 | max | missing (> "
              f"{self.args.timeout:g} s) |", "| --- | --- | --- | --- | --- | --- | --- |"]

        def row(label: str, vals: list[float]) -> str:
            s = Summary.of(vals)
            return (f"| {label} | {s.n} | {fmt_ms(s.min)} ms | {fmt_ms(s.p50)} ms | "
                    f"{fmt_ms(s.p99)} ms | {fmt_ms(s.max)} ms | {s.missing} |")
        for label, vals in (("unlink -> mapping.deleted", [o.deleted for o in self.lat_ops]),
                            ("create -> mapping.replaced", [o.replaced for o in self.lat_ops])):
            if vals:
                md.append(row(label, vals))
        for asleep in (True, False):
            vals = [o.deleted for o in self.lat_ops if o.asleep == asleep]
            if vals:
                md.append(row(f"of which daemon {'asleep in poll' if asleep else 'busy'} before "
                              "the unlink: deleted", vals))
        return md + [""]

    def notes(self) -> list[str]:
        notes = []
        if stderr_text := self.daemon.stderr().strip():
            notes.append(f"daemon stderr: {stderr_text[:300]!r}")
        if self.unexpected:
            notes.append("daemon events beyond attach / the operations / reloads: " +
                         ", ".join(f"{k} x{n}" for k, n in self.unexpected.most_common()))
        for e in self.log.events:
            if e["event"] in ("watch.degraded", "watch.overflow"):
                notes.append(f"daemon {e['event']} at {e['timestamp']}: {e.get('detail', '')}")
        for op in self.churn_ops + self.lat_ops:
            if math.isinf(op.deleted) or math.isinf(op.replaced):
                after = [f"{e['event']}" + (f" (+{(event_time(e) - op.t_unlink) * 1000:.0f} ms)")
                         for e in self.log.events if e.get("pid") == op.host.pid
                         and event_time(e) >= op.t_unlink - 0.001]
                notes.append(
                    f"{op.host.dir.name} (pid {op.host.pid}): an event never came for rm; cp "
                    f"(daemon {'asleep' if op.asleep else 'busy'} before it); its events from "
                    f"then on: {', '.join(after) or 'none'}.  A hold host reloads the new file "
                    "at its next tick: if that comes before the daemon looks, there is no "
                    "divergence left to see")
        return notes

    def verdicts(self) -> list[tuple[bool, str]]:
        a, n = self.args, self.fleet.n
        idle, churn = self.idle_cpu / a.idle, self.churn_cpu / self.churn_wall
        hwm_mb = max(self.idle_hwm, self.churn_hwm, self.lat_hwm) / 1024
        churn_lat = [v for o in self.churn_ops for v in (o.deleted, o.replaced)]
        worst = max(churn_lat) if churn_lat else math.inf
        lat_all = [o.deleted for o in self.lat_ops] + [o.replaced for o in self.lat_ops]
        p99 = percentile(lat_all, 99) if lat_all else math.inf
        return [
            (idle <= TARGETS["idle_cpu"], f"daemon idle, {n} hosts: {idle * 100:.2f} % of one "
             f"core over {a.idle:g} s; target <= {TARGETS['idle_cpu'] * 100:g} %"),
            (churn <= TARGETS["churn_cpu"], f"daemon under churn: {churn * 100:.2f} % of one core "
             f"over {self.churn_wall:.0f} s; target <= {TARGETS['churn_cpu'] * 100:g} %"),
            (hwm_mb <= TARGETS["rss_mb"],
             f"daemon RSS: VmHWM {hwm_mb:.1f} MB; target <= {TARGETS['rss_mb']:g} MB"),
            (bool(churn_lat) and worst <= TARGETS["p99_ms"] / 1000,
             f"divergences during churn: {sum(math.isinf(v) for v in churn_lat)} of "
             f"{len(churn_lat)} events missed, slowest {fmt_ms(worst)} ms; target none "
             f"missed, each <= {TARGETS['p99_ms']:g} ms"),
            (p99 <= TARGETS["p99_ms"] / 1000,
             f"detection at scale: p99 {fmt_ms(p99)} ms over {len(lat_all)} events "
             f"(deleted + replaced); target <= {TARGETS['p99_ms']:g} ms"),
        ]


# --- the benchmark ------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.children = Children()
        life = 3600 + args.idle + args.churn + args.rounds * 120
        self.fleet = Fleet(args.hosts, args.divergent, args.interval_ms, life, self.rng,
                           args.healthy_mode)
        self.churn_dir: Path | None = None
        self.md: list[str] = []
        self.verdicts: list[str] = []
        self.notes: list[str] = []

    def verdict(self, ok: bool, text: str) -> None:
        self.verdicts.append(f"{'PASS' if ok else 'MISS'} {text}")

    # install ----------------------------------------------------------------------------

    def install(self) -> None:
        """inodewatch as an operator has it: a non-editable install in a fresh venv (and
        the --baseline commit beside it, the same way)."""
        say(f"installing inodewatch into {VENV} (venv + pip install of a copy of the checkout)")
        self.install_tree(REPO, ROOT / "src", VENV)
        if self.args.baseline:
            say(f"installing {self.args.baseline} into {BASE_VENV} (git archive + pip install)")
            base = ROOT / "src-base"
            base.mkdir()
            archive = subprocess.run(["git", "-C", str(REPO), "archive", self.args.baseline],
                                     capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
            self.install_into(base, BASE_VENV)

    def install_tree(self, tree: Path, src: Path, venv: Path) -> None:
        """A copy of checkout `tree` at `src`, installed into `venv`: pip's in-tree build
        would write build/ and *.egg-info into the checkout, and a stale build/ there could
        be packaged."""
        shutil.copytree(tree, src, ignore=shutil.ignore_patterns(
            ".git", "build", "*.egg-info", "__pycache__", ".venv*", ".hypothesis",
            ".pytest_cache", "benchmarks", "tests", "csrc"))
        self.install_into(src, venv)

    def install_into(self, src: Path, venv: Path) -> None:
        for cmd in ([self.args.python, "-m", "venv", str(venv)],
                    [str(venv / "bin" / "python3"), "-m", "pip", "install", "--quiet",
                     "--disable-pip-version-check", str(src)]):
            done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
                raise BenchError(f"{' '.join(cmd[:4])} ... failed: {last}")

    # startup ----------------------------------------------------------------------------


    def startup(self) -> None:
        reps = self.args.startup_reps
        say(f"start-up: {reps} x python -c pass / inodewatch --version, alternating")
        cmds = {"bare": [VENV_PYTHON, "-c", "pass"], "ver": [INODEWATCH, "--version"],
                "checkout-bare": [sys.executable, "-c", "pass"],
                "checkout-ver": [*CHECKOUT, "--version"],
                "nosite": [sys.executable, "-S", "-c", "pass"]}
        walls: dict[str, list[float]] = {name: [] for name in cmds}
        for cmd in cmds.values():
            measured(cmd)
        for i in range(reps):
            pair = ["bare", "ver"]
            for name in (pair if i % 2 == 0 else pair[::-1]) + ["checkout-bare", "checkout-ver",
                                                                "nosite"]:
                walls[name].append(measured(cmds[name]).wall)
        mb, mv = statistics.median(walls["bare"]), statistics.median(walls["ver"])
        ratio = mv / mb

        def row(label: str, name: str) -> str:
            w = walls[name]
            return (f"| {label} | {statistics.median(w) * 1000:.1f} ms | {min(w) * 1000:.1f} ms | "
                    f"{max(w) * 1000:.1f} ms |")
        self.md += [
            "## Start-up", "",
            f"{reps} runs each (the first two alternating); wall time, median (min - max).", "",
            "| command | median | min | max |", "| --- | --- | --- | --- |",
            row("venv: `python3 -c pass`", "bare"),
            row("venv: `inodewatch --version`", "ver"),
            row("context, this interpreter: `python3 -c pass`", "checkout-bare"),
            row("context, the checkout: `python3 -m inodewatch --version`", "checkout-ver"),
            row("context, this interpreter: `python3 -S -c pass` (no `site`)", "nosite"),
            "", f"ratio {ratio:.2f} (venv).  The context rows show this machine's interpreter: "
            "its `site` runs the editable install's finder (`__editable__.inodewatch` .pth) "
            "and a sandbox hook that imports certifi (`_sandboxing_egress_ca.pth`) in every "
            "process; a venv does not see them.", ""]
        self.verdict(ratio <= TARGETS["version_ratio"],
                     f"inodewatch --version {mv * 1000:.1f} ms = {ratio:.2f}x python3 -c pass "
                     f"({mb * 1000:.1f} ms), both the venv's; target <= {TARGETS['version_ratio']}x")

    # scans ------------------------------------------------------------------------------


    # scans ------------------------------------------------------------------------------

    def scans(self) -> None:
        fleet = self.fleet.by_pid()
        s = self.measure_scans()
        f = scan_findings(s, fleet)
        self.scan_table(s)
        self.findings_table(s, f)
        if s.base_pairs:
            self.baseline_section(s.base_pairs, fleet)
        self.scan_verdicts(s, f, fleet)

    def measure_scans(self) -> Scans:
        """--rounds rounds of one (inodewatch, tool) pair per tool, in alternating order;
        the checkout's scan as context; the --baseline pairs; the untimed verbose runs."""
        s = Scans({"inodewatch": [], **{t: [] for t in TOOLS}}, {t: [] for t in TOOLS},
                  [], [], [], None, None)
        say("warm-up: each command once, untimed (page cache, bytecode cache)")
        for cmd in [IW_SCAN, *TOOLS.values(), *([BASE_SCAN] if self.args.baseline else [])]:
            measured(cmd)
        measured(CHECKOUT_SCAN)
        for rnd in range(self.args.rounds):
            say(f"scan round {rnd + 1}/{self.args.rounds}")
            for tool, cmd in TOOLS.items():
                self.fleet.check_alive()
                s.nprocs.append(sum(1 for e in os.listdir("/proc") if e.isdigit()))
                got = {}
                for name, c in in_turn([("inodewatch", IW_SCAN), (tool, cmd)], rnd):
                    got[name] = measured(c)
                    s.runs[name].append(got[name])
                s.ratios[tool].append(got[tool].wall / got["inodewatch"].wall)
            s.checkout.append(measured(CHECKOUT_SCAN))
        if self.args.baseline:  # this code against the --baseline commit, pair after pair
            say(f"{self.args.baseline_pairs} pairs: scan --all of this code and of {self.args.baseline}")
            for i in range(self.args.baseline_pairs):
                got = {name: measured(c) for name, c in
                       in_turn([("inodewatch", IW_SCAN), ("baseline", BASE_SCAN)], i)}
                s.base_pairs.append((got["baseline"], got["inodewatch"]))
        say("untimed verbose runs of needrestart and checkrestart (their per-process output)")
        return s._replace(nr_v=measured(["needrestart", "-v", "-b", "-r", "l"]),
                          cr_v=measured(["checkrestart", "-v"]))

    def scan_table(self, s: Scans) -> None:
        iw_summary = s.runs["inodewatch"][0].err.decode(errors="replace").strip().splitlines()
        self.md += [
            "## Full-host scan", "",
            f"{self.args.rounds} rounds; per round one pair (inodewatch, tool) per tool, in "
            "alternating order (A B, then B A).  Processes on the host during the scans: "
            f"{min(s.nprocs)}-{max(s.nprocs)} (the fleet's {self.fleet.n} included).  "
            f"inodewatch's own summary (round 1): `{iw_summary[-1] if iw_summary else '?'}`.", "",
            "| tool | command | wall median | wall min - max | CPU median | peak RSS median "
            "| tool / inodewatch wall (median of pairs) | ratio of medians |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        iw_wall = med([r.wall for r in s.runs["inodewatch"]])
        for name in ["inodewatch", *TOOLS]:
            rs = s.runs[name]
            cmd = "`inodewatch scan --all --json` (venv)" if name == "inodewatch" else \
                f"`{' '.join(TOOLS[name])}`"
            walls = [r.wall for r in rs]
            ratio = "-" if name == "inodewatch" else f"{med(s.ratios[name]):.2f}x " \
                f"({min(s.ratios[name]):.2f}-{max(s.ratios[name]):.2f})"
            rom = "-" if name == "inodewatch" else f"{med(walls) / iw_wall:.2f}x"
            self.md.append(
                f"| {name} | {cmd} | {med(walls) * 1000:.0f} ms | {min(walls) * 1000:.0f} - "
                f"{max(walls) * 1000:.0f} ms | {med([r.cpu for r in rs]) * 1000:.0f} ms | "
                f"{med([r.maxrss_kb for r in rs]) / 1024:.1f} MB | {ratio} | {rom} |")
        co_walls = [r.wall for r in s.checkout]
        self.md.append(
            f"| context: the checkout | `python3 -m inodewatch scan --all --json` "
            f"(this interpreter, its site) | {med(co_walls) * 1000:.0f} ms | "
            f"{min(co_walls) * 1000:.0f} - {max(co_walls) * 1000:.0f} ms | "
            f"{med([r.cpu for r in s.checkout]) * 1000:.0f} ms | "
            f"{med([r.maxrss_kb for r in s.checkout]) / 1024:.1f} MB | (not paired) | lsof / this: "
            f"{med([r.wall for r in s.runs['lsof']]) / med(co_walls):.2f}x |")
        assert s.nr_v is not None and s.cr_v is not None
        self.md += [
            "", f"(inodewatch ran {len(s.runs['inodewatch'])} times, once per pair.  Untimed "
            f"extra runs for the per-process output: `needrestart -v -b -r l` {s.nr_v.wall * 1000:.0f} "
            f"ms, `checkrestart -v` {s.cr_v.wall * 1000:.0f} ms.)", ""]

    def findings_table(self, s: Scans, f: Findings) -> None:
        n_stale = sum(h.stale for h in self.fleet.hosts)
        n_ren = sum(h.kind == "renamed" for h in self.fleet.hosts)
        self.md += [
            "### Findings against the ground truth", "",
            f"Fleet: {self.fleet.n} hosts; stale (deleted + mv-over) {n_stale}, renamed "
            f"{n_ren} (not stale), healthy {self.fleet.n - n_stale - n_ren}.", "",
            "| tool (output read) | stale found | missed | false positives: healthy | "
            "renamed hosts named | what it said, per host kind | same every round |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
        for name, sc in f.scores.items():
            said = "; ".join(f"{kind}: {', '.join(f'{k} x{n}' for k, n in c.most_common())}"
                             for kind, c in sorted(sc.kinds.items())) or "nothing about the fleet"
            same_s = "(one run)" if name.endswith("-v") else \
                ("yes" if f.consistent[name] else "NO")
            self.md.append(f"| {name} | {sc.found}/{n_stale} | {sc.missed} | {sc.fp_healthy} | "
                           f"{sc.fp_renamed}/{n_ren} | {said} | {same_s} |")
        cr_summary = [ln for ln in s.runs["checkrestart"][0].out.decode(errors="replace")
                      .splitlines() if ln.startswith(("Found", "("))]
        self.md += [
            "", f"needrestart's batch lines naming services/sessions/pids (round 1): "
            f"{'; '.join(f'`{ln}`' for ln in f.nr_lines) or 'none'}.  As root it reports "
            "services (systemd units, init scripts), sessions and containers; a process that "
            "is none of these is only in its `-v` diagnostics.",
            f"checkrestart's default output (round 1): {'; '.join(f'`{ln}`' for ln in cr_summary)}.",
            ""]

    def scan_verdicts(self, s: Scans, f: Findings, fleet: dict[int, Host]) -> None:
        iw_wall = med([r.wall for r in s.runs["inodewatch"]])
        for tool, key in (("needrestart", "needrestart_ratio"),
                          ("checkrestart", "checkrestart_ratio"), ("lsof", "lsof_ratio")):
            r = med(s.ratios[tool])
            aim = (f"; aim {TARGETS['lsof_ratio_aim']}x "
                   f"{'met' if r >= TARGETS['lsof_ratio_aim'] else 'not met'}"
                   if tool == "lsof" else "")
            self.verdict(r >= TARGETS[key],
                         f"scan --all vs {' '.join(TOOLS[tool])}: {tool} / inodewatch wall "
                         f"{r:.2f}x (median of {len(s.ratios[tool])} pairs; inodewatch median "
                         f"{iw_wall * 1000:.0f} ms); target >= {TARGETS[key]}x{aim}")
        n_stale = sum(h.stale for h in self.fleet.hosts)
        sc = f.scores["inodewatch"]
        kinds_ok = all(inodewatch_kinds_exact(x, fleet) for x in f.per_round["inodewatch"])
        ok = sc.exact and kinds_ok and f.consistent["inodewatch"]
        self.verdict(ok, f"scan --all finds exactly the ground truth: {sc.found}/{n_stale} stale "
                     f"found, {sc.missed} missed, {sc.fp_healthy + sc.fp_renamed} false "
                     f"positives, event kinds {'exact' if kinds_ok else 'WRONG'}, "
                     f"{'same' if f.consistent['inodewatch'] else 'DIFFERENT'} in every round")

    # daemon -----------------------------------------------------------------------------

    def baseline_section(self, pairs: list[tuple[Run, Run]], fleet: dict[int, Host]) -> None:
        """This code's `scan --all` against the --baseline commit's, paired per round in
        alternating order: what this code's additions cost (e.g. the content identity of
        the findings, which reads only the files of findings)."""
        rev = self.args.baseline
        ratios = [new.wall / base.wall for base, new in pairs]
        cpu_ratios = [new.cpu / base.cpu for base, new in pairs]
        walls = {"baseline": [b.wall for b, _ in pairs], "this code": [n.wall for _, n in pairs]}
        cpus = {"baseline": [b.cpu for b, _ in pairs], "this code": [n.cpu for _, n in pairs]}
        same = all(findings_inodewatch(b, fleet) == findings_inodewatch(n, fleet) for b, n in pairs)
        judged = [json.loads(x) for x in pairs[0][1].out.splitlines() if x.strip()]
        contents = Counter(e.get("content", "-") for e in judged if e.get("pid") in fleet)
        r = statistics.median(ratios)
        self.md += [
            f"### `scan --all` against {rev}", "",
            f"{len(pairs)} pairs (this code, {rev}), alternating A B / B A, both installed "
            "the same way (venv, pip install), on the same fleet.", "",
            "| code | wall median | wall min - max | CPU median |", "| --- | --- | --- | --- |",
            *[f"| {name} | {statistics.median(w) * 1000:.1f} ms | {min(w) * 1000:.1f} - "
              f"{max(w) * 1000:.1f} ms | {statistics.median(cpus[name]) * 1000:.1f} ms |"
              for name, w in walls.items()],
            "", f"this code / {rev}, wall, median of pairs: {r:.3f} ({min(ratios):.3f} - "
            f"{max(ratios):.3f}); CPU, median of pairs: {statistics.median(cpu_ratios):.3f} "
            f"({min(cpu_ratios):.3f} - {max(cpu_ratios):.3f}); the fleet's findings (pid, event) {'the same' if same else 'DIFFER'} "
            f"in every pair; `content` of this code's fleet findings (round 1): "
            + ", ".join(f"{k} x{n}" for k, n in contents.most_common()) + ".", ""]
        self.verdict(r <= TARGETS["baseline_ratio"] and same,
                     f"scan --all vs {rev}: {r:.3f}x its wall, {statistics.median(cpu_ratios):.3f}x "
                     f"its CPU (medians of {len(pairs)} pairs), "
                     f"same findings: {'yes' if same else 'NO'}; target <= "
                     f"{TARGETS['baseline_ratio']:.2f}x")


    def daemon(self) -> None:
        watch = Watch(self)
        watch.attach()
        watch.idle()
        watch.churn()
        watch.latency()
        watch.stop()
        self.md += watch.table() + watch.latency_table()
        self.notes += watch.notes()
        for ok, text in watch.verdicts():
            self.verdict(ok, text)

    # the whole run ------------------------------------------------------------------------

    def header(self, versions: list[str]) -> list[str]:
        mem = next(ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines()
                   if ln.startswith("MemTotal:"))
        cpu = next((ln.split(":", 1)[1].strip() for ln in
                    Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), "?")
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's, installed or not
        from inodewatch import __version__
        version = subprocess.run([self.args.python, "-c", "import platform; "
                                  "print(platform.python_version())"],
                                 capture_output=True, text=True).stdout.strip()
        self.venv_python = f"Python {version} ({self.args.python})"
        return [
            "# inodewatch fleet benchmark", "",
            f"- date: {utc_stamp()}",
            f"- command: `python3 benchmarks/fleet.py {shlex.join(sys.argv[1:])}`".replace(
                "fleet.py `", "fleet.py`"),
            f"- machine: `{' '.join(platform.uname())}`; {os.cpu_count()} CPUs ({cpu}); "
            f"{int(mem) / 1024 / 1024:.1f} GiB RAM; load average at start "
            f"{loadavg_text()}",
            f"- code: {self.version_at_start}",
            f"- software: inodewatch {__version__} installed in {VENV} with {self.venv_python}; "
            f"this script and the context rows: Python {platform.python_version()} "
            f"({sys.executable}); {', '.join(versions)}",
            f"- fleet: {self.args.hosts} hosts under {ROOT}, hold tick "
            f"{self.args.interval_ms} ms, {self.args.divergent * 100:g} % divergent (leak "
            f"mode), seed {self.args.seed}; `ulimit -n` "
            f"{__import__('resource').getrlimit(__import__('resource').RLIMIT_NOFILE)[0]}, "
            f"pid_max {Path('/proc/sys/kernel/pid_max').read_text().strip()}",
            "", "Method and ground truth: see the docstring of `benchmarks/fleet.py` and "
            "`benchmarks/README.md`.", ""]


    def run(self) -> None:
        a = self.args
        versions = ensure_tools(a.python)
        self.version_at_start = code_version()
        build_demo()
        head = self.header(versions)
        self.fleet.build()
        self.install()
        if a.setup_only:
            print(f"fleet up: {ROOT}; binary {self.fleet.binary}")
            for h in self.fleet.hosts:
                print(f"{h.pid} {h.kind} {h.mode} {h.dir}")
            print("Ctrl-C (or SIGTERM) to stop and clean up", flush=True)
            while True:
                time.sleep(3600)
        self.startup()
        self.scans()
        self.versions = {"the scans": code_version()}
        self.daemon()
        load = loadavg_text()
        self.note_code_changes()
        text = head + self.md
        if self.notes:
            text += ["## Notes", ""] + [f"- {n}" for n in self.notes] + [""]
        text += [f"Load average at the end: {load}.", "", "## Targets", "", "```",
                 *self.verdicts, "```", ""]
        out = "\n".join(text)
        print(out)
        write_head(Path(a.results), out, HISTORY)
        say(f"wrote {a.results}")

    def note_code_changes(self) -> None:
        """inodewatch/ changed during the run (the figures mix versions) or after the daemon
        had started (they are all of the header's version)."""
        changed = [phase for phase, v in self.versions.items()
                   if v.digest != self.version_at_start.digest]
        now = code_version()
        if changed:
            self.notes.insert(0, f"inodewatch/ CHANGED during the run, before the end of "
                                 f"{changed[0]}: the figures mix versions; run again")
        elif now.digest != self.version_at_start.digest:
            self.notes.insert(0, "inodewatch/ changed after the daemon had started (now "
                                 f"{now}); every figure above is from the code "
                                 "named in the header (the daemon imports its modules at start)")

    def cleanup(self) -> None:
        self.fleet.stop()
        self.children.stop_all()
        if self.churn_dir is not None:
            shutil.rmtree(self.churn_dir, ignore_errors=True)
        if ROOT.exists():
            shutil.rmtree(ROOT, ignore_errors=True)


def sizes(text: str) -> list[int]:
    """--hosts: one N, or several (500,1500,5000) for a sweep (fleetsweep.py)."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or a list of numbers: {text!r}") from None
    if not values or min(values) < 10:
        raise argparse.ArgumentTypeError("--hosts: each N >= 10")
    return values


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hosts", type=sizes, default=[500],
                   help="plugin hosts (default 500); several, e.g. 500,1500,5000: a sweep "
                        "(fleetsweep.py: the daemon's and the scan's cost against N)")
    p.add_argument("--rounds", type=int, default=None,
                   help="scan rounds (default 9: on a noisy machine, 5 pairs left a ratio to "
                        "chance; a sweep: 5)")
    p.add_argument("--idle", type=float, default=None, help="idle window, s (default 60; a sweep: 30)")
    p.add_argument("--churn", type=float, default=None,
                   help="churn window, s (default 60; a sweep: 30 s of execs)")
    p.add_argument("--reps", type=int, default=None,
                   help="rm; cp operations for latency at scale (default 100; a sweep: 20)")
    p.add_argument("--first", type=float, default=None,
                   help="a sweep: the window right after attach, s (default 30)")
    p.add_argument("--exec-rate", type=int, default=1000,
                   help="a sweep: /bin/true spawned a second during the churn (default 1000)")
    p.add_argument("--quick", action="store_true",
                   help="a sweep: a fast check (2 rounds, 5 s windows, 5 rm+cp)")
    p.add_argument("--divergent", type=float, default=0.10,
                   help="fraction of hosts made divergent (default 0.10)")
    p.add_argument("--interval-ms", type=int, default=5000, help="hold hosts' tick (default 5000)")
    p.add_argument("--healthy-mode", choices=("hold", "leak"), default="hold",
                   help="the mode of the hosts not made divergent (default hold; a sweep: "
                        "leak, tick 60 s)")
    p.add_argument("--tmp-rate", type=int, default=10000, help="/tmp files per s (default 10000)")
    p.add_argument("--lib-rate", type=int, default=2000, help="library opens per s (default 2000)")
    p.add_argument("--startup-reps", type=int, default=20, help="start-up runs each (default 20)")
    p.add_argument("--timeout", type=float, default=10.0, help="s to wait for one event")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--results", default=str(Path(__file__).resolve().parent / "RESULTS.md"),
                   help="where to write the results (default benchmarks/RESULTS.md)")
    p.add_argument("--python", default=DISTRO_PYTHON if os.path.exists(DISTRO_PYTHON)
                   else sys.executable,
                   help="interpreter of the venv inodewatch is installed into (default: the "
                        "distribution's /usr/bin/python3, as an operator has it; else this one)")
    p.add_argument("--baseline", metavar="REV",
                   help="also pair this code's scan --all with commit REV's (git archive, "
                        "installed the same way), after the scan rounds; judged <= 1.10x")
    p.add_argument("--baseline-pairs", type=int, default=30,
                   help="pairs of scans against --baseline, alternating (default 30)")
    p.add_argument("--setup-only", action="store_true",
                   help="build the fleet, print its pids and wait for Ctrl-C (for profiling)")
    p.add_argument("--peers", metavar="TREE,TREE",
                   help="only the daemon's idle and churn, of each checkout TREE in turn, on "
                        "one fleet (fleetpeers.py)")
    a = p.parse_args()
    if a.rounds is not None and a.rounds < 1 or any(
            v is not None and v <= 0 for v in (a.idle, a.churn, a.first)):
        p.error("--rounds >= 1; --idle, --churn and --first > 0")
    if os.geteuid() != 0:
        p.error("run as root (apt-get, /srv, other processes' /proc)")
    sigterm_as_interrupt()
    if a.peers:
        import fleetpeers
        with exits("fleet", f"interrupted; stopping every process started and removing {ROOT}"):
            fleetpeers.main(a)
        return 0
    if len(a.hosts) > 1 or a.quick:
        import fleetsweep
        a.sizes = a.hosts
        with exits("fleet", f"interrupted; stopping every process started and removing {ROOT}"):
            fleetsweep.main(a)
        return 0
    a.hosts = a.hosts[0]
    for key, value in (("rounds", 9), ("idle", 60.0), ("churn", 60.0), ("reps", 100)):
        if getattr(a, key) is None:
            setattr(a, key, value)
    if a.reps + 5 > a.hosts - round(a.hosts * a.divergent):
        a.reps = a.hosts - round(a.hosts * a.divergent) - 5
        say(f"--reps lowered to {a.reps} (distinct healthy hosts)")

    bench = Bench(a)
    try:
        with exits("fleet", f"interrupted; stopping every process started and removing {ROOT}"):
            bench.run()
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        bench.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

