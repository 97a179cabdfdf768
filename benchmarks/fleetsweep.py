"""The fleet at several sizes in one run (``fleet.py --hosts 500,1500,5000``): what the watch
daemon and ``scan --all`` cost against N, written to RESULTS.md and drawn as a PNG.

Per N, on a fresh fleet of ``fleet.Fleet`` (every host ``--mode leak`` with a 60 s tick, so
the hosts themselves are quiet; 10 % divergent as in fleet.py: deleted, mv-over, renamed):

* the scans, ``--rounds`` rounds, the order A B C then C B A: ``inodewatch scan --all
  --json`` (the venv's), ``lsof -nP`` and the floor, ``sh -c 'cat /proc/[0-9]*/maps'`` to
  /dev/null (the kernel's cost of writing the text every scan has to read); medians of the
  per-round ratios, and inodewatch's findings scored against the ground truth every round;
* the daemon, ``inodewatch --exe FLEET/bin/reload`` (the venv's): attach = the daemon's own
  stamps, its last ``target.attached`` of a fleet host minus ``daemon.started``; CPU (utime +
  stime) over the first ``--first`` s after the benchmark saw the last attach, then ``--idle``
  s of steady state, then ``--churn`` s while a child spawns ``/bin/true``
  ``--exec-rate`` times a second (posix_spawn, 10 ms slots; the achieved rate is shown);
  VmHWM; ``--reps`` ``rm so.so; cp so2.so so.so`` on distinct healthy hosts, one at a time
  after a random 0-1 s pause, unlink -> ``mapping.deleted`` and create ->
  ``mapping.replaced`` from the events' own stamps; and the mass exit: SIGKILL to every host
  at once, the last ``target.exited`` stamp minus the time before the first kill.

The figures go to the section "## Sweep" of RESULTS.md (``--results``) and the picture to
``fleet-sweep.png`` beside it, drawn by ``sweepplot.py`` with the benchmarks' own venv
(``python3 -m venv benchmarks/.venv && benchmarks/.venv/bin/pip install matplotlib``; never a
dependency of inodewatch).  ``--quick`` is a fast check of the whole path (fewer rounds,
shorter windows).  The machine limits a sweep needs are checked before anything starts.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

from harness.daemon import Daemon, event_time
from harness.procfs import Meter, loadavg_text, status_kb
from harness.procs import BenchError, wait_for
from harness.results import code_version, utc_stamp, write_section
from harness.stats import Summary, in_turn
from harness.timed import Run, timed

import fleet
from fleet import INODEWATCH, IW_SCAN, ROOT, RUN_ENV, Bench, Op, measured, say

SECTION = "## Sweep: the daemon and the scan against N"
FLOOR = ["sh", "-c", "cat /proc/[0-9]*/maps"]
LSOF = ["lsof", "-nP"]
PLOTTER = Path(__file__).resolve().parent / "sweepplot.py"
PLOT_VENV = Path(__file__).resolve().parent / ".venv"
TARGETS = {"attach_s": 5.0, "idle_cpu": 0.01, "exec_cpu": 0.05, "hwm_mb": 100.0,
           "p99_ms": 5.0, "drain_s": 10.0, "floor_ratio": 1.5, "lsof_ratio": 3.0}


class Point(NamedTuple):
    """The figures at one N."""
    n: int
    procs: int  # processes on the host during the scans
    scan_ms: float  # medians
    lsof_ms: float
    floor_ms: float
    lsof_ratio: float  # lsof / inodewatch, median of rounds
    floor_ratio: float  # inodewatch / floor, median of rounds
    exact: bool  # every round: every stale host found, nothing else
    attach_s: float
    first_cpu: float  # share of one core
    idle_cpu: float
    exec_cpu: float
    exec_rate: float  # achieved
    hwm_mb: float
    lat_p50_ms: float
    lat_p99_ms: float
    lat_missing: int
    drain_s: float
    exited: int  # target.exited logged after the kill


def check_limits(n: int, exec_rate: int) -> None:
    """The machine limits N hosts need, each with one clear line (BenchError) if short."""
    need_pids = n + 4 * exec_rate // 100 + 2000
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    if pid_max < need_pids:
        raise BenchError(f"kernel.pid_max is {pid_max}: {n} hosts and the exec churn need "
                         f"{need_pids}; sysctl -w kernel.pid_max={max(need_pids, 65536)}")
    threads = int(Path("/proc/sys/kernel/threads-max").read_text())
    if threads < 2 * need_pids:
        raise BenchError(f"kernel.threads-max is {threads}: {n} hosts need {2 * need_pids}; "
                         f"sysctl -w kernel.threads-max={2 * need_pids}")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < n + 1000:
        raise BenchError(f"ulimit -Hn is {hard}: the daemon holds one fd (a pidfd) per host "
                         f"and needs {n + 1000}; ulimit -n {n + 1000} (as root) first")
    watches = int(Path("/proc/sys/fs/inotify/max_user_watches").read_text())
    if watches < 8 * n:  # the daemon uses half, ~2 a host (its so.so and its directory)
        raise BenchError(f"fs.inotify.max_user_watches is {watches}: {n} hosts need "
                         f"{8 * n}; sysctl -w fs.inotify.max_user_watches={8 * n}")
    instances = int(Path("/proc/sys/fs/inotify/max_user_instances").read_text())
    if instances < 8:
        raise BenchError(f"fs.inotify.max_user_instances is {instances}: the daemon and the "
                         "rest of root's processes need a few; sysctl -w "
                         "fs.inotify.max_user_instances=128")


EXEC_CHURN = """\
import os, signal, time
rate = int(os.environ["RATE"])
stop = False
def on_term(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)
def reap(flags):
    while True:
        try:
            pid, _ = os.waitpid(-1, flags)
        except ChildProcessError:
            return
        if pid == 0:
            return
