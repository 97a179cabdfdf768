"""The fleet daemon's idle and churn figures of several checkouts, side by side on one fleet
(``fleet.py --hosts 500 --peers /tmp/fleet-before,/tmp/fleet-main``): "not worse than before".

Each peer tree (a git worktree of a commit) is installed as fleet.py installs inodewatch (a
copy, a venv, ``pip install``); then, ``--rounds`` times, peers in the order A B, then B A,
one daemon at a time on the same fleet (fleet.py's: 90 % hold hosts with a 5 s tick): fleet.py's
``Watch`` attach, ``--idle`` s idle, ``--churn`` s of its file churn (/tmp files, library
opens, rm+cp on 5 hosts), stop.  Medians per peer go to the section "## Fleet daemon, peers
side by side" of RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import NamedTuple

from harness.procfs import loadavg_text
from harness.results import commit_of, utc_stamp, write_section
from harness.stats import in_turn

import fleet
from fleet import ROOT, Bench, Watch, say

SECTION = "## Fleet daemon, peers side by side"


class Round(NamedTuple):
    attach_s: float
    idle: float  # share of one core
    churn: float
    hwm_mb: float


def main(a: argparse.Namespace) -> None:
    a.rounds = a.rounds or 2
    a.idle, a.churn = a.idle or 30.0, a.churn or 30.0
    a.reps, a.hosts = 0, a.hosts[0]
    trees = [Path(t).resolve() for t in a.peers.split(",")]
    names = [f"{commit_of(t)} ({t})" for t in trees]
    bench = Bench(a)
    bench.versions = {}  # Watch notes the code version the daemon started with
    rounds: dict[str, list[Round]] = {name: [] for name in names}
    started, load0 = utc_stamp(), loadavg_text()
    try:
        fleet.ensure_tools(a.python)
        fleet.build_demo()
        bench.fleet.build()
        commands = {}
        for i, (name, tree) in enumerate(zip(names, trees)):
            say(f"installing {name}")
            bench.install_tree(tree, ROOT / f"src-peer{i}", ROOT / f"venv-peer{i}")
            commands[name] = str(ROOT / f"venv-peer{i}" / "bin" / "inodewatch")
        for rnd in range(a.rounds):
            for name in in_turn(names, rnd):
                say(f"round {rnd + 1}: {name}")
                w = Watch(bench, commands[name], ROOT / f"daemon-{rnd}-{names.index(name)}")
                w.attach()
                w.idle()
                w.churn()
                w.stop()
                rounds[name].append(Round(w.t_attached, w.idle_cpu / a.idle,
                                          w.churn_cpu / w.churn_wall,
                                          max(w.idle_hwm, w.churn_hwm) / 1024))
    finally:
        bench.cleanup()
    text = "\n".join(table(a, rounds, started, load0)) + "\n"
    print(text)
    write_section(Path(a.results), text, SECTION)


def table(a: argparse.Namespace, rounds: dict[str, list[Round]], started: str,
          load0: str) -> list[str]:
    md = [SECTION, "",
          f"{started}; {a.hosts} hosts (fleet.py's: 90 % hold, tick {a.interval_ms} ms); "
          f"{a.rounds} rounds A B / B A, one daemon at a time on the same fleet; idle {a.idle:g} s, "
          f"churn {a.churn:g} s ({a.tmp_rate:,} /tmp files/s, {a.lib_rate:,} library opens/s, "
          f"rm+cp on 5 hosts); load average {load0} at start, {loadavg_text()} at the end.  "
          "Medians (min - max).", "",
          "| peer | attach (seen by the benchmark) | idle, % of a core | churn, % of a core | "
          "VmHWM |", "| --- | --- | --- | --- | --- |"]

    def cell(xs: list[float], fmt: str) -> str:
        return f"{statistics.median(xs):{fmt}} ({min(xs):{fmt}} - {max(xs):{fmt}})"
    for name, rs in rounds.items():
        md.append(f"| {name} | {cell([r.attach_s for r in rs], '.2f')} s | "
                  f"{cell([r.idle * 100 for r in rs], '.2f')} | "
                  f"{cell([r.churn * 100 for r in rs], '.2f')} | "
                  f"{cell([r.hwm_mb for r in rs], '.1f')} MB |")
    return md + [""]
