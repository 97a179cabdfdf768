"""The benchmarks' harness: what every script in benchmarks/ needs, once.

A benchmark is a script run by hand (``python3 benchmarks/NAME.py``), so this directory is
``sys.path[0]`` and ``import harness`` needs no path games.  Its modules:

* ``procs``: the processes a benchmark starts and stops (``Children``), its scratch
  directory, waits (``wait_for``, ``wait_until``, ``poll``), ``BenchError`` and how a run
  ends (``exits``);
* ``demo``: the C demo of ``csrc/`` (build, command line, a stdout-reading ``Demo``, the
  operator's ``rm; cp``);
* ``daemon``: the watch daemon under test (``Daemon``), its JSON log (``EventLog``), and
  what ``/proc`` says of its inotify fd and its sleep;
* ``procfs``: CPU, memory and load of a process or the machine (``Meter``);
* ``ftrace``: a private ftrace instance (``TraceInstance``);
* ``timed``: one run of a command under GNU time (``timed``, ``Run``), rounds of them
  (``in_rounds``, ``Spread``);
* ``stats``: percentiles, ``Summary``, ``fmt_ms``, the A B / B A order;
* ``results``: the code version, the commit of a tree, and RESULTS.md's sections.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
RESULTS = REPO / "benchmarks" / "RESULTS.md"
