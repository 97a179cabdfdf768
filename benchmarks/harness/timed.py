"""One run of a command under GNU time: wall time, CPU and peak RSS.

Linux charges a child the resident size of the mm it had before exec (for a child of a
benchmark, the benchmark's own ~25 MB), so wait4's ru_maxrss of a direct child would be the
benchmark's size.  GNU time is small (~2 MB) and reports its own child's ru_maxrss (%M: the
largest process of the command, of a pipeline its largest member); wait4 on time gives
utime + stime of time and everything it waited for (time's own share is ~1 ms).
"""

from __future__ import annotations

import os
import shlex
import statistics
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from .procs import BenchError
from .stats import in_turn

TIME = "/usr/bin/time"  # GNU time (Debian: apt-get install time)


class Run(NamedTuple):
    wall: float  # seconds, from just before the spawn to wait4's return
    cpu: float  # utime + stime of the command's tree
    maxrss_kb: int  # GNU time's %M
    rc: int
    out: bytes  # b"" unless kept
    err: bytes

    @property
    def maxrss_mb(self) -> float:
        return self.maxrss_kb / 1024


class Spread(NamedTuple):
    """A command's runs, summed up as the tables show them."""

    wall: float  # median, seconds
    wall_min: float
    wall_max: float
    rss_mb: float  # peak RSS, median
    rss_max_mb: float

    @classmethod
    def of(cls, runs: list[Run]) -> Spread:
        walls, rss = [r.wall for r in runs], [r.maxrss_mb for r in runs]
        return cls(statistics.median(walls), min(walls), max(walls), statistics.median(rss),
                   max(rss))


def timed(args: list[str], cwd: Path | None = None, env: dict[str, str] | None = None,
          keep_stdout: bool = True) -> Run:
    """Run `args` under GNU time, stdin from /dev/null, stdout to a file (or /dev/null
    unless `keep_stdout`), stderr to a file.  It leads a process group of its own, killed
    whole should the benchmark be interrupted."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r") as rss:
        t0 = time.perf_counter()
        proc = subprocess.Popen([TIME, "-q", "-f", "%M %x", "-o", rss.name, *args], cwd=cwd,
                                env=env, stdin=subprocess.DEVNULL, stderr=err,
                                stdout=out if keep_stdout else subprocess.DEVNULL,
                                process_group=0)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        maxrss, rc = rss.read().split()[-2:]
        out.seek(0)
        err.seek(0)
        return Run(wall, usage.ru_utime + usage.ru_stime, int(maxrss), int(rc),
                   out.read(), err.read())


def in_rounds(commands: dict[str, list[str]], rounds: int,
              check: bool = False) -> dict[str, list[Run]]:
    """Each command once a round, in the order A B, then B A, output thrown away, a line on
    stderr after each run.  `check`: a failed command is a BenchError."""
    runs: dict[str, list[Run]] = {name: [] for name in commands}
    for round_ in range(rounds):
        for name in in_turn(list(commands), round_):
            run = timed(commands[name], keep_stdout=False)
            if check and run.rc != 0:
                raise BenchError(f"{shlex.join(commands[name])} failed: "
                                 f"{run.err.decode(errors='replace').strip()}")
            runs[name].append(run)
            print(f"round {round_ + 1} {name}: {run.wall:.2f} s, {run.maxrss_mb:.1f} MB",
                  file=sys.stderr)
    return runs
