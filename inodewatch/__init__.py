"""inodewatch: tell which version of a shared object a running process really runs.

The start-up rule.  `inodewatch scan` is run by cron, timers and monitoring checks on every
host, so it is judged against `lsof` and needrestart, and most of its time is Python starting
and importing: `scan --all --json` on a 500-process host takes 48 ms (median) where
`python3 -c pass` takes 11 ms and `lsof -nP` 70 ms (benchmarks/RESULTS.md, "Start-up" and
"Full-host scan").  Measured there, one import can cost more than the scan of a small host:
dataclasses ~10 ms (it pulls in inspect and ast), typing ~6 ms, structlog 42 ms,
prometheus_client ~80 ms.  So the modules on scan's path:

    cli          arguments (`--version` stops here), then the command's modules, imported
                 in the function that runs it
    scan, procfs, mounts, model, workers, render, text
                 every scan
    restart, cgroups                   the table, and any finding's unit
    content, contentpass, packages, atomicfile
                                       a scan with findings (content identity, the dpkg index)
    eventlog     `--json` (format_event alone: structlog is imported by make_logger)
    nagios       `--nagios`
    scanmetrics  `--metrics-file`: prometheus_client, paid only when asked for

import nothing but light standard-library modules at their top:

- no `typing` (annotations are strings under `from __future__ import annotations`; what
  only a type checker needs goes under `TYPE_CHECKING = False` / `if TYPE_CHECKING:`);
- no `dataclasses` and no `typing.NamedTuple`: records are `collections.namedtuple`s, their
  fields' types in their docstrings (a scan builds thousands of them, and a tuple is cheaper
  to build than a frozen dataclass);
- no `structlog`, `psutil`, `pyinotify` (the daemon's), nor `datetime` (`time.strftime`
  does), nor `shutil` (cli sizes argparse's help itself); `hashlib` only once a file is
  hashed;
- anything heavier, or needed by one option only, inside the function that needs it.

The command ends with `os._exit` once stdout and stderr are flushed (cli.run): the
interpreter's tear-down would free, one by one, every object a scan made.  The daemon
(daemon.py and what only it imports) is free of the rule: it starts once.  inodewatch.events
is kept to it all the same (plain data, namedtuples), so any of these may import it.

Guarded by tests/test_cli.py (`HEAVY`: test_scan_imports_only_what_it_needs, and
test_a_scan_with_findings_imports_only_what_it_needs, which runs the table, `--json` and
`--nagios` over a real finding with a dpkg index built afresh; both check that the list
above names every module of ours a scan imported) and tests/test_content.py
(test_importing_content_is_light).
"""

__version__ = "0.1.0"