per_slot = max(1, rate // 100)
t0 = time.monotonic(); n = 0; slot = 0
while not stop:
    for _ in range(per_slot):
        os.posix_spawn("/bin/true", ["true"], {})
        n += 1
    reap(os.WNOHANG)
    slot += 1
    delay = t0 + slot * 0.01 - time.monotonic()
    if delay > 0:
        time.sleep(delay)
dt = time.monotonic() - t0
reap(0)
print(n, dt, flush=True)
"""


class SweepWatch:
    """The daemon on one fleet: attach, first window, steady, exec churn, latency, mass exit."""

    def __init__(self, bench: Bench, args: argparse.Namespace) -> None:
        self.bench, self.args, self.fleet = bench, args, bench.fleet
        self.pids = self.fleet.by_pid()
        logdir = ROOT / "daemon"
        logdir.mkdir()
        self.daemon = Daemon(bench.children, ["--exe", str(self.fleet.binary)],
                             logdir / "events.json", ROOT, err=logdir / "stderr",
                             command=[INODEWATCH], env=RUN_ENV)
        self.dpid = self.daemon.pid

    def check(self) -> None:
        self.daemon.check_alive()

    def attach(self) -> float:
        """Seconds from daemon.started to the last fleet host's target.attached (its stamps)."""
        def attached() -> bool:
            self.check()
            return set(self.pids) <= self.daemon.attached()
        # Timed by the daemon's stamps: a poll every 0.1 s, not 5 ms, leaves it the CPU (each
        # poll walks the log's thousands of events).
        wait_for(attached, 120 + self.fleet.n * 0.1, f"target.attached for all {self.fleet.n}",
                 every=0.1)
        events = self.daemon.log.read()
        started = next(event_time(e) for e in events if e["event"] == "daemon.started")
        last = max(event_time(e) for e in events
                   if e["event"] == "target.attached" and e.get("pid") in self.pids)
        return last - started

    def window(self, seconds: float) -> float:
        """The daemon's share of one core over the next `seconds`."""
        meter = Meter(self.dpid)
        meter.sleep_until(meter.t0 + seconds, self.check)
        return meter.cpu() / meter.wall()

    def exec_churn(self) -> tuple[float, float]:
        """(daemon's share of a core, execs a second achieved) while /bin/true is spawned."""
        churner = self.bench.children.spawn(
            [sys.executable, "-c", EXEC_CHURN], env={**os.environ, "RATE": str(self.args.exec_rate)},
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        share = self.window(self.args.churn)
        churner.send_signal(signal.SIGTERM)
        out, _ = churner.communicate(timeout=30)
        self.bench.children.forget(churner)
        try:
            n, dt = out.split()
            return share, int(n) / float(dt)
        except ValueError:
            return share, 0.0

    def latency(self) -> Summary:
        healthy = [h for h in self.fleet.hosts if h.kind == "healthy"]
        ops: list[Op] = []
        for h in self.bench.rng.sample(healthy, min(self.args.reps, len(healthy))):
            time.sleep(self.bench.rng.uniform(0, 1.0))
            since = len(self.daemon.log.read())
            op = fleet.replace(h, self.dpid)
            ops.append(op)
            fleet.wait_ops(self.daemon.log, [op], since, self.args.timeout, self.check)
        return Summary.of([o.deleted for o in ops] + [o.replaced for o in ops])

    def mass_exit(self) -> tuple[float, int]:
        """SIGKILL to every host at once: (seconds to the last target.exited, how many)."""
        start = len(self.daemon.log.read())
        t0 = time.time()
        for h in self.fleet.hosts:
            if h.proc is not None:
                os.kill(h.pid, signal.SIGKILL)

        def told() -> int:
            self.check()
            return sum(e["event"] == "target.exited" and e.get("pid") in self.pids
                       for e in self.daemon.log.read()[start:])
        wait_for(lambda: told() >= self.fleet.n, 30 + self.fleet.n * 0.02, "every exit told",
                 every=0.1)  # timed by the stamps, as the attach
        stamps = [event_time(e) for e in self.daemon.log.read()[start:]
                  if e["event"] == "target.exited" and e.get("pid") in self.pids]
        return max(stamps) - t0, len(stamps)


class Sweep:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.points: list[Point] = []

    def run(self) -> None:
        a = self.args
        for n in a.sizes:
            check_limits(n, a.exec_rate)
        versions = fleet.ensure_tools(a.python)
        self.version = code_version()
        fleet.build_demo()
        started, load0 = utc_stamp(), loadavg_text()
        for n in a.sizes:
            self.points.append(self.point(n))
            say(f"N={n}: {self.points[-1]}")
        self.report(started, load0, versions)

    def bench_for(self, n: int) -> Bench:
        ns = argparse.Namespace(**vars(self.args))
        ns.hosts, ns.interval_ms, ns.healthy_mode = n, 60_000, "leak"
        return Bench(ns)

    def point(self, n: int) -> Point:
        say(f"--- N = {n}")
        bench = self.bench_for(n)
        try:
            bench.fleet.build()
            bench.install()
            scans = self.scans(bench)
            return self.watch(bench, scans)
        finally:
            bench.cleanup()

    def scans(self, bench: Bench) -> dict[str, object]:
        a, by_pid = self.args, bench.fleet.by_pid()
        cmds = [("inodewatch", IW_SCAN), ("lsof", LSOF), ("floor", FLOOR)]
        for _, c in cmds:  # warm-up: page cache, bytecode cache
            measured(c)
        runs: dict[str, list[Run]] = {name: [] for name, _ in cmds}
        procs = []
        for rnd in range(a.rounds):
            bench.fleet.check_alive()
            procs.append(sum(1 for e in os.listdir("/proc") if e.isdigit()))
            for name, c in in_turn(cmds, rnd):
                runs[name].append(timed(c, ROOT, RUN_ENV, keep_stdout=name != "floor"))
        exact = all(self.exact(r, by_pid) for r in runs["inodewatch"])
        wall = {name: [r.wall for r in rs] for name, rs in runs.items()}
        return {"procs": max(procs), "exact": exact,
                **{f"{name}_ms": statistics.median(w) * 1000 for name, w in wall.items()},
                "lsof_ratio": statistics.median(l / i for l, i in zip(wall["lsof"], wall["inodewatch"])),
                "floor_ratio": statistics.median(i / f for i, f in zip(wall["inodewatch"], wall["floor"]))}

    @staticmethod
    def exact(run: Run, by_pid: dict[int, fleet.Host]) -> bool:
        found = fleet.findings_inodewatch(run, by_pid)
        return fleet.score(found, by_pid).exact and fleet.inodewatch_kinds_exact(found, by_pid)

    def watch(self, bench: Bench, scans: dict[str, object]) -> Point:
        a = self.args
        say(f"daemon on {bench.fleet.n} hosts")
        w = SweepWatch(bench, a)
        attach = w.attach()
        say(f"attached in {attach:.2f} s; first {a.first:g} s")
        first = w.window(a.first)
        say(f"steady {a.idle:g} s")
        idle = w.window(a.idle)
        say(f"{a.exec_rate}/s /bin/true for {a.churn:g} s")
        exec_cpu, rate = w.exec_churn()
        say(f"latency: {a.reps} x rm; cp")
        lat = w.latency()
        hwm = status_kb(w.dpid, "VmHWM") / 1024
        say("mass exit")
        drain, exited = w.mass_exit()
        w.daemon.stop()
        return Point(bench.fleet.n, scans["procs"], scans["inodewatch_ms"], scans["lsof_ms"],
                     scans["floor_ms"], scans["lsof_ratio"], scans["floor_ratio"],
                     scans["exact"], attach, first, idle, exec_cpu, rate, hwm,
                     lat.p50 * 1000, lat.p99 * 1000, lat.missing, drain, exited)

    # report -------------------------------------------------------------------------------

    def report(self, started: str, load0: str, versions: list[str]) -> None:
        a = self.args
        results = Path(a.results)
        png = results.with_name("fleet-sweep.png")
        data = results.with_name("fleet-sweep.json")
        data.write_text(json.dumps([p._asdict() for p in self.points], indent=1) + "\n")
        drawn = self.draw(data, png)
        text = "\n".join(self.table(started, load0, versions, png if drawn else None)) + "\n"
        print(text)
        write_section(results, text, SECTION)
        say(f"wrote {results}" + (f" and {png}" if drawn else ""))

    def draw(self, data: Path, png: Path) -> bool:
        python = PLOT_VENV / "bin" / "python"
        if not python.exists():
            say(f"no {PLOT_VENV}: not drawn (python3 -m venv {PLOT_VENV} && "
                f"{python} -m pip install matplotlib; then {python} {PLOTTER} {data} {png})")
            return False
        done = subprocess.run([str(python), str(PLOTTER), str(data), str(png)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            say(f"drawing failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
        return done.returncode == 0

    def table(self, started: str, load0: str, versions: list[str], png: Path | None) -> list[str]:
        a, pts = self.args, self.points
        md = [SECTION, "",
              f"{started}, `python3 benchmarks/fleet.py {' '.join(sys.argv[1:])}`; code "
              f"{self.version}; {os.cpu_count()} CPUs; load average {load0} at start, "
              f"{loadavg_text()} at the end; {', '.join(versions)}.  Every host `--mode leak` "
              f"(tick 60 s), 10 % divergent; scans {a.rounds} rounds A B C / C B A, medians; "
              f"daemon `inodewatch --exe FLEET/bin/reload` (the venv's): first {a.first:g} s "
              f"after the last attach, then {a.idle:g} s steady, then {a.churn:g} s of "
              f"`/bin/true` spawned {a.exec_rate:,}/s; {a.reps} rm+cp; SIGKILL to every host.",
              "",
              "| N | procs | `scan --all --json` | `lsof -nP` | floor | lsof / scan | scan / "
              "floor | exact | attach | CPU first "
              f"{a.first:g} s | steady | under execs (achieved/s) | VmHWM | rm+cp p50 / p99 "
              "| mass exit drained |",
              "| " + " | ".join(["---"] * 15) + " |"]
        for p in pts:
            md.append(
                f"| {p.n:,} | {p.procs:,} | {p.scan_ms:.0f} ms | {p.lsof_ms:.0f} ms | "
                f"{p.floor_ms:.0f} ms | {p.lsof_ratio:.2f}x | {p.floor_ratio:.2f}x | "
                f"{'yes' if p.exact else 'NO'} | {p.attach_s:.2f} s | {p.first_cpu * 100:.2f} % | "
                f"{p.idle_cpu * 100:.2f} % | {p.exec_cpu * 100:.2f} % ({p.exec_rate:,.0f}) | "
                f"{p.hwm_mb:.1f} MB | {p.lat_p50_ms:.1f} / {p.lat_p99_ms:.1f} ms"
                f"{f' ({p.lat_missing} missing)' if p.lat_missing else ''} | "
                f"{p.drain_s:.2f} s ({p.exited:,}) |")
        md += ["", "Per target (flat is the goal): ", "",
               "| N | attach per host | steady CPU per 1,000 hosts | scan per process | "
               "floor per process |", "| --- | --- | --- | --- | --- |"]
        for p in pts:
            md.append(f"| {p.n:,} | {p.attach_s / p.n * 1000:.2f} ms | "
                      f"{p.idle_cpu * 100 / p.n * 1000:.3f} % | "
                      f"{p.scan_ms / p.procs * 1000:.0f} us | {p.floor_ms / p.procs * 1000:.0f} us |")
        if png is not None:
            md += ["", f"![cost against N]({png.name})"]
        md += ["", "```", *self.verdicts(), "```", ""]
        return md

    def verdicts(self) -> list[str]:
        out = []
        for p in self.points:
            for ok, what in (
                    (p.attach_s <= TARGETS["attach_s"], f"attach {p.attach_s:.2f} s (<= 5 s)"),
                    (p.first_cpu <= TARGETS["idle_cpu"] and p.idle_cpu <= TARGETS["idle_cpu"],
                     f"idle {p.first_cpu * 100:.2f} % first, {p.idle_cpu * 100:.2f} % steady (<= 1 %)"),
                    (p.exec_cpu <= TARGETS["exec_cpu"],
                     f"under {p.exec_rate:,.0f} execs/s {p.exec_cpu * 100:.2f} % (<= 5 %)"),
                    (p.hwm_mb <= TARGETS["hwm_mb"], f"VmHWM {p.hwm_mb:.1f} MB (<= 100 MB)"),
                    (p.lat_p99_ms <= TARGETS["p99_ms"] and not p.lat_missing,
                     f"rm+cp p99 {p.lat_p99_ms:.1f} ms (<= 5 ms)"),
                    (p.drain_s <= TARGETS["drain_s"] and p.exited == p.n,
                     f"mass exit {p.drain_s:.2f} s, {p.exited} told (<= 10 s)"),
                    (p.floor_ratio <= TARGETS["floor_ratio"], f"scan {p.floor_ratio:.2f}x floor (<= 1.5x)"),
                    (p.lsof_ratio >= TARGETS["lsof_ratio"], f"lsof {p.lsof_ratio:.2f}x scan (>= 3x)"),
                    (p.exact, "scan exactly the ground truth")):
                out.append(f"{'PASS' if ok else 'MISS'} N={p.n}: {what}")
        return out


QUICK = {"rounds": 2, "first": 5, "idle": 5, "churn": 5, "reps": 5}
DEFAULTS = {"rounds": 5, "first": 30, "idle": 30, "churn": 30, "reps": 20}


def main(a: argparse.Namespace) -> None:
    """The sweep's defaults where none was given (--quick: a fast check of the whole path)."""
    for key, value in (QUICK if a.quick else DEFAULTS).items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    Sweep(a).run()


if __name__ == "__main__":
    sys.exit("run it as benchmarks/fleet.py --hosts 500,1500,5000")
